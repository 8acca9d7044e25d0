"""Attacks on the middleware, sent as an attacker sends them: raw bytes over a real
socket to Starlette on uvicorn, Flask (the WSGI middleware and the Flask
extension) on gunicorn, and Django on both, behind a "proxy" on
127.0.0.1 that is trusted and appends to X-Forwarded-For (as nginx does).

Each test counts how many requests reached the handler: a spelling that the
framework routes to a limited handler must be held to the limit."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Tuple

import pytest

POLICY = (pathlib.Path(__file__).resolve().parents[3] / "tests" / "policies" / "attacks.toml").read_text()

ASGI_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from floodgate import Engine
from floodgate.asgi import FloodgateMiddleware


def _username(body, content_type):
    # The username a login reads: from a form, else from JSON.
    import json
    from urllib.parse import parse_qs

    if content_type.startswith("application/x-www-form-urlencoded"):
        return parse_qs(body.decode()).get("username", [None])[-1]
    try:
        return json.loads(body).get("username")
    except Exception:
        return None


async def login(request):
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    username = None
    if content_type.startswith("multipart/"):
        # As FastAPI's Form reads it: Starlette's parser (python-multipart).
        try:
            username = (await request.form()).get("username")
        except Exception:
            pass
    username = username or _username(body, content_type)
    return JSONResponse({"handler": "login", "key": request.headers.get("x-api-key"), "username": username})


async def page(request):
    return JSONResponse({"handler": "page", "key": request.headers.get("x-api-key")})


async def me(request):
    return JSONResponse({"handler": "me"})


app = Starlette(routes=[
    Route("/auth/login", login, methods=["POST"]), Route("/page", page, methods=["GET"]), Route("/me", me, methods=["GET"]),
    Route("/export", me, methods=["GET"]),
])
app.add_middleware(FloodgateMiddleware, engine=Engine.from_file("policy.toml"), trusted_proxies=["127.0.0.1"])
"""

WSGI_APP = """
import flask

from floodgate import Engine
from floodgate.wsgi import FloodgateMiddleware

app = flask.Flask(__name__)


@app.post("/auth/login")
def login():
    username = flask.request.form.get("username") or (flask.request.get_json(silent=True, force=True) or {}).get("username")
    return {"handler": "login", "key": flask.request.headers.get("x-api-key"), "username": username}


@app.get("/page")
def page():
    return {"handler": "page", "key": flask.request.headers.get("x-api-key")}


@app.get("/me")
@app.get("/export", endpoint="export")
def me():
    return {"handler": "me"}


app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"), trusted_proxies=["127.0.0.1"])
"""

# The same Flask app with the Flask extension (floodgate.flask) instead of the
# WSGI middleware: the same reader of the environ, answering inside Flask.
FLASK_APP = WSGI_APP.replace("from floodgate.wsgi import FloodgateMiddleware", "from floodgate.flask import Floodgate").replace(
    'app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"),',
    'Floodgate(app, Engine.from_file("policy.toml"),',
)

