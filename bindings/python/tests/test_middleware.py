import pathlib
import uuid

import pytest

from floodgate import Engine
from floodgate._web import client_ip, networks

POLICY = (pathlib.Path(__file__).resolve().parents[3] / "tests" / "policies" / "bindings.toml").read_text()


def test_client_ip_trusts_only_configured_proxies():
    trusted = networks(["10.0.0.0/8"])
    xff = [("X-Forwarded-For", "198.51.100.7, 10.0.0.2")]
    assert client_ip("203.0.113.1", xff, trusted) == "203.0.113.1"  # untrusted peer: header ignored
    assert client_ip("10.0.0.1", xff, trusted) == "198.51.100.7"
    assert client_ip("10.0.0.1", [("X-Forwarded-For", "198.51.100.8"), ("X-Forwarded-For", "10.0.0.3")], trusted) == "198.51.100.8"
    assert client_ip("testclient", [], trusted) is None


def test_no_trusted_proxy_is_none_and_the_peer_is_the_client():
    assert networks([]) is None
    xff = [("X-Forwarded-For", "198.51.100.7")]
    assert client_ip("203.0.113.1", xff, None) == "203.0.113.1"  # the header is ignored
    assert client_ip("fe80::1%eth0", [], None) == "fe80::1"  # a zone is cut, as with proxies
    assert client_ip("testclient", [], None) is None
    assert client_ip(None, [], None) is None


def test_only_the_configured_forwarding_header_is_read():
    trusted = networks(["10.0.0.0/8"])
    both = [("Forwarded", "for=203.0.113.99"), ("X-Forwarded-For", "198.51.100.7")]
    # nginx appends to X-Forwarded-For and passes a client's Forwarded through.
    assert client_ip("10.0.0.1", both, trusted) == "198.51.100.7"
    assert client_ip("10.0.0.1", [("Forwarded", "for=203.0.113.99")], trusted) == "10.0.0.1"
    fwd = [("Forwarded", 'for="[2001:db8::1]:443";proto=https'), ("X-Forwarded-For", "198.51.100.7")]
    assert client_ip("10.0.0.1", fwd, trusted, forwarded_header="forwarded") == "2001:db8::1"


def test_mapped_and_zoned_addresses_are_canonical():
    trusted = networks(["10.0.0.0/8"])
    xff = [("X-Forwarded-For", "198.51.100.7")]
    # A dual-stack socket reports an IPv4 proxy as ::ffff:10.0.0.1.
    assert client_ip("::ffff:10.0.0.1", xff, trusted) == "198.51.100.7"
    assert client_ip("::ffff:203.0.113.5", xff, trusted) == "203.0.113.5"
    assert client_ip("10.0.0.1", [("X-Forwarded-For", "::ffff:198.51.100.9")], trusted) == "198.51.100.9"
    assert client_ip("fe80::1%eth0", xff, trusted) == "fe80::1"
    assert client_ip("10.0.0.1", [("X-Forwarded-For", "fe80::2%eth0")], trusted) == "fe80::2"


def test_unknown_and_obfuscated_hops_are_their_own_clients():
    trusted = networks(["10.0.0.0/8"])
    fwd = lambda v: [("Forwarded", v)]  # noqa: E731
    unknown = client_ip("10.0.0.1", fwd("for=unknown"), trusted, "forwarded")
    hidden = client_ip("10.0.0.1", fwd('for="_hidden"'), trusted, "forwarded")
    other = client_ip("10.0.0.1", fwd("for=_other"), trusted, "forwarded")
    assert unknown and hidden and other
    assert len({unknown, hidden, other, "10.0.0.1"}) == 4, "not folded onto the proxy"
    assert hidden == client_ip("10.0.0.1", fwd("for=_hidden"), trusted, "forwarded"), "stable"
    assert all(a.startswith("1") and ":" in a for a in (unknown, hidden, other)), "reserved 100::/8"


