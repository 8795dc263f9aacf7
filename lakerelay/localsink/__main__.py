"""`python -m lakerelay.localsink`: run the sink in the foreground until SIGTERM or SIGINT."""

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from lakerelay.localsink.faults import FaultConfig
from lakerelay.localsink.server import LocalSinkServer
from lakerelay.localsink.sigv4 import SIGV4_TEST_ACCESS_KEY_ID, SIGV4_TEST_SECRET_ACCESS_KEY, SigV4Verifier
from lakerelay.localsink.splunk import DEFAULT_HEC_TOKEN


def _json_or_text(value: str) -> Any:
    # `--reject-value 42` means the number 42; anything that is not JSON is a plain string.
    try:
        return json.loads(value)
    except ValueError:
        return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lakerelay.localsink",
        description="Local Elasticsearch (_bulk) and Splunk HEC sink for lakerelay demos, tests and benchmarks.",
    )
    _add_network_arguments(parser)
    _add_auth_arguments(parser)
    _add_sigv4_arguments(parser)
    _add_fault_arguments(parser)
    return parser


def _add_network_arguments(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)"
    )
    net.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    net.add_argument("--port-file", help="write the bound port to this file (atomically) once listening")
    net.add_argument(
        "--max-content-length",
        type=int,
        default=100 * 1024 * 1024,
        help="largest accepted request body in bytes, after decompression (default: 100 MiB, as ES)",
    )
    net.add_argument("--verbose", action="store_true", help="log every request to stderr")
    net.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and key, unless --tls-key)")
    net.add_argument("--tls-key", help="PEM private key of --tls-cert")
    net.add_argument("--tls-client-ca", help="require client certificates signed by this PEM CA (mutual TLS)")


def _add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("authentication")
    auth.add_argument("--es-api-key", help="require this ES API key (the encoded value, or 'id:key')")
    auth.add_argument("--es-basic", help="require ES basic auth 'user:password'")
    auth.add_argument("--es-bearer", help="require this ES bearer token")
    auth.add_argument(
        "--hec-token", default=DEFAULT_HEC_TOKEN, help=f"HEC token (default: {DEFAULT_HEC_TOKEN})"
    )
    auth.add_argument(
        "--hec-ack", action="store_true", help="enable HEC indexer acknowledgement (channels + ackId)"
    )
    auth.add_argument(
        "--hec-index",
        action="append",
        dest="hec_indexes",
        help="allow this HEC index (repeatable); without it every index is allowed",
    )


def _add_sigv4_arguments(parser: argparse.ArgumentParser) -> None:
    aws = parser.add_argument_group(
        "AWS SigV4 (verify signatures as Amazon OpenSearch does; the secret comes from the environment)"
    )
    aws.add_argument("--sigv4-region", help="require requests signed for this region, e.g. us-east-1")
    aws.add_argument(
        "--sigv4-service", choices=("es", "aoss"), default="es", help="the signing service (default: es)"
    )
    aws.add_argument(
        "--sigv4-access-key-id",
        default=SIGV4_TEST_ACCESS_KEY_ID,
        help=f"the one access key accepted (default: {SIGV4_TEST_ACCESS_KEY_ID}); its secret is "
        f"$LOCALSINK_SIGV4_SECRET_ACCESS_KEY, else the test secret of localsink.sigv4",
    )


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group("fault injection (seeded, reproducible)")
    faults.add_argument("--seed", type=int, default=0, help="random seed for fault draws (default: 0)")
    faults.add_argument(
        "--request-429-rate", type=float, default=0.0, help="fraction of ingest requests answered 429"
    )
    faults.add_argument(
        "--request-503-rate", type=float, default=0.0, help="fraction of ingest requests answered 503"
    )
    faults.add_argument(
        "--item-429-rate",
        type=float,
        default=0.0,
        help="fraction of _bulk items answered 429 (and not stored)",
    )
    faults.add_argument("--reject-field", help="document field checked against --reject-value")
    faults.add_argument(
        "--reject-value",
        action="append",
        dest="reject_values",
        type=_json_or_text,
        default=[],
        help="reject documents/events whose field equals this value (repeatable; JSON, else a string)",
    )
    faults.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every ingest request")
    faults.add_argument(
        "--connection-reset-rate",
        type=float,
        default=0.0,
        help="fraction of ingest requests whose connection is reset (half before, half after applying them)",
    )


def write_port_file(path: str, port: int) -> None:
    """Write then rename, so a reader polling the file never sees it half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".localsink-port-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{port}\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sigv4_verifier(args: argparse.Namespace) -> SigV4Verifier | None:
    if not args.sigv4_region:
        return None
    return SigV4Verifier(
        region=args.sigv4_region,
        service=args.sigv4_service,
        access_key_id=args.sigv4_access_key_id,
        secret_access_key=os.environ.get("LOCALSINK_SIGV4_SECRET_ACCESS_KEY") or SIGV4_TEST_SECRET_ACCESS_KEY,
        session_token=os.environ.get("LOCALSINK_SIGV4_SESSION_TOKEN") or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        faults = FaultConfig(
            seed=args.seed,
            request_429_rate=args.request_429_rate,
            request_503_rate=args.request_503_rate,
            item_429_rate=args.item_429_rate,
            reject_field=args.reject_field,
            reject_values=tuple(args.reject_values),
            latency_ms=args.latency_ms,
            connection_reset_rate=args.connection_reset_rate,
        )
    except ValueError as exc:
        print(f"localsink: {exc}", file=sys.stderr)
        return 2
    server = LocalSinkServer(
        args.host,
        args.port,
        es_api_key=args.es_api_key,
        es_basic=args.es_basic,
        hec_token=args.hec_token,
        hec_ack=args.hec_ack,
        faults=faults,
        es_bearer=args.es_bearer,
        hec_indexes=args.hec_indexes,
        max_content_length=args.max_content_length,
        verbose=args.verbose,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        sigv4=_sigv4_verifier(args),
    )
    stop = threading.Event()

    def _request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    server.start()
    try:
        if args.port_file:
            write_port_file(args.port_file, server.port)
        print(f"localsink listening on {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    print("localsink stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