# Django under gunicorn: its URL resolver on `path_info`.
DJANGO_APP = """
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="test",
    MIDDLEWARE=["floodgate.django.FloodgateMiddleware"],
    FLOODGATE={"policy": "policy.toml", "trusted_proxies": ["127.0.0.1"]},
)

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponseNotAllowed, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def login(request):
    import json

    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    username = request.POST.get("username")
    if username is None:
        try:
            username = json.loads(request.body).get("username")
        except Exception:
            pass
    return JsonResponse({"handler": "login", "key": request.headers.get("x-api-key"), "username": username})


def page(request):
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET"])
    return JsonResponse({"handler": "page", "key": request.headers.get("x-api-key")})


def me(request):
    return JsonResponse({"handler": "me"})


urlpatterns = [path("auth/login", login), path("page", page), path("me", me), path("export", me)]
app = get_wsgi_application()
"""
# The same Django project under uvicorn: the middleware as a coroutine.
DJANGO_ASGI_APP = DJANGO_APP.replace("from django.core.wsgi import get_wsgi_application", "from django.core.asgi import get_asgi_application").replace(
    "app = get_wsgi_application()", "app = get_asgi_application()"
)
APPS = {"uvicorn": ASGI_APP, "gunicorn": WSGI_APP, "flask": FLASK_APP, "django": DJANGO_APP, "django-asgi": DJANGO_ASGI_APP}
FRAMEWORK = {"uvicorn": "starlette", "gunicorn": "flask", "flask": "flask", "django": "django", "django-asgi": "django"}
# The server each kind runs under.
SERVER = {"uvicorn": "uvicorn", "gunicorn": "gunicorn", "flask": "gunicorn", "django": "gunicorn", "django-asgi": "uvicorn"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


KINDS = ["uvicorn", "gunicorn", "flask", "django", "django-asgi"]


@contextlib.contextmanager
def _serve(kind: str, d: pathlib.Path):
    """Serves app.py from `d` (beside its policy.toml) as `kind` runs it: the
    port, then the server stopped. ``kind`` "flask" is the Flask extension
    under gunicorn, "django" Django under gunicorn, "django-asgi" Django under
    uvicorn."""
    pytest.importorskip(SERVER[kind])
    pytest.importorskip(FRAMEWORK[kind])
    (d / "app.py").write_text(textwrap.dedent(APPS[kind]))
    port = _free_port()
    if SERVER[kind] == "uvicorn":
        # --no-proxy-headers: the app sees the socket peer; trusting the proxy is
        # the middleware's job (trusted_proxies).
        cmd = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
               "--no-proxy-headers", "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "gunicorn", "app:app", "-b", f"127.0.0.1:{port}", "-w", "1",
               "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(d)}
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died")
            time.sleep(0.05)
    else:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{kind} did not start")
    try:
        yield port
    finally:
        _stop(proc)


@pytest.fixture(params=KINDS, scope="module")
def server(request, tmp_path_factory):
    kind = request.param
    d = tmp_path_factory.mktemp(kind)
    (d / "policy.toml").write_text(POLICY)
    with _serve(kind, d) as port:
        yield kind, port


def raw(
    port: int, method: str, target: str, headers: List[Tuple[str, str]], body: bytes = b"", chunked: bool = False
) -> Tuple[int, Dict[str, str], bytes]:
    """Sends exactly these bytes (no client-side normalisation) and reads the answer;
    ``chunked``: the body in one chunk, with no length."""
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", length]
    lines += [f"{n}: {v}" for n, v in headers]
    if chunked:
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        n, _, v = line.partition(":")
        parsed[n.strip().lower()] = v.strip()
    if parsed.get("transfer-encoding") == "chunked":
        whole = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            whole, body = whole + rest[:n], rest[n + 2 :]
        body = whole
    return int(status_line.split()[1]), parsed, body


_client = [0]


def fresh_client() -> str:
    """A new client address, as the trusted proxy reports it (one of 198.18.0.0/15's)."""
    _client[0] += 1
    return f"198.18.{_client[0] // 250}.{_client[0] % 250 + 1}"


def reached(port: int, method: str, target: str, n: int = 8, extra=()) -> List[int]:
    xff = fresh_client()
    return [raw(port, method, target, [("X-Forwarded-For", xff), *extra])[0] for _ in range(n)]


@pytest.mark.parametrize(
    "method,target",
    [
        ("POST", "/auth/login"),
        ("POST", "/auth%2Flogin"),
        ("POST", "/AUTH/LOGIN"),
        ("POST", "//auth//login"),
        ("POST", "/auth/./login"),
        ("POST", "/auth/%6cogin"),
        ("POST", "http://127.0.0.1/auth/login"),
        ("POST", "/auth/login;x=1"),
        ("POST", "/auth/login%3Bx=1"),
        ("POST", "/auth/login%00"),
        ("POST", "/auth/login%20"),
        ("POST", "/auth/login."),
        ("POST", "/auth/login%2e"),
        ("POST", "/auth/x/../login"),
        ("POST", "/auth/%2e%2e/auth/login"),
        ("POST", "/auth\\login"),
        ("POST", "/auth/login#frag"),
        ("POST", "/auth/login//"),
        ("POST", "/auth/login%2F"),
        ("POST", "/auth/login/."),
        ("POST", "/%61uth/login"),
        ("POST", "/auth/login%09"),
        ("POST", "/auth/LOG%49N"),
        ("post", "/auth/login"),
        ("HEAD", "/page"),
        ("GET", "/page?x=1"),
    ],
)
def test_no_spelling_reaches_the_handler_past_its_limit(server, method, target):
    _, port = server
    statuses = reached(port, method, target)
    handled = statuses.count(200)
    # Whatever the framework does with this spelling (route it, 404 it), at most
    # the limit's 3 requests reach a handler, and the rest are 429.
    assert handled <= 3, statuses
    if handled:
        assert statuses.count(429) == len(statuses) - handled, statuses


def test_a_rule_under_a_wildcard_first_segment_holds_on_every_tenant_and_spelling(server):
    # `GET /{tenant}/reports/**`: no route serves these (404), but the limit
    # holds before routing, on every tenant's path and spelling as one quota.
    _, port = server
    xff = fresh_client()
    targets = ["/acme/reports/q1", "/ACME/Reports/q1", "/globex/reports/x/y", "//initech//reports", "/acme/reports%2Fq3"] * 2
    statuses = [raw(port, "GET", t, [("X-Forwarded-For", xff)])[0] for t in targets]
    assert statuses.count(429) == len(targets) - 3, statuses
    # Paths no rule names are not limited, the root included.
    for target in ["/acme/other", "/", "/reports"]:
        statuses = [raw(port, "GET", target, [("X-Forwarded-For", xff)])[0] for _ in range(5)]
        assert 429 not in statuses, (target, statuses)


def test_a_spoofed_forwarded_header_is_ignored(server):
    _, port = server
    xff = fresh_client()
    statuses = [
        raw(port, "POST", "/auth/login", [("Forwarded", f"for=203.0.113.{i}"), ("X-Forwarded-For", xff)])[0]
        for i in range(20)
    ]
    assert statuses.count(200) == 3, statuses


def test_an_underscored_copy_of_a_header_neither_moves_a_client_nor_hides_a_key(server):
    """Some proxies pass `X_Forwarded_For` through as the client sent it (nginx
    and gunicorn drop names with underscores; HAProxy and others do not), and
    Django under ASGI folds it into `X-Forwarded-For` (both are
    HTTP_X_FORWARDED_FOR): a client naming a new address in it each time must
    not get a new quota, nor hide a revoked key as `X_Api_Key`."""
    kind, port = server
    xff = fresh_client()
    statuses = [
        raw(port, "POST", "/auth/login", [("X-Forwarded-For", xff), ("X_Forwarded_For", f"203.0.113.{i}")])[0]
        for i in range(8)
    ]
    assert statuses.count(200) <= 3 and statuses.count(200) + statuses.count(429) + statuses.count(400) == 8, (kind, statuses)
    status, _, body = raw(port, "GET", "/page", [("X-Forwarded-For", fresh_client()), ("X_Api_Key", "sk_revoked")])
    assert status in (400, 403) or json.loads(body)["key"] is None, (kind, status, body)


def test_the_first_copy_of_a_repeated_api_key_is_the_one(server):
    kind, port = server
    xff = fresh_client()
    status, _, body = raw(port, "GET", "/page", [("X-Forwarded-For", xff), ("x-api-key", "sk_revoked"), ("x-api-key", "junk")])
    # Starlette reads the first copy; gunicorn joins them ("sk_revoked,junk") and
    # the engine refuses a joined value holding a deny-listed key.
    assert status == 403, (kind, body)


def test_a_non_token_method_is_400_not_500(server):
    kind, port = server
    status, _, _ = raw(port, "M-SEARCH", "/page", [("X-Forwarded-For", fresh_client())])
    assert status != 500, kind


def test_credential_stuffing_from_many_addresses_is_held_per_username(server):
    """One password each for a victim's account, from a botnet's addresses,
    the username spelled as logins compare names (case, spaces, escapes), as
    JSON or a form, with a length or chunked. The login handler echoes the
    username it parsed: the body still reaches it."""
    import json

    kind, port = server
    form = "application/x-www-form-urlencoded"
    attempts = [
        ("application/json", b'{"username":"victim","password":"123456"}', False),
        (form, b"username=Victim&password=password", False),
        ("application/json", b'{"password":"qwerty","username":" VICTIM "}', True),
        (form, b"password=letmein&username=%20victim%20", False),
        ("application/json; charset=utf-8", b'{"username":"vict\\u0069m"}', False),
        (form, b"username=VICTIM", True),
    ]
    answers = [
        raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", t)], body, chunked)
        for t, body, chunked in attempts
    ]
    statuses = [a[0] for a in answers]
    reached = [json.loads(a[2])["username"] for a in answers if a[0] == 200]
    # Exactly the victim's 3 attempts reached the login. (Django reads no
    # chunked body: there the view sees no username, nor does the rule.)
    on_victim = [u for u in reached if u is not None and u.strip().lower() == "victim"]
    assert len(on_victim) == 3 and len(on_victim) + reached.count(None) == len(reached), (kind, statuses, reached)
    if kind != "django":
        assert statuses == [200, 200, 200, 429, 429, 429], (kind, statuses)
    # A field named twice is refused: frameworks disagree on which copy wins;
    # so is one that is no name (a NoSQL operator, a list, a boolean), which
    # must not let an attacker past the rule.
    for t, body in [
        (form, b"username=decoy&username=victim"),
        ("application/json", b'{"username":"decoy","username":"victim"}'),
        ("application/json", b'{"username":{"$ne":null},"password":"x"}'),
        ("application/json", b'{"username":["victim"]}'),
        ("application/json", b'{"username":true}'),
        # Python's json.loads reads JSON in UTF-16 and UTF-32 (the handlers
        # here do): refused, never a login past the rule.
        ("application/json", '{"username":"victim"}'.encode("utf-16-le")),
        ("application/json", '{"username":"victim"}'.encode("utf-16")),
        ("application/json", '{"username":"victim"}'.encode("utf-32-be")),
        # Django decodes a form in its declared charset.
        (form + "; charset=utf-16-le", b"username=%76%00%69%00%63%00%74%00%69%00%6d%00"),
    ]:
        status, _, _ = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", t)], body)
        assert status == 400, (kind, body)
    # A UTF-8 BOM, which json.loads skips: the victim's name, held.
    status, _, _ = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", "application/json")],
                       b'\xef\xbb\xbf{"username":"victim"}')
    assert status == 429, (kind, status)
    # The login as multipart/form-data (what fetch sends for a FormData;
    # Django, Flask and Starlette read it into their forms): the victim's
    # name, held; a name given the RFC 2231 way is refused.
    multipart = "multipart/form-data; boundary=XyZ"
    part = 'Content-Disposition: form-data; name="password"\r\n\r\nx\r\n--XyZ\r\nContent-Disposition: form-data; {}\r\n\r\nVictim'
    for params, want in [('name="username"', 429), ("name*=utf-8''username", 400)]:
        body = ("--XyZ\r\n" + part.format(params) + "\r\n--XyZ--\r\n").encode()
        status, _, _ = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", multipart)], body)
        assert status == want, (kind, params, status)
    # Another account has its attempts; a body past 64 KiB is refused whole.
    other = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", form)], b"username=alice")
    assert other[0] == 200 and json.loads(other[2])["username"] == "alice", (kind, other)
    padded = json.dumps({"username": "victim", "pad": "x" * 70_000}).encode()
    status, _, body = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", "application/json")], padded)
    assert (status, body) == (413, b'{"error":"payload_too_large"}'), (kind, status, body[:200])