def test_a_dual_stack_peer_behind_a_trusted_proxy():
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from floodgate.asgi import FloodgateMiddleware

    app = Starlette(routes=[Route("/auth/login", lambda r: PlainTextResponse("ok"), methods=["POST"])])
    app.add_middleware(FloodgateMiddleware, engine=Engine.from_toml(POLICY), trusted_proxies=["127.0.0.1"])
    client = TestClient(app, client=("::ffff:127.0.0.1", 5000))
    # Two clients behind the proxy: each gets its own 2/min, not one shared bucket.
    for who in ("203.0.113.1", "203.0.113.2"):
        codes = [client.post("/auth/login", headers={"x-forwarded-for": who}).status_code for _ in range(3)]
        assert codes == [200, 200, 429], (who, codes)
    assert starlette


def _check_app(get, post, status_of, header_of):
    r = get("/api/items")
    assert status_of(r) == 200 and header_of(r, "RateLimit-Policy") == '"api";q=100;w=60'
    assert status_of(post("/auth/login")) == 200
    assert status_of(post("/auth/login")) == 200
    r = post("/auth/login")
    assert status_of(r) == 429 and header_of(r, "Retry-After") == "30"
    assert status_of(post("/oauth/token")) == 401
    assert status_of(post("/oauth/token", {"x-client-id": "app"})) == 200
    assert status_of(get("/api/items", {"x-api-key": "sk_revoked"})) == 403


def test_starlette_and_fastapi_asgi():
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from floodgate.asgi import FloodgateMiddleware

    app = fastapi.FastAPI()

    @app.get("/api/items")
    def items():
        return {"items": []}

    @app.post("/auth/login")
    def login():
        return {"ok": True}

    @app.post("/oauth/token")
    def token():
        return {"token": "t"}

    # The TestClient's peer is "testclient"; a trusted proxy supplies the address.
    app.add_middleware(FloodgateMiddleware, engine=Engine.from_toml(POLICY), trusted_proxies=["0.0.0.0/0"])
    client = TestClient(app, client=("10.1.2.3", 5000))
    h = {"x-forwarded-for": "203.0.113.50"}
    _check_app(
        lambda p, extra=None: client.get(p, headers={**h, **(extra or {})}),
        lambda p, extra=None: client.post(p, headers={**h, **(extra or {})}),
        lambda r: r.status_code,
        lambda r, n: r.headers.get(n),
    )
    r = client.post("/auth/login", headers=h)
    assert r.json() == {"error": "rate_limited", "retry_after": 30, "rule": "login"}


def test_flask_wsgi():
    flask = pytest.importorskip("flask")
    from floodgate.wsgi import FloodgateMiddleware

    app = flask.Flask(__name__)

    @app.get("/api/items")
    def items():
        return {"items": []}

    @app.post("/auth/login")
    def login():
        return {"ok": True}

    @app.post("/oauth/token")
    def token():
        return {"token": "t"}

    app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_toml(POLICY))
    client = app.test_client()
    env = {"REMOTE_ADDR": "203.0.113.60"}
    _check_app(
        lambda p, extra=None: client.get(p, headers=extra or {}, environ_base=env),
        lambda p, extra=None: client.post(p, headers=extra or {}, environ_base=env),
        lambda r: r.status_code,
        lambda r, n: r.headers.get(n),
    )


def test_django(tmp_path):
    pytest.importorskip("django")
    import django
    from django.conf import settings

    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=["floodgate.django.FloodgateMiddleware"],
            FLOODGATE={"policy": policy, "trusted_proxies": []},
            SECRET_KEY="test",
        )
        django.setup()
    from django.test import Client

    client = Client(REMOTE_ADDR="203.0.113.70")
    _check_app(
        lambda p, extra=None: client.get(p, headers=extra or {}),
        lambda p, extra=None: client.post(p, headers=extra or {}),
        lambda r: r.status_code,
        lambda r, n: r.headers.get(n),
    )



