"""Django over real HTTP, under gunicorn (WSGI) and under uvicorn (ASGI,
where the middleware runs as a coroutine), with two workers on the
shared-memory store, django-cors-headers' CorsMiddleware above Floodgate's (as its docs and
ours say: first in MIDDLEWARE). A burst from one client is held to the limit
exactly across the workers; the 429s carry CORS headers a page can read;
preflights are answered by CorsMiddleware and never charged; a failed login
is settled as a failure."""

from __future__ import annotations

import concurrent.futures
import json
import os

import pytest

from test_workers import _call, _stop, _table, _wait_for_workers, start_server

POLICY = """
[store]
kind = "shared_memory"
path = "{table}"
max_keys = 65536

[[rule]]
name = "page"
match = "/page"
key = "ip"
algorithm = "fixed_window"
quotas = ["10/hour"]

[[rule]]
name = "login"
match = "POST /login"
key = "header:x-username"
algorithm = "fixed_window"
quotas = ["3/hour"]
count = "failures"
"""

APP = """
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="test",
    INSTALLED_APPS=["corsheaders"],
    MIDDLEWARE=["corsheaders.middleware.CorsMiddleware", "floodgate.django.FloodgateMiddleware"],
    CORS_ALLOWED_ORIGINS=["https://app.example"],
    CORS_EXPOSE_HEADERS=["Retry-After", "RateLimit", "RateLimit-Policy"],
    FLOODGATE={"policy": "policy.toml"},
)

from django.core.wsgi import get_wsgi_application
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def page(request):
    return JsonResponse({"ok": True})


@csrf_exempt
def login(request):
    ok = request.headers.get("x-password") == "right"
    return JsonResponse({"ok": ok}, status=200 if ok else 401)


def health(request):
    return JsonResponse({"ok": True})


urlpatterns = [path("page", page), path("login", login), path("health", health)]
app = get_wsgi_application()
"""

# The same project served by uvicorn: Django's ASGI handler.
ASGI_APP = APP.replace("from django.core.wsgi import get_wsgi_application", "from django.core.asgi import get_asgi_application").replace(
    "app = get_wsgi_application()", "app = get_asgi_application()"
)

ORIGIN = "https://app.example"


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def django_server(request, tmp_path_factory):
    kind = request.param
    pytest.importorskip(kind)
    pytest.importorskip("django")
    pytest.importorskip("corsheaders")
    table = _table()
    app = APP if kind == "gunicorn" else ASGI_APP
    proc, port = start_server(kind, app, POLICY.format(table=table), tmp_path_factory.mktemp(f"django-{kind}"),
                              workers=2, threads=4)
    try:
        _wait_for_workers(proc, port)
        yield port
    finally:
        _stop(proc)
        if os.path.exists(table):
            os.unlink(table)


def test_a_burst_across_workers_is_held_exactly_and_its_429s_are_readable(django_server):
    port = django_server
    preflight = {"origin": ORIGIN, "access-control-request-method": "GET"}
    for _ in range(5):
        status, headers, _ = _call(port, "OPTIONS", "/page", preflight)
        assert (status, headers.get("access-control-allow-origin")) == (200, ORIGIN)
        assert "ratelimit" not in headers, "CorsMiddleware answered: never reached the limiter"
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        replies = list(pool.map(lambda _: _call(port, "GET", "/page", {"origin": ORIGIN}), range(40)))
    statuses = [r[0] for r in replies]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 30
    for status, headers, body in replies:
        assert headers["access-control-allow-origin"] == ORIGIN
        assert headers["ratelimit-policy"] == '"page";q=10;w=3600'
        if status == 429:
            exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
            assert {"retry-after", "ratelimit", "ratelimit-policy"} <= exposed
            assert int(headers["retry-after"]) >= 1
            assert json.loads(body)["error"]
            assert headers["content-length"] == str(len(body)), "sent whole, not chunked"


def test_only_failed_logins_count(django_server):
    port = django_server
    login = lambda pw: _call(port, "POST", "/login", {"x-username": "carol", "x-password": pw})[0]  # noqa: E731
    assert [login("right") for _ in range(6)] == [200] * 6, "successes are given back"
    assert [login("guess") for _ in range(4)] == [401, 401, 401, 429]
    assert login("right") == 429, "the failures used the quota up"
