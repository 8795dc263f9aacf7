"""Elasticsearch credential checks: API key, basic and bearer, any of which may be configured.

With nothing configured every request is accepted, like a cluster with security disabled.
"""

import base64
import binascii
import hmac


class EsAuth:
    def __init__(
        self,
        api_key: str | None = None,
        basic: tuple[str, str] | str | None = None,
        bearer: str | None = None,
    ) -> None:
        self._api_keys: list[str] = []
        if api_key:
            self._api_keys.append(api_key)
            if ":" in api_key:
                # Configured as "id:key": the official client sends base64("id:key").
                self._api_keys.append(base64.b64encode(api_key.encode()).decode())
        if isinstance(basic, tuple):
            basic = f"{basic[0]}:{basic[1]}"
        self._basic = basic or None
        self._bearer = bearer or None

    @property
    def enabled(self) -> bool:
        return bool(self._api_keys or self._basic or self._bearer)

    def check(self, authorization: str) -> bool | None:
        """None when no credentials were sent, else whether they match."""
        if not self.enabled:
            return True
        if not authorization.strip():
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "apikey":
            return any(_same(value, key) for key in self._api_keys)
        if scheme == "bearer":
            return self._bearer is not None and _same(value, self._bearer)
        if scheme == "basic" and self._basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            return _same(decoded, self._basic)
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


WWW_AUTHENTICATE = (
    'Basic realm="security", charset="UTF-8"',
    'Bearer realm="security"',
    "ApiKey",
)