def test_django_settles_after_the_view(tmp_path):
    """Only failed logins count; the view's Floodgate-Cost header is removed."""
    pytest.importorskip("django")
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test")
        django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from floodgate.django import FloodgateMiddleware

    def view(request):
        r = HttpResponse(b"{}", status=int(request.headers["x-status"]))
        r["Floodgate-Cost"] = "1"
        return r

    policy = {
        "rule": [
            {
                "name": "login",
                "match": "POST /auth/login",
                "key": "ip",
                "algorithm": "fixed_window",
                "quotas": ["2/hour"],
                "count": "failures",
            }
        ]
    }
    with override_settings(FLOODGATE={"policy": policy}):
        mw = FloodgateMiddleware(view)
    factory = RequestFactory(REMOTE_ADDR="203.0.113.99")
    call = lambda status: mw(factory.post("/auth/login", headers={"x-status": str(status)}))  # noqa: E731
    for _ in range(10):
        r = call(200)
        assert r.status_code == 200
        assert "Floodgate-Cost" not in r.headers
    assert [call(401).status_code for _ in range(3)] == [401, 401, 429]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_django_under_asgi_is_called_as_a_coroutine(store, request):
    """Under ASGI Django calls a middleware whose next step is async as a
    coroutine when it is async capable (no thread hop); then Floodgate's
    decides there, awaits the view and settles: a Redis engine with
    check_request_async and settle_async."""
    pytest.importorskip("django")
    import asyncio

    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test")
        django.setup()
    from asgiref.sync import iscoroutinefunction
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from floodgate.django import FloodgateMiddleware

    async def view(request):
        r = HttpResponse(b"{}", status=int(request.headers["x-status"]))
        r["Floodgate-Cost"] = "1"
        return r

    rule = {"name": "login", "match": "POST /auth/login", "key": "ip", "algorithm": "fixed_window",
            "quotas": ["2/hour"], "count": "failures"}
    policy = {"rule": [rule]}
    if store == "redis":
        policy["store"] = {"kind": "redis", "url": request.getfixturevalue("redis_url"), "prefix": f"dj-{uuid.uuid4().hex}"}
    with override_settings(FLOODGATE={"policy": policy}):
        mw = FloodgateMiddleware(view)
    assert iscoroutinefunction(mw), "async capable: Django awaits it"
    assert mw.engine.blocking == (store == "redis")
    factory = RequestFactory(REMOTE_ADDR="203.0.113.98")

    async def calls():
        out = []
        for status in [200] * 5 + [401] * 3:
            r = await mw(factory.post("/auth/login", headers={"x-status": str(status)}))
            assert "Floodgate-Cost" not in r.headers
            out.append(r.status_code)
        return out

    assert asyncio.run(calls()) == [200] * 5 + [401, 401, 429], "successes given back, failures counted"


def test_django_under_asgi_never_stalls_the_event_loop_on_a_frozen_redis(own_redis):
    """A Redis that stops answering (SIGSTOP): under ASGI the middleware's checks
    wait out their deadline into the fail mode without holding the event loop
    (a blocking check would stall every task of the worker for the deadline,
    each time). A ticker task measures the loop's lag meanwhile."""
    pytest.importorskip("django")
    import asyncio
    import time

    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test")
        django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from floodgate.django import FloodgateMiddleware

    async def view(request):
        return HttpResponse(b"{}")

    policy = {
        "store": {"kind": "redis", "url": own_redis.url, "timeout_ms": 500, "fail_mode": "open",
                  "prefix": f"dj-{uuid.uuid4().hex}"},
        "rule": [{"name": "api", "match": "/api/**", "key": "ip", "quotas": ["100/min"]}],
    }
    with override_settings(FLOODGATE={"policy": policy}):
        mw = FloodgateMiddleware(view)
    factory = RequestFactory(REMOTE_ADDR="203.0.113.97")

    async def run():
        assert (await mw(factory.get("/api/x"))).status_code == 200  # connected
        own_redis.proc.send_signal(19)  # SIGSTOP
        try:
            worst = 0.0
            done = False

            async def ticker():
                nonlocal worst
                while not done:
                    t = time.perf_counter()
                    await asyncio.sleep(0.005)
                    worst = max(worst, time.perf_counter() - t - 0.005)

            tick = asyncio.create_task(ticker())
            await asyncio.sleep(0.01)  # the ticker is running (asleep) when the checks start
            started = time.perf_counter()
            for _ in range(3):  # one after another: a blocking check would hold the loop 500 ms or more
                assert (await mw(factory.get("/api/x"))).status_code == 200, "fail mode open"
            took = time.perf_counter() - started
            done = True
            await tick
            return took, worst
        finally:
            own_redis.proc.send_signal(18)  # SIGCONT

    took, worst = asyncio.run(run())
    assert took >= 0.5, f"the checks waited for Redis ({took:.3f} s)"
    assert worst < 0.25, f"the event loop stalled for {worst:.3f} s"


