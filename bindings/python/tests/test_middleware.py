import pathlib
import pytest

from floodgate import Engine
from floodgate._web import client_ip, networks

POLICY = (pathlib.Path(__file__).resolve().parents[3] / "tests" / "policies" / "bindings.toml").read_text()


def test_client_ip_trusts_only_configured_proxies():
    trusted = networks(["10.0.0.0/8"])
    xff = [("X-Forwarded-For", "198.51.100.7, 10.0.0.2")]
    assert client_ip("203.0.113.1", xff, trusted) == "203.0.113.1"  # untrusted peer: header ignored
    assert client_ip("10.0.0.1", xff, trusted) == "198.51.100.7"
    assert client_ip("10.0.0.1", [("Forwarded", 'for="[2001:db8::1]:443";proto=https')], trusted) == "2001:db8::1"
    assert client_ip("10.0.0.1", [("X-Forwarded-For", "garbage")], trusted) == "10.0.0.1"
    assert client_ip("testclient", [], trusted) is None


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
