"""The API key for a browser: given once (a query parameter or the key form), then kept in a cookie."""

from __future__ import annotations

import hmac

from starlette.requests import Request

KEY_COOKIE = "flowring_key"
TRACE_HEADER = "x-flowring-trace"  # "1": return the request's spans (the dashboard's chat sends it)


def cookie_key(request: Request) -> str:
    """The key the browser's cookie carries ("" when none)."""
    return request.cookies.get(KEY_COOKIE, "")


def cookie_holds(request: Request, api_key: str) -> bool:
    """Whether the browser's cookie carries ``api_key``."""
    return same(cookie_key(request), api_key)


def allowed(request: Request, api_key: str) -> bool:
    """Whether ``request`` may see the dashboard: no key set, or the key as a bearer token or in the cookie."""
    if not api_key:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and same(token.strip(), api_key):
        return True
    return cookie_holds(request, api_key)


def same(given: str, api_key: str) -> bool:
    """Constant-time comparison (an empty ``given`` never matches)."""
    return bool(given) and hmac.compare_digest(given.encode(), api_key.encode())