def _view(request):
    from django.http import JsonResponse

    return JsonResponse({"ok": True})


def _urls():
    try:
        from django.urls import path
    except Exception:  # django not installed
        return []
    return [path("api/items", _view), path("auth/login", _view), path("oauth/token", _view)]


urlpatterns = _urls()


def _jwt(payload: dict, secret: bytes, alg: str = "HS256") -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    if alg == "none":
        return f"{head}.{body}."
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _jwt_policy(tmp_path) -> str:
    secret = tmp_path / "hs256.key"
    secret.write_bytes(b"test-secret-of-32-bytes-at-least!!")
    return f"""
[jwt]
algorithms = ["HS256"]
issuer = "https://auth.example.com"
secret_file = "{secret}"
on_invalid = "reject"

[[rule]]
name = "me"
match = "/me"
quotas = ["2/min"]
key = "claim:sub"
anonymous = "deny"
"""


def _check_jwt(call, status_of, body_of):
    import time

    secret = b"test-secret-of-32-bytes-at-least!!"
    good = {"sub": "alice", "iss": "https://auth.example.com", "exp": int(time.time()) + 600}
    bearer = lambda t: {"authorization": f"Bearer {t}"}  # noqa: E731
    # No token, a forged one, alg=none, an expired one, a wrong issuer: 401 each.
    assert status_of(call({})) == 401
    assert body_of(call({})) == {"error": "unauthorized", "rule": "me"}
    assert status_of(call(bearer(_jwt(good, b"another-secret-entirely-32-bytes!")))) == 401
    assert status_of(call(bearer(_jwt(good, secret, alg="none")))) == 401
    assert status_of(call(bearer(_jwt({**good, "exp": int(time.time()) - 3600}, secret)))) == 401
    assert status_of(call(bearer(_jwt({**good, "iss": "https://evil.example.com"}, secret)))) == 401
    # A verified token is keyed by its subject: alice has 2 per minute, bob his own.
    alice = bearer(_jwt(good, secret))
    assert [status_of(call(alice)) for _ in range(3)] == [200, 200, 429]
    assert status_of(call(bearer(_jwt({**good, "sub": "bob"}, secret)))) == 200


def test_asgi_requires_a_verified_token(tmp_path):
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from floodgate.asgi import FloodgateMiddleware

    app = fastapi.FastAPI()

    @app.get("/me")
    def me():
        return {"me": True}

    app.add_middleware(FloodgateMiddleware, engine=Engine.from_toml(_jwt_policy(tmp_path)))
    client = TestClient(app)
    _check_jwt(lambda h: client.get("/me", headers=h), lambda r: r.status_code, lambda r: r.json())


def test_wsgi_requires_a_verified_token(tmp_path):
    flask = pytest.importorskip("flask")
    from floodgate.wsgi import FloodgateMiddleware

    app = flask.Flask(__name__)

    @app.get("/me")
    def me():
        return {"me": True}

    app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_toml(_jwt_policy(tmp_path)))
    client = app.test_client()
    _check_jwt(
        lambda h: client.get("/me", headers=h, environ_base={"REMOTE_ADDR": "203.0.113.61"}),
        lambda r: r.status_code,
        lambda r: r.get_json(),
    )


def test_wsgi_keys_the_path_werkzeug_routes():
    from floodgate.wsgi import FloodgateMiddleware

    seen = []
    engine = Engine.from_toml('[[rule]]\nname = "p"\nmatch = "/**"\nkey = "path"\nquotas = ["9/min"]\n')
    app = FloodgateMiddleware(lambda environ, start: seen.append(environ) or [b""], engine)
    headers = []

    def start(status, hs, exc_info=None):
        headers.extend(hs)

    # /é?x, as a WSGI server passes it: UTF-8 bytes as latin-1, the query apart.
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/é".encode().decode("latin-1"), "QUERY_STRING": "x=1",
               "REMOTE_ADDR": "203.0.113.1"}
    app(environ, start)
    v = engine.check_request(method="GET", path="/%C3%A9", client_ip="203.0.113.1")
    assert v.identity == "/é" and v.remaining == 7, v


