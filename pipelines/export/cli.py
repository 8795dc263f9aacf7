"""``lakerelay-export``: run, verify, sign and fetch bulk exports from a shell.

    lakerelay-export run    --table PATH|s3://... --dataset events --to DIR|s3://bucket/prefix [options]
    lakerelay-export fetch  MANIFEST|SIGNED.json --dest DIR      # download with resume, verify, exit 1 on mismatch
    lakerelay-export sign   MANIFEST [--expires 3600]            # presigned URLs for the manifest and parts
    lakerelay-export verify MANIFEST                             # re-read an export in place

MANIFEST is a local path or an ``s3://bucket/<prefix>/<dataset>/<export_id>/manifest.json`` URI
(``fetch`` also takes an http(s) URL). S3 settings are the deployment's lake settings, read from the
same environment as the Dagster code location (``pipelines.deployment.lake_resource``):
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and ``LAKERELAY_S3_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL``). Exit codes: 0 success, 1 verification failed, 2 bad input or an error.
"""

import argparse
import datetime as dt
import json
import os
import sys
import uuid
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from pipelines import deployment
from pipelines.export.client import fetch_export
from pipelines.export.exporter import export_table
from pipelines.export.manifest import MANIFEST_NAME, new_export_id, verify_export
from pipelines.export.spec import COMPRESSIONS, DEFAULT_URL_EXPIRY_S, FORMATS, MAX_URL_EXPIRY_S, ExportSpec
from resources.export_storage import ExportStorage, LocalExportStorage, S3ExportStorage
from resources.export_storage.retry import S3Unavailable
from resources.lake import LakeResource, UnsupportedS3Setting


def _lake() -> LakeResource:
    """The deployment's lake, its EnvVar settings resolved: this process is not a Dagster run."""
    return deployment.resolved(deployment.lake_resource())


def storage_at(root: str) -> ExportStorage:
    """Export storage rooted at a folder or at ``s3://bucket/prefix`` (with the lake's S3 settings)."""
    if root.startswith("s3://"):
        bucket, _, prefix = root[len("s3://") :].partition("/")
        return S3ExportStorage(lake=_lake(), bucket=bucket, prefix=prefix.strip("/"))
    return LocalExportStorage(root=root)


def storage_of_manifest(location: str) -> tuple[ExportStorage, str]:
    """The storage holding a manifest and the manifest's key in it (``<dataset>/<export_id>/manifest.json``)."""
    segments = location.rstrip("/").split("/")
    if len(segments) < 4 or segments[-1] != MANIFEST_NAME:
        raise ValueError(f"{location!r} is not a manifest location (…/<dataset>/<export_id>/{MANIFEST_NAME})")
    return storage_at("/".join(segments[:-3]) or "/"), "/".join(segments[-3:])


