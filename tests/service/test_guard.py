"""The service's front door (`mrl.service.guard`): the key is checked from the headers, before the body is read,
on every route but /healthz; the docs can be switched off. Driven as ASGI, in front of a real FastAPI app."""

import asyncio
import base64
import json

import pytest
from fastapi import FastAPI, Request

from mrl.service import guard

KEY = "a-long-enough-test-key-0123"


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv(guard.KEY_DIGEST_ENV, raising=False)
    monkeypatch.delenv(guard.DOCS_ENV, raising=False)
    inner = FastAPI()

    @inner.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @inner.post("/search")
    async def search(request: Request):
        return {"got": len(await request.body())}

    @inner.get("/")
    def page():
        return {"page": True}

    return guard.Guard(inner)


def call(app, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", root: str = ""):
    """Send one request through the ASGI app; returns (status, headers, body (parsed when JSON), whether the
    body was read)."""
    sent, read = [], []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": root, "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    is_json = dict(start["headers"]).get(b"content-type", b"").startswith(b"application/json")
    return start["status"], dict(start["headers"]), json.loads(payload) if is_json else payload, bool(read)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_without_a_key_everything_is_open(app):
    assert call(app, "POST", "/search", body=b"xyz")[0] == 200
    assert call(app, "GET", "/docs")[0] == 200 and call(app, "GET", "/openapi.json")[0] == 200


def test_with_a_key_every_route_but_healthz_is_closed_before_the_body_is_read(app):
    guard.configure(KEY, docs=True)
    status, headers, body, read = call(app, "POST", "/search", body=b'{"id": 1}')
    assert status == 401 and not read and "Authorization: Bearer" in body["detail"]
    assert headers[b"www-authenticate"] == b"Bearer"
    for path in ("/docs", "/redoc", "/openapi.json", "/no-such-route", "/items/3"):
        assert call(app, "GET", path)[0] == 401, path
    status, headers, _, _ = call(app, "GET", "/")
    assert status == 401 and headers[b"www-authenticate"].startswith(b'Basic realm="mrl search"')  # the browser asks
    assert call(app, "GET", "/healthz")[0] == 200
    for wrong in ("Bearer nope", f"Bearer {KEY}x", f"Token {KEY}", basic("me", "nope"), "Basic !!!", basic(KEY, "")):
        assert call(app, "POST", "/search", {"Authorization": wrong})[0] == 401, wrong
    assert call(app, "POST", "/search", {"Authorization": f"Bearer {KEY}"}, b"abc")[2] == {"got": 3}
    assert call(app, "GET", "/", {"Authorization": basic("anyone", KEY)})[0] == 200
    assert call(app, "GET", "/openapi.json", {"Authorization": f"bearer {KEY}"})[0] == 200


def test_docs_can_be_switched_off(app):
    guard.configure(None, docs=False)
    for path in ("/docs", "/redoc", "/openapi.json"):
        status, _, body, _ = call(app, "GET", path)
        assert status == 404 and "serve.docs: false" in body["detail"]
    assert call(app, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("header, key", [(f"Bearer {KEY}", KEY), (basic("u", KEY), KEY), (basic("u", "a:b"), "a:b"),
                                         ("Bearer ", None), (None, None), ("Basic bm9jb2xvbg==", None)])
def test_presented_key(header, key):
    assert guard.presented_key(header) == key


def test_an_app_under_a_route_prefix_is_guarded_on_its_own_paths(app):
    """Ray Serve gives an app served at /mrl the root_path /mrl: the guard judges /mrl/healthz as /healthz."""
    guard.configure(KEY, docs=False)
    assert call(app, "GET", "/mrl/healthz", root="/mrl")[0] == 200
    assert call(app, "GET", "/mrl/openapi.json", {"Authorization": f"Bearer {KEY}"}, root="/mrl")[0] == 404
    status, headers, _, _ = call(app, "GET", "/mrl", root="/mrl")
    assert status == 401 and headers[b"www-authenticate"].startswith(b"Basic")
    assert call(app, "GET", "/mrlx/healthz", root="/mrl")[0] == 401  # not under the prefix: not /healthz


def test_a_websocket_without_the_key_is_closed(app):
    guard.configure(KEY, docs=True)
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "root_path": "", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