def test_no_shape_of_a_login_body_gets_a_victims_name_past_its_limit(server):
    """Once a victim's 3 attempts are spent, an attacker shapes the body so
    that the app still reads the victim's name while the rule might not:
    Python's JSON extensions, JSON under a form's type (Django's and Flask's
    handlers here read JSON whatever the type, as `json.loads(request.body)`
    does), a boundary given twice or inside a quoted parameter or the RFC 2231
    way, a comment after a part's name, a charset the frameworks decode in, a
    type given twice, a compressed body.
    Each is held (429) or refused (400): no handler sees the victim's name."""
    import gzip
    import json

    kind, port = server
    victim = "target-of-shapes"
    for _ in range(3):
        status, _, _ = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", "application/json")],
                           json.dumps({"username": victim}).encode())
        assert status == 200, (kind, status)
    text = json.dumps({"username": victim, "password": "x"})

    def part(cd: str, value: str = victim, b: str = "XyZ") -> bytes:
        return f"--{b}\r\nContent-Disposition: {cd}\r\n\r\n{value}\r\n--{b}--\r\n".encode()

    form, multipart = "application/x-www-form-urlencoded", "multipart/form-data; boundary=XyZ"
    nested = "[" * 200 + "]" * 200
    shapes = [
        ("application/json", f'{{"username":"{victim}","password":NaN}}'.encode()),
        ("application/json", f'{{"password":-Infinity,"username":"{victim}"}}'.encode()),
        ("application/json", f'{{"username":"{victim}","x":{nested}}}'.encode()),
        (form, text.encode()),
        (multipart, text.encode()),
        ("multipart/form-data; boundary=XyZ; boundary=ABC", part('form-data; name="username"', b="ABC")),
        ('multipart/form-data; x="a;boundary=ABC"; boundary=XyZ', part('form-data; name="username"')),
        ("multipart/form-data; boundary*=utf-8''XyZ", part('form-data; name="username"')),
        (multipart, part('form-data; name="username" (the login)')),
        (multipart, part("form-data; name=username x")),
        # Text before the first delimiter, none at all, text after the last:
        # Django reads each as a part.
        (multipart, b'Content-Disposition: form-data; name="username"\r\n\r\n' + victim.encode()),
        (multipart, b"preamble\r\n" + part('form-data; name="x"') + b'Content-Disposition: form-data; name="username"\r\n\r\n' + victim.encode()),
        (multipart, part('form-data; name="x"') + b'Content-Disposition: form-data; name="username"\r\n\r\n' + victim.encode() + b"\r\n"),
        (form, text.encode("utf-16")),
        # A second type: servers give the app the first, the last or both.
        ("text/plain\r\nContent-Type: application/x-www-form-urlencoded", f"username={victim}".encode()),
        ("application/x-www-form-urlencoded\r\nContent-Type: text/plain", f"username={victim}".encode()),
        # Compressed (Express's parsers inflate it; an app or proxy may too).
        ("application/json\r\nContent-Encoding: gzip", gzip.compress(text.encode())),
        ("multipart/form-data; boundary=XyZ; charset=utf-16-le",
         b"--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n" + victim.encode("utf-16-le") + b"\r\n--XyZ--\r\n"),
    ]
    breaches = []
    for content_type, body in shapes:
        status, _, answer = raw(port, "POST", "/auth/login", [("X-Forwarded-For", fresh_client()), ("Content-Type", content_type)], body)
        read = json.loads(answer)["username"] if status == 200 else None
        if status not in (200, 400, 429) or (isinstance(read, str) and read.strip().lower() == victim):
            breaches.append((content_type, body[:60], status))
    assert not breaches, (kind, breaches)