def _run(args: argparse.Namespace) -> int:
    spec = ExportSpec(
        dataset=args.dataset,
        table=args.table,
        columns=tuple(c.strip() for c in args.columns.split(",") if c.strip()) if args.columns else (),
        where=args.where or "",
        order_by=args.order_by or "",
        format=args.format,
        compression=args.compression,
        level=args.level,
        part_max_rows=args.part_max_rows,
        part_max_bytes=args.part_max_bytes,
        batch_rows=args.batch_rows,
    )
    export_id = args.export_id or new_export_id(uuid.uuid4().hex)
    # A path is the user's, relative to the shell's folder; the lake would read it as a table name.
    table = args.table if "://" in args.table else os.path.abspath(args.table)
    result = export_table(
        table,
        _lake(),
        storage_at(args.to),
        args.dataset,
        export_id,
        spec=spec,
        since=args.since,
    )
    print(
        json.dumps(
            {
                "manifest": result.manifest_uri,
                "rows": result.rows,
                "parts": result.parts,
                "bytes": result.bytes,
                "rows_per_s": round(result.rows_per_s),
                "delta_version": result.manifest["delta_version"],
                "next_cursor": result.next_cursor,
                "aborted_uploads": result.aborted_uploads,
            },
            indent=2,
        )
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    storage, key = storage_of_manifest(args.manifest)
    manifest = json.loads(storage.read_bytes(key))
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.expires)
    bundle = {
        "manifest_url": storage.presign(key, args.expires),
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
        "parts": [
            {"key": p["key"], "url": storage.presign(p["key"], args.expires), "bytes": p["bytes"]}
            for p in manifest["parts"]
        ],
    }
    text = json.dumps(bundle, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _verify(args: argparse.Namespace) -> int:
    storage, key = storage_of_manifest(args.manifest)
    problems = verify_export(storage, key)
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print("OK: every part matches the manifest" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 1 if problems else 0


def _fetch(args: argparse.Namespace) -> int:
    report = fetch_export(args.manifest, args.dest, show_progress=not args.quiet)
    for problem in report.problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    manifest = report.manifest
    if report.ok:
        print(
            f"OK: {manifest['total_rows']} rows in {len(manifest['parts'])} part(s) verified in {args.dest} "
            f"({report.downloaded_bytes} bytes downloaded, {report.resumed_parts} part(s) resumed)"
        )
        return 0
    print(f"FAILED: {len(report.problems)} problem(s); mismatching parts were not kept", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakerelay-export", description=(__doc__ or "").split("\n\n")[0].replace("``", "")
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="export a Delta table now (outside Dagster)")
    run.add_argument("--table", required=True, help="Delta table path or s3:// URI")
    run.add_argument("--dataset", required=True, help="name of the export (first key segment)")
    run.add_argument("--to", required=True, help="export root: a folder or s3://bucket/prefix")
    run.add_argument("--format", choices=FORMATS, default="ndjson")
    run.add_argument("--compression", choices=COMPRESSIONS, default="gzip")
    run.add_argument("--level", type=int, default=None, help="compression level")
    run.add_argument("--columns", default="", help="comma-separated columns (default: all)")
    run.add_argument("--where", default="", help='SQL predicate, e.g. "status_code >= 500"')
    run.add_argument("--order-by", default="", help="ordering key column (needed for --since)")
    run.add_argument("--since", default=None, help="next_cursor of a previous export")
    run.add_argument("--part-max-rows", type=int, default=ExportSpec.part_max_rows)
    run.add_argument("--part-max-bytes", type=int, default=ExportSpec.part_max_bytes)
    run.add_argument("--batch-rows", type=int, default=ExportSpec.batch_rows)
    run.add_argument("--export-id", default=None, help="default: <UTC time>-<random>")
    run.set_defaults(handler=_run)

    fetch = commands.add_parser("fetch", help="download with resume and verify every part")
    fetch.add_argument(
        "manifest", help="manifest path, s3:// URI, http(s) URL, or a signed bundle from 'sign'"
    )
    fetch.add_argument("--dest", required=True, help="folder to download into")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=_fetch)

    sign = commands.add_parser("sign", help="presigned GET URLs for the manifest and every part")
    sign.add_argument("manifest", help="manifest path or s3:// URI")
    sign.add_argument(
        "--expires", type=int, default=DEFAULT_URL_EXPIRY_S, help=f"seconds, at most {MAX_URL_EXPIRY_S}"
    )
    sign.add_argument("--output", default=None, help="write the bundle here instead of stdout")
    sign.set_defaults(handler=_sign)

    verify = commands.add_parser("verify", help="re-read an export where it is stored")
    verify.add_argument("manifest", help="manifest path or s3:// URI")
    verify.set_defaults(handler=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    # What a person fixes or retries: one line, no traceback (a full disk is an OSError too).
    except (ValueError, OSError, S3Unavailable, UnsupportedS3Setting) as exc:
        print(f"lakerelay-export {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            f"lakerelay-export {args.command}: error: no AWS credentials found; set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where an instance role provides them)",
            file=sys.stderr,
        )
        return 2
    except (BotoCoreError, ClientError) as exc:  # refused (403, no such bucket) or unreachable
        print(
            f"lakerelay-export {args.command}: error: S3 said: {' '.join(str(exc).split())}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
