"""HTTPS: a self-signed server certificate fails by default with a clear error and works with the CA bundle."""

import datetime as dt
import ipaddress
from pathlib import Path

import dagster as dg
import orjson
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lakerelay.localsink.server import LocalSinkServer
from resources.sinks.errors import SinkTlsError
from resources.sinks.resource import ElasticsearchSinkResource
from resources.sinks.writer import SinkWriter


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localsink test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def post(settings, n: int):
    writer = SinkWriter(settings)
    writer.add_arrow(
        pa.array([f"id-{i}" for i in range(n)], pa.string()),
        pa.array([orjson.dumps({"n": i}) for i in range(n)], pa.binary()),
        pa.array([None] * n, pa.float64()),
    )
    return writer.close()


def test_self_signed_certificate_fails_by_default_and_works_with_the_ca_bundle(self_signed) -> None:
    cert, key = self_signed
    with LocalSinkServer(tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.url.startswith("https://")
        default = ElasticsearchSinkResource(sink_name="es", url=server.url)
        with pytest.raises(SinkTlsError, match="set ca_bundle to its PEM file"):
            post(default.settings(), 10)
        with pytest.raises(dg.Failure, match=r"TLS verification of https://127\.0\.0\.1"):
            default.check_connection()
        assert server.es_count("events") == 0

        trusted = ElasticsearchSinkResource(sink_name="es", url=server.url, ca_bundle=str(cert))
        trusted.check_connection()
        outcome = post(trusted.settings(), 500)
        assert (outcome.accepted, outcome.dead_lettered) == (500, 0)
        assert server.es_count("events") == 500


def test_client_certificate_is_presented_for_mutual_tls(self_signed) -> None:
    cert, key = self_signed
    with LocalSinkServer(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(cert)) as server:
        anonymous = ElasticsearchSinkResource(sink_name="es", url=server.url, ca_bundle=str(cert))
        with pytest.raises(dg.Failure, match=r"cannot reach|TLS"):
            anonymous.check_connection()  # the server ends the handshake without a client certificate
        mutual = ElasticsearchSinkResource(
            sink_name="es", url=server.url, ca_bundle=str(cert), client_cert=str(cert), client_key=str(key)
        )
        mutual.check_connection()
        assert post(mutual.settings(), 100).accepted == 100
        assert server.es_count("events") == 100
