"""Errors a retry cannot cure: the run stops and says what to fix (the op maps them to needs-fix failures).

Each names its ``kind``: a Spark task of the post stage reports a caught error as that kind and its
message in its result rows (``pipelines/post/post_stage.py``), so the driver decides from data, not
from the text Spark makes of an exception, that a person must fix it.
"""

from typing import ClassVar

from resources.sinks.settings import SinkSettings


class SinkNeedsFixError(RuntimeError):
    """A sink error no retry cures: the sink's configuration (credentials, TLS, URL, protocol) must change."""

    kind: ClassVar[str] = "sink_needs_fix"


class SinkAuthError(SinkNeedsFixError):
    """The sink refused our credentials: retrying cannot help, so the run stops at once."""

    kind = "sink_auth"


class SinkConfigError(SinkNeedsFixError):
    """The sink answers in a way the configuration does not expect (e.g. no HEC ack id): fix the config."""

    kind = "sink_config"


class SinkRequestError(SinkNeedsFixError):
    """The sink refused a request as a whole (e.g. 404, a bad pipeline): the configuration must change."""

    kind = "sink_request"


class SinkTlsError(SinkNeedsFixError):
    """The sink's certificate did not verify: a configuration problem, not worth retrying."""

    kind = "sink_tls"


# The kinds a post task reports that a person must fix (every kind of SinkNeedsFixError).
NEEDS_FIX_KINDS = frozenset(
    {cls.kind for cls in (SinkNeedsFixError, SinkAuthError, SinkConfigError, SinkRequestError, SinkTlsError)}
)


def auth_error_message(settings: SinkSettings, status: int, body: bytes) -> str:
    """One line: who refused what, the server's own words, and what to check."""
    answer = " ".join(body[:300].decode(errors="replace").split())
    where = f"sink {settings.sink_name!r} ({settings.kind} at {settings.url})"
    refusal_hint = getattr(settings.auth, "refusal_hint", None)
    if refusal_hint is not None:  # a signing auth (SigV4) says what a refused signature means
        return f"{where}: signature refused with HTTP {status} ({answer}): {refusal_hint()}"
    return (
        f"{where} refused the credentials with HTTP {status}: {answer}. Check the token/API key configured "
        f"for this sink (environment variable behind its EnvVar) and its permissions on the target index."
    )
