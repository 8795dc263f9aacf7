"""Where bulk exports are written: a local folder (the embedded default) or an S3 bucket.

Objects are addressed by storage-relative keys such as ``events/<export_id>/part-00000.ndjson.gz``.
A part becomes visible under its key only when it is complete (rename locally, CompleteMultipartUpload
on S3); the manifest is written create-only, so a finished export can never be overwritten.

``base`` holds the interface, ``local`` and ``s3`` the two implementations; S3 takes its connection
from the lake's ``LakeResource``, the project's one S3 setup.
"""

from resources.export_storage.base import ExportStorage, PartWriter, check_key
from resources.export_storage.local import LocalExportStorage
from resources.export_storage.s3 import S3ExportStorage

__all__ = ["ExportStorage", "LocalExportStorage", "PartWriter", "S3ExportStorage", "check_key"]