def test_garbage_and_huge_headers_get_an_answer(server):
    _, port = server
    status, _, _ = raw(port, "GET", "/page", [("X-Forwarded-For", "garbage, " + fresh_client()), ("x-big", "a" * 6000)])
    assert status in (200, 429, 431), status


# Behind nginx over a Unix socket (`proxy_pass http://unix:/run/app.sock`, the
# usual gunicorn deployment): the server reports no peer address (uvicorn's
# client is None, gunicorn's REMOTE_ADDR empty). Unless `unix:` is trusted,
# every such request is one client, `-`; with it, the proxy's header names
# each client, and a client's own X-Forwarded-For text (to the left of what the
# proxy appends) changes nothing.
@pytest.fixture(params=[("uvicorn", False), ("uvicorn", True), ("gunicorn", False), ("gunicorn", True)],
                ids=lambda p: f"{p[0]}-{'unix-trusted' if p[1] else 'untrusted'}", scope="module")
def unix_server(request, tmp_path_factory):
    kind, trusted = request.param
    pytest.importorskip(kind)
    pytest.importorskip("starlette" if kind == "uvicorn" else "flask")
    d = tmp_path_factory.mktemp(f"{kind}-unix")
    (d / "policy.toml").write_text(POLICY)
    app = textwrap.dedent(ASGI_APP if kind == "uvicorn" else WSGI_APP)
    (d / "app.py").write_text(app.replace('trusted_proxies=["127.0.0.1"]', f"trusted_proxies={['unix:'] if trusted else []}"))
    sock = str(d / "app.sock")
    if kind == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "app:app", "--uds", sock, "--no-proxy-headers", "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "gunicorn", "app:app", "-b", f"unix:{sock}", "-w", "1", "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(d)}
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{kind} did not start on {sock}")
            time.sleep(0.05)
    yield trusted, sock
    _stop(proc)