def test_the_wsgi_reader_reads_the_environ_as_the_python_did():
    """The WSGI middleware reads the request from the environ in the extension
    (`WsgiReader`): the client address (the peer, a trusted proxy's
    X-Forwarded-For hop, no client for a peer that is no address, 400 for a
    malformed one), the path Werkzeug routes, escapes kept, and a string
    past Latin-1 (not a WSGI string) routed as it is rather than crashing."""
    from floodgate.wsgi import FloodgateMiddleware

    policy = '[[rule]]\nname = "ip"\nmatch = "/**"\nkey = "ip"\nquotas = ["1/min"]\n' \
        '[[rule]]\nname = "path"\nmatch = "/**"\nkey = "path"\nquotas = ["100/min"]\n'

    def run(app, **environ):
        got = {}

        def start(status, hs, exc_info=None):
            got["status"] = int(status.split(" ", 1)[0])

        app({"REQUEST_METHOD": "GET", "PATH_INFO": "/x", **environ}, start)
        return got["status"]

    ok = lambda environ, start: start("200 OK", []) or [b""]  # noqa: E731
    engine = Engine.from_toml(policy)
    app = FloodgateMiddleware(ok, engine, trusted_proxies=["10.0.0.0/8"])
    # A trusted proxy's hop is the client: one request each, then 429.
    for client in ["198.51.100.7", "198.51.100.8"]:
        xff = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": f"203.0.113.99, {client}, 10.0.0.3"}
        assert [run(app, **xff), run(app, **xff)] == [200, 429], client
    # An untrusted peer's X-Forwarded-For is ignored: the peer is the client.
    spoof = {"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "198.51.100.50"}
    assert [run(app, **spoof), run(app, **{**spoof, "HTTP_X_FORWARDED_FOR": "198.51.100.51"})] == [200, 429]
    # A zoned peer is its address; a peer that is no address (Starlette's
    # TestClient says "testclient") is no client: every such request shares
    # the per-IP rule's one key for no address (it was not limited at all);
    # a malformed one is a 400.
    assert [run(app, REMOTE_ADDR="fe80::1%eth0"), run(app, REMOTE_ADDR="fe80::1")] == [200, 429]
    assert [run(app, REMOTE_ADDR="testclient") for _ in range(3)] == [200, 429, 429]
    plain = Engine.from_toml(policy)
    papp = FloodgateMiddleware(ok, plain)
    assert run(papp, REMOTE_ADDR="1.2.3") == 400
    # (Behind trusted proxies a peer that is no address is no client, as the
    # proxy walk has always answered: the same one key, spent above.)
    assert run(app, REMOTE_ADDR="1.2.3") == 429
    # Paths: Latin-1 bytes read as UTF-8, `?` from a decoded %3F kept in the
    # path (not a query), and a character past Latin-1 routed as it is (the
    # path rule alone: requests here have no address).
    paths = Engine.from_toml('[[rule]]\nname = "path"\nmatch = "/**"\nkey = "path"\nquotas = ["100/min"]\n')
    pathapp = FloodgateMiddleware(ok, paths)
    for path_info, engine_path in [
        ("/\u00c3\u00a9", "/%C3%A9"),
        ("/a?b", "/a%3Fb"),
        ("/\u20ac", "/%E2%82%AC"),
        ("", "/"),
    ]:
        assert run(pathapp, PATH_INFO=path_info) == 200, path_info
        v = paths.check_request(method="GET", path=engine_path)
        assert v.rule == "path" and v.remaining == 98, (path_info, v)


KEYED = """
[[rule]]
name = "keyed"
match = "/api/**"
key = "header:x-api-key"
quotas = ["3/minute"]
"""


def test_the_middleware_check_reads_what_check_request_reads():
    """`Engine._check_middleware` (the path every middleware takes in memory)
    decides as `check_request` does: the same headers read (the first copy of a
    repeated one, bytes as Latin-1), the same headers returned, shaped for the
    server; a denial comes back as the Verdict."""
    raw = [(b"host", b"x"), (b"x-api-key", b"k\xe9y"), (b"x-api-key", b"other")]
    text = [("host", "x"), ("x-api-key", "k\xe9y"), ("x-api-key", "other")]
    a, b = Engine.from_toml(KEYED), Engine.from_toml(KEYED)
    for i in range(3):
        got = a._check_middleware("GET", "/api/x", "203.0.113.1", raw, True)
        want = b.check_request(method="GET", path="/api/x", client_ip="203.0.113.1", headers=text)
        assert type(got) is list and want.allowed and want.remaining == 2 - i
        assert got == [(n.lower().encode(), v.encode()) for n, v in want.headers]
    denied = a._check_middleware("GET", "/api/x", "203.0.113.1", raw, True)
    assert not denied.allowed and denied.status == 429 and denied.identity == "k\xe9y"
    # Another key (the second copy is not read) and the WSGI shape: (str, str).
    other = a._check_middleware("GET", "/api/x", None, [("X-Api-Key", "other")], False)
    assert other == [(n, v) for n, v in b.check_request(method="GET", path="/api/x", headers=[("x-api-key", "other")]).headers]
    assert all(type(n) is str and type(v) is str for n, v in other)
    with pytest.raises(TypeError):
        a._check_middleware("GET", "/api/x", None, [(b"x-api-key", 7)], True)
    from floodgate.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        a._check_middleware("GET", "/api/x", "not an address", [], True)


def test_a_logging_handler_that_checks_again_gets_its_own_buffer():
    """With DEBUG logging, a denial is logged from inside the check; a handler
    that decides another request on the same thread (the middleware path keeps
    one buffer per thread) gets an answer of its own, and the outer check still
    returns its denial."""
    import logging

    seen = []
    engine = None

    class Rechecking(logging.Handler):
        def emit(self, record):
            if getattr(record, "floodgate_event", None) == "denied":
                seen.append(engine._check_middleware("GET", "/api/x", "203.0.113.9", [(b"x-api-key", b"inner")], True))

    log = logging.getLogger("floodgate")
    handler, level = Rechecking(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        engine = Engine.from_toml(KEYED)
        for _ in range(3):
            assert type(engine._check_middleware("GET", "/api/x", None, [(b"x-api-key", b"outer")], True)) is list
        outer = engine._check_middleware("GET", "/api/x", None, [(b"x-api-key", b"outer")], True)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert not outer.allowed and outer.identity == "outer"
    assert len(seen) == 1 and type(seen[0]) is list and seen[0], seen


def _wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize(
    "trusted,peer,validate,warned",
    [
        ((), "127.0.0.1", True, True),  # behind a loopback proxy that is not trusted
        (("10.0.0.0/8",), "172.17.0.1", True, True),  # Docker's bridge, not in the list
        ((), "", True, True),  # gunicorn on a Unix socket: no address
        (("unix:",), "", True, False),
        (("127.0.0.1",), "127.0.0.1", True, False),
        ((), "203.0.113.9", True, False),  # a public client that sent its own header
        ((), "127.0.0.1", False, False),  # validate=False
    ],
)
def test_an_untrusted_proxy_is_warned_of_once(caplog, trusted, peer, validate, warned):
    from floodgate.wsgi import FloodgateMiddleware

    app = FloodgateMiddleware(_wsgi_app, Engine.from_toml(POLICY), trusted_proxies=trusted, validate=validate)
    with caplog.at_level("WARNING", logger="floodgate"):
        for i in range(5):
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/public", "REMOTE_ADDR": peer,
                       "HTTP_X_FORWARDED_FOR": f"198.51.100.{i}"}
            b"".join(app(environ, lambda status, headers, exc_info=None: None))
    lines = [r.getMessage() for r in caplog.records if "ERR_FG_UNTRUSTED_PROXY" in r.getMessage()]
    assert len(lines) == (1 if warned else 0), lines


def test_an_untrusted_proxy_is_warned_of_by_the_asgi_middleware(caplog):
    import asyncio

    from floodgate.asgi import FloodgateMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(mw, client):
        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            pass

        for i in range(3):
            scope = {"type": "http", "method": "GET", "path": "/public", "query_string": b"", "client": client,
                     "headers": [(b"x-forwarded-for", f"198.51.100.{i}".encode())]}
            await mw(scope, receive, send)

    engine = Engine.from_toml(POLICY)
    with caplog.at_level("WARNING", logger="floodgate"):
        asyncio.run(run(FloodgateMiddleware(app, engine), ("127.0.0.1", 5000)))
        asyncio.run(run(FloodgateMiddleware(app, engine, trusted_proxies=["unix:"]), None))
        asyncio.run(run(FloodgateMiddleware(app, engine), None))
    lines = [r.getMessage() for r in caplog.records if "ERR_FG_UNTRUSTED_PROXY" in r.getMessage()]
    assert len(lines) == 2 and "127.0.0.1" in lines[0] and "a Unix socket" in lines[1], lines


def test_an_untrusted_proxy_is_warned_of_by_the_django_middleware(caplog):
    pytest.importorskip("django")
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test")
        django.setup()
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from floodgate.django import FloodgateMiddleware

    policy = {"rule": [{"name": "all", "match": "/**", "key": "ip", "quotas": ["100/min"]}]}
    counts = []
    for conf in ({}, {"trusted_proxies": ["127.0.0.1"]}, {"validate": False}):
        caplog.clear()
        with override_settings(FLOODGATE={"policy": policy, **conf}):
            mw = FloodgateMiddleware(lambda request: HttpResponse(b"ok"))
        factory = RequestFactory(REMOTE_ADDR="127.0.0.1")
        with caplog.at_level("WARNING", logger="floodgate"):
            for i in range(3):
                assert mw(factory.get("/x", headers={"x-forwarded-for": f"198.51.100.{i}"})).status_code == 200
        counts.append(sum("ERR_FG_UNTRUSTED_PROXY" in r.getMessage() for r in caplog.records))
    assert counts == [1, 0, 0]


def test_behind_cors_preflights_are_not_charged_and_a_429_is_readable():
    """Starlette's CORSMiddleware added after the limiter (so outside it, README
    "CORS"): it answers preflights, which never reach the limiter, and adds
    its headers to the limiter's 429, exposing Retry-After and RateLimit to
    the page's code."""
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from floodgate.asgi import FloodgateMiddleware

    origin = "https://app.example"
    exposed = ["Retry-After", "RateLimit", "RateLimit-Policy"]

    async def page(request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/page", page)])
    policy = '[[rule]]\nname = "page"\nmatch = "/page"\nkey = "ip"\nquotas = ["3/min"]\n'
    app.add_middleware(FloodgateMiddleware, engine=Engine.from_toml(policy))
    app.add_middleware(CORSMiddleware, allow_origins=[origin], allow_methods=["GET"], expose_headers=exposed)
    client = TestClient(app, client=("203.0.113.60", 5000))
    for _ in range(6):
        r = client.options("/page", headers={"origin": origin, "access-control-request-method": "GET"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    replies = [client.get("/page", headers={"origin": origin}) for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429], "preflights charged nothing"
    refused = replies[3]
    assert refused.headers["access-control-allow-origin"] == origin
    assert {h.lower() for h in exposed} <= {h.strip().lower() for h in refused.headers["access-control-expose-headers"].split(",")}
    assert int(refused.headers["retry-after"]) >= 1


def test_a_proxys_place_is_the_cores_list():
    """The untrusted-proxy warning's networks come from the core (the same list
    as the Node package's and the tower layer's)."""
    from floodgate._web import _from_proxy

    for peer in ["127.0.0.1", "10.1.2.3", "172.17.0.1", "192.168.1.1", "169.254.0.1", "100.64.0.1",
                 "::1", "fd00::1", "fe80::1%eth0", "::ffff:10.0.0.1", None, ""]:
        assert _from_proxy(peer), peer
    for peer in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8", "testclient", "garbage"]:
        assert not _from_proxy(peer), peer
