"""The service's front door: an ASGI middleware that checks the API key before a request's body is read.

With a key configured, every route but `GET /healthz` answers 401 unless the request carries the key, and it
does so before the body is received or parsed: an unauthenticated client costs no parsing and learns nothing
about the request model. The key may come as `Authorization: Bearer <key>` (API clients) or as HTTP Basic
credentials with the key as the password (a browser opening the search page asks for it once, then sends it
with the page's own requests and image loads). `serve.docs: false` turns the OpenAPI pages off (404).

The replica tells the middleware what to check through its process environment, as the body limit does: Ray
Serve ships the FastAPI app to each replica by value, so a module global set in the replica's constructor is
not the one the middleware reads. Only a SHA-256 digest of the key is put there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os

KEY_DIGEST_ENV = "MRL_SERVE_KEY_SHA256"
DOCS_ENV = "MRL_SERVE_DOCS"
OPEN_PATHS = frozenset({"/healthz"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PAGE_PATHS = frozenset({"/"})  # where a browser is told to ask for the key (HTTP Basic); the page files follow


def configure(key: str | None, docs: bool) -> None:
    """Set this process's guard: the key (None: an open service) and whether the OpenAPI pages are served."""
    if key is None:
        os.environ.pop(KEY_DIGEST_ENV, None)
    else:
        os.environ[KEY_DIGEST_ENV] = digest(key)
    os.environ[DOCS_ENV] = "1" if docs else "0"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(authorization: str | None) -> str | None:
    """The key an Authorization header carries: the token of `Bearer <key>`, or the password of HTTP Basic
    credentials (any user name); None for a missing or malformed header."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def authorized(authorization: str | None) -> bool:
    """Whether a request with this Authorization header passes this process's guard (always, with no key)."""
    expected = os.environ.get(KEY_DIGEST_ENV)
    if expected is None:
        return True
    given = presented_key(authorization)
    return given is not None and hmac.compare_digest(digest(given), expected)


class Guard:
    """ASGI middleware: the API key (and the docs switch) checked from the headers alone."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":  # no route takes one; refused like any other request without the key
            if not authorized(_header(scope, b"authorization")):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.inner(scope, receive, send)
        if scope["type"] != "http":  # lifespan
            return await self.inner(scope, receive, send)
        path = route_path(scope)
        if path in DOCS_PATHS and os.environ.get(DOCS_ENV, "1") == "0":
            return await reply(send, 404, {"detail": "the API docs are off on this service (serve.docs: false)"})
        if path in OPEN_PATHS:
            return await self.inner(scope, receive, send)
        if not authorized(_header(scope, b"authorization")):
            challenge = 'Basic realm="mrl search", charset="UTF-8"' if path in PAGE_PATHS else "Bearer"
            return await reply(send, 401, {"detail": "missing or wrong API key: send the header "
                                                      "'Authorization: Bearer <key>'"},
                                [(b"www-authenticate", challenge.encode())])
        return await self.inner(scope, receive, send)


def route_path(scope) -> str:
    """The path the app routes on: the request path less the application's route prefix (`root_path`, which Ray
    Serve sets when the app is not at /), so `/mrl/healthz` under prefix `/mrl` is `/healthz`."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root):]
    return path or "/"


def _header(scope, name: bytes) -> str | None:
    value = dict(scope.get("headers", ())).get(name)
    return value.decode("latin-1") if value is not None else None


async def reply(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer an ASGI request with a JSON body from middleware, before (or instead of) the app."""
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})