def unix_status(sock: str, target: str, xff: str) -> int:
    request = f"POST {target} HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock)
        s.sendall(request.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_server_on_a_unix_socket_believes_its_proxy_only_when_unix_is_trusted(unix_server):
    trusted, sock = unix_server
    # Four clients, as nginx reports them, each with a spoofed hop of its own.
    statuses = [unix_status(sock, "/auth/login", f"203.0.113.{i}, 198.51.100.{i}") for i in range(1, 5)]
    if not trusted:
        # One client, `-`: limited together (never unlimited).
        assert statuses == [200, 200, 200, 429], statuses
        return
    assert statuses == [200] * 4, statuses
    # One client whose own header text varies: still one client, held to 3.
    statuses = [unix_status(sock, "/auth/login", f"203.0.113.{i}, 198.51.100.9") for i in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429], statuses


# JWT attacks (tests/policies/jwt_attacks.toml): GET /me is limited per
# verified subject (3/min) and per address for everyone else (2/min); only
# RS256 tokens by the issuer's key (core/tests/keys) verify. Each forgery
# claims a subject of its own, so one keyed on its claim would get a fresh
# quota and reach the handler past the address's limit.

JWT_POLICY = (pathlib.Path(__file__).resolve().parents[3] / "tests" / "policies" / "jwt_attacks.toml").read_text()
KEYS = pathlib.Path(__file__).resolve().parents[3] / "core" / "tests" / "keys"
ISSUER = "https://auth.example.com"


@pytest.fixture(params=KINDS, scope="module")
def jwt_server(request, tmp_path_factory):
    pytest.importorskip("jwt")  # PyJWT signs the tests' tokens
    kind = request.param
    d = tmp_path_factory.mktemp(f"{kind}-jwt")
    (d / "policy.toml").write_text(JWT_POLICY)
    (d / "rsa_public.pem").write_bytes((KEYS / "rsa_public.pem").read_bytes())
    with _serve(kind, d) as port:
        yield kind, port


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _encode(header: dict, claims: dict, sign) -> str:
    """A token put together by hand, as an attacker does: `sign` gets the signing input."""
    import json

    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _claims(sub: str, **over) -> dict:
    return {"sub": sub, "iss": ISSUER, "aud": "api", "exp": int(time.time()) + 600, **over}


def _issued(sub: str, **over) -> str:
    """A token signed by the issuer's key (valid unless `over` spoils a claim)."""
    import jwt

    return jwt.encode(_claims(sub, **over), (KEYS / "rsa_private.pem").read_bytes(), algorithm="RS256", headers={"kid": "main"})


def _hmac(secret: bytes):
    import hashlib
    import hmac

    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def _forgeries(sub) -> List[Tuple[str, str]]:
    """Tokens an attacker can make without the issuer's key, each claiming
    `sub(i)`; and tokens the issuer signed whose claims must still refuse them."""
    import json

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    own_pem = own.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    own_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(own.public_key()))
    public_pem = (KEYS / "rsa_public.pem").read_bytes()
    unsigned = lambda message: b""  # noqa: E731
    real = _issued("someone-else")
    head, body, signature = real.split(".")
    tokens = [
        ("alg none", lambda c: _encode({"alg": "none", "typ": "JWT"}, c, unsigned)),
        ("alg None", lambda c: _encode({"alg": "None", "typ": "JWT"}, c, unsigned)),
        ("alg NONE, kid main", lambda c: _encode({"alg": "NONE", "kid": "main"}, c, unsigned)),
        ("alg none with a real signature", lambda c: _encode({"alg": "none"}, c, unsigned) + signature),
        # Algorithm confusion: HMAC keyed with the public key's PEM, which
        # anyone can download.
        ("HS256 keyed with the RSA public key", lambda c: _encode({"alg": "HS256", "kid": "main"}, c, _hmac(public_pem))),
        ("HS256 keyed with the public key, no kid", lambda c: _encode({"alg": "HS256"}, c, _hmac(public_pem))),
        ("HS256 keyed with nothing", lambda c: _encode({"alg": "HS256", "kid": "main"}, c, _hmac(b""))),
        ("kid path traversal", lambda c: _encode({"alg": "HS256", "kid": "../../../../../../dev/null"}, c, _hmac(b""))),
        ("RS256 by another key", lambda c: jwt.encode(c, own_pem, algorithm="RS256", headers={"kid": "main"})),
        ("RS256 by another key, embedded as jwk",
         lambda c: jwt.encode(c, own_pem, algorithm="RS256", headers={"kid": "main", "jwk": own_jwk})),
        ("RS256 by another key, fetched from jku",
         lambda c: jwt.encode(c, own_pem, algorithm="RS256", headers={"kid": "evil", "jku": "http://127.0.0.1:9/jwks.json"})),
        ("PS256 by the issuer's key (not on the allow-list)",
         lambda c: jwt.encode(c, (KEYS / "rsa_private.pem").read_bytes(), algorithm="PS256", headers={"kid": "main"})),
        ("the signature stripped", lambda c: _encode({"alg": "RS256", "kid": "main"}, c, unsigned)),
        ("another token's signature", lambda c: _encode({"alg": "RS256", "kid": "main"}, c, unsigned) + signature),
        ("another token's header and signature", lambda c: f"{head}.{_b64(json.dumps(c).encode())}.{signature}"),
        ("issued, expired", lambda c: _issued(c["sub"], exp=int(time.time()) - 3600)),
        ("issued, not yet valid", lambda c: _issued(c["sub"], nbf=int(time.time()) + 3600)),
        ("issued, a string exp", lambda c: _issued(c["sub"], exp=str(int(time.time()) + 600))),
        ("issued by another issuer", lambda c: _issued(c["sub"], iss="https://evil.example")),
        ("issued for another audience", lambda c: _issued(c["sub"], aud="another-api")),
        ("three parts of garbage", lambda c: "eyJhbGciOiJSUzI1NiJ9.!!!." + c["sub"]),
        ("huge", lambda c: _encode({"alg": "RS256", "kid": "main"}, {**c, "pad": "x" * 12000}, unsigned) + signature),
    ]
    return [(name, make(_claims(sub(i)))) for i, (name, make) in enumerate(tokens)]


