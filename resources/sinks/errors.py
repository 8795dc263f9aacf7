"""Errors a retry cannot cure: the run stops and says what to fix (the op maps them to needs-fix failures)."""

from resources.sinks.settings import SinkSettings


class SinkAuthError(RuntimeError):
    """The sink refused our credentials: retrying cannot help, so the run stops at once."""


class SinkConfigError(RuntimeError):
    """The sink answers in a way the configuration does not expect (e.g. no HEC ack id): fix the config."""


class SinkRequestError(RuntimeError):
    """The sink refused a request as a whole (e.g. 404, a bad pipeline): the configuration must change."""


class SinkTlsError(RuntimeError):
    """The sink's certificate did not verify: a configuration problem, not worth retrying."""


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
