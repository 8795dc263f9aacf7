"""AWS SigV4 verification, as Amazon OpenSearch Service (``es``) and Serverless (``aoss``) do it.

Each request must carry ``Authorization: AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/<service>/
aws4_request, SignedHeaders=..., Signature=...`` and ``X-Amz-Date``. The verifier knows one set of
credentials; it recomputes the signature with botocore from the request as received (method, path,
query, the signed headers, the body's SHA-256) and refuses with 403, as AWS does, a request that is
unsigned, signed for another key/region/service, signed over another body, or dated more than
``max_skew_s`` (15 minutes) from its clock. The clock is injectable, so a test can age a request.
"""

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# Known credentials for demos and tests (never AWS's): a client signing with them is accepted.
SIGV4_TEST_ACCESS_KEY_ID = "AKIDLOCALSINKTEST"
SIGV4_TEST_SECRET_ACCESS_KEY = "localsink/test/secret/not-an-aws-key"

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)


@dataclass
class SigV4Verifier:
    region: str
    service: str  # "es" or "aoss"
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_skew_s: float = 15 * 60
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Session tokens of the accepted requests, in order: shows whether a client renews temporary keys.
    tokens_seen: list[str] = field(default_factory=list, repr=False)

    def refusal(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> str | None:
        """Why AWS would answer 403 to this request (its message), or None when the signature holds.

        ``target`` is the request line's path and query as received; ``body`` the bytes as received
        (still compressed: the signature covers what was sent).
        """
        match = _AUTHORIZATION.match((headers.get("Authorization") or "").strip())
        if match is None:
            return "Missing Authentication Token"
        if match["key"] != self.access_key_id:
            return "The security token included in the request is invalid."
        if (match["region"], match["service"]) != (self.region, self.service):
            return (
                f"Credential should be scoped to a valid region and service: expected {self.region}/{self.service}, "
                f"got {match['region']}/{match['service']}."
            )
        stamp = headers.get("X-Amz-Date") or ""
        try:
            signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "Missing or malformed X-Amz-Date."
        now = self.clock()
        if abs((now - signed_at).total_seconds()) > self.max_skew_s:
            return (
                f"Signature expired: {stamp} is now earlier than "
                f"{now.strftime('%Y%m%dT%H%M%SZ')} - {self.max_skew_s / 60:g} min."
            )
        if self.session_token is not None and headers.get("X-Amz-Security-Token") != self.session_token:
            return "The security token included in the request is invalid."
        body_hash = hashlib.sha256(body).hexdigest()
        claimed_hash = headers.get("X-Amz-Content-SHA256")
        if claimed_hash is None and self.service == "aoss":
            return "Serverless requires the x-amz-content-sha256 header."
        if claimed_hash is not None and claimed_hash != body_hash:
            return "The provided 'x-amz-content-sha256' header does not match what was computed."
        signed = match["headers"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return "Signed headers must include host and x-amz-date."
        expected = self._signature(method, target, {h: headers.get(h) or "" for h in signed}, body, stamp)
        if not hmac.compare_digest(expected, match["signature"]):
            return _SIGNATURE_MISMATCH
        if token := headers.get("X-Amz-Security-Token"):
            self.tokens_seen.append(token)
        return None

    def _signature(self, method: str, target: str, signed: dict[str, str], body: bytes, stamp: str) -> str:
        # botocore computes the canonical request from exactly the headers it is given: the signed ones.
        request = AWSRequest(method=method, url=f"http://{signed['host']}{target}", data=body, headers=signed)
        request.context["timestamp"] = stamp
        signer = SigV4Auth(
            Credentials(self.access_key_id, self.secret_access_key, self.session_token),
            self.service,
            self.region,
        )
        canonical = signer.canonical_request(request)
        return signer.signature(signer.string_to_sign(request, canonical), request)