def _me(port: int, xff: str, authorization: str = "", path: str = "/me") -> int:
    return _get(port, path, xff, authorization)[0]


def _get(port: int, path: str, xff: str, authorization: str = "") -> Tuple[int, Dict[str, str], bytes]:
    headers = [("X-Forwarded-For", xff)]
    if authorization:
        headers.append(("Authorization", authorization))
    return raw(port, "GET", path, headers)


def test_forged_tokens_fall_to_the_address_limit(jwt_server):
    kind, port = jwt_server
    xff = fresh_client()
    forged = _forgeries(lambda i: f"mallory-{i}")
    statuses = [_me(port, xff, f"Bearer {token}") for _, token in forged]
    # Anonymous all of them: the address's 2, then 429 (431 if a server refuses the huge one).
    assert statuses[:2] == [200, 200], (kind, list(zip(statuses, [n for n, _ in forged])))
    assert all(s in (429, 431) for s in statuses[2:]), (kind, list(zip(statuses, [n for n, _ in forged])))


def test_a_forged_or_tampered_token_never_spends_its_victims_quota(jwt_server):
    kind, port = jwt_server
    victim = _issued("alice")
    home = fresh_client()
    statuses = [_me(port, home, f"Bearer {victim}")]  # verified once, and cached
    head, body, signature = victim.split(".")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    hs256 = _b64(b'{"alg":"HS256","kid":"main"}')
    tampered = [
        f"{head}.{body}.{flipped}",
        f"{head}.{body}.",
        f"{head}.{body}",
        f"{hs256}.{body}.{signature}",
        f"{head}.{_b64(body.encode())}.{signature}",
    ]
    # Each from an address of its own: the address's limit lets them through,
    # and none may count on alice's 3.
    for token in tampered + [t for _, t in _forgeries(lambda i: "alice")]:
        _me(port, fresh_client(), f"Bearer {token}")
    statuses += [_me(port, home, f"Bearer {victim}") for _ in range(3)]
    assert statuses == [200, 200, 200, 429], (kind, statuses)


def test_a_verified_subject_has_one_limit_whatever_its_address_and_spelling(jwt_server):
    kind, port = jwt_server
    token = _issued("carol")
    spellings = [f"Bearer {token}", f"bearer {token}", f"BEARER   {token} ", f"Bearer {token}"]
    statuses = [_me(port, fresh_client(), s) for s in spellings]
    assert statuses == [200, 200, 200, 429], (kind, statuses)
    # Another subject, from the same addresses' network, has a limit of its own.
    assert _me(port, fresh_client(), f"Bearer {_issued('dave')}") == 200, kind


def test_spending_its_own_verification_budget_never_frees_a_subject_of_its_limit(jwt_server):
    """An attacker with an account of its own mints fresh tokens. Were a token
    past its network's verification budget (5 failed checks a minute) taken
    for no token, /export (limited per subject, and the app serving only
    signed-in users) would serve the attacker's account without limit."""
    import json

    kind, port = jwt_server
    xff = fresh_client()
    for _, token in _forgeries(lambda i: f"mallory-{i}")[:5]:
        _me(port, xff, f"Bearer {token}", path="/export")
    answers = [_get(port, "/export", xff, f"Bearer {_issued('mallory', jti=f'a{i}')}") for i in range(4)]
    assert [status for status, _, _ in answers] == [429] * 4, kind
    status, headers, body = answers[0]
    assert 1 <= int(headers["retry-after"]) <= 12, (kind, headers)
    assert json.loads(body) == {"error": "rate_limited", "retry_after": int(headers["retry-after"]), "rule": None}, kind
    # From an address with budget left, the same subject's fresh tokens are
    # checked, and held to the subject's 2.
    other = fresh_client()
    statuses = [_me(port, other, f"Bearer {_issued('mallory', jti=f'b{i}')}", path="/export") for i in range(3)]
    assert statuses == [200, 200, 429], (kind, statuses)
