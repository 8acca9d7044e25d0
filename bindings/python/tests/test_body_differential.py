"""The engine reads a login's username from a multipart or URL-encoded body
the way the frameworks' own parsers do, or refuses the body: never a name
the app reads while the engine reads another, or none (which would let an
attacker past the per-username rule by the shape of the body alone).

Thousands of bodies built from the pieces attackers vary (parameter spelling,
quotes, escapes, comments, RFC 2231 names, files, transfer encodings,
charsets, delimiters inside lines, bare LFs, repeated fields, the request's
type and its parameters, JSON sent as a form), each given to Django's,
Werkzeug's and Starlette's (python-multipart's) parsers, to an app that reads
JSON whatever the type says, and to the engine. Seeded: the same bodies every
run.
"""
import io
import json
import os
import random
import subprocess
import sys

import pytest

from floodgate import Engine, InvalidRequestError

POLICY = """
[[rule]]
name = "login-user"
match = "POST /login"
key = "body:username"
quotas = ["1000000/s"]
"""

BOUNDARY = "XyZ"
NAMES = ['name="username"', "name=username", 'NAME="username"', 'name = "username"', 'name="Username"',
         'name="user\\"name"', 'name="username\\\\"', "name*=utf-8''username", 'name="x"; name="username"',
         'foo="a;b"; name="username"', 'foo=a\\\\"; name=username', 'name="username"; filename="u.txt"',
         'x="1";\r\n name="username"', 'name="username"; x="\udce9"',
         'name="password"', 'name="usernam"', 'name="username ', "form-data"]
VALUES = ["victim", "Victim ", " VICTIM", "vi\r\nctim", "alice--XyZ", "", "bob\r\n--XyZ", "caf\u00e9"]
EXTRA = ["", "Content-Type: text/plain", "Content-Type: text/plain; charset=utf-8",
         "Content-Type: text/plain; charset=utf-16", "Content-Transfer-Encoding: base64",
         "X-Other: 1\nContent-Disposition: form-data; name=\"username\"",
         "Content-Disposition: form-data; name=\"username\""]


def multipart_body(rng):
    parts = []
    for _ in range(rng.randint(1, 3)):
        cd = "Content-Disposition: form-data; " + (NAMES[0] if rng.random() < 0.6 else rng.choice(NAMES))
        headers = [cd] + ([rng.choice(EXTRA)] if rng.random() < 0.4 else [])
        rng.shuffle(headers)
        sep = "\r\n\r\n" if rng.random() < 0.9 else "\r\n"
        parts.append("\r\n".join(h for h in headers if h) + sep + rng.choice(VALUES))
    # A delimiter inside a line, one with padding, a line that only starts
    # with the delimiter (Django splits there, the others do not).
    joiner = "\r\n--XyZ\r\n" if rng.random() < 0.85 else rng.choice(["--XyZ\r\n", "\r\n--XyZ \r\n", "\r\n--XyZjunk\r\n"])
    text = rng.choice(["", "", "", "preamble\r\n", "\r\n"]) + "--XyZ\r\n" + joiner.join(parts)
    text += rng.choice(["\r\n--XyZ--\r\n", "\r\n--XyZ--\r\n", "\r\n--XyZ--", "", "\r\n--XyZ--\r\nepilogue",
                        '\r\n--XyZ--\r\nContent-Disposition: form-data; name="username"\r\n\r\nvictim\r\n'])
    if rng.random() < 0.03:
        # No delimiter at all: Django reads the whole body as a part.
        text = parts[0]
    return text.encode("utf-8", "surrogateescape")


# The request's type as attackers vary it: parameters repeated, quoted,
# hidden in another's quotes, RFC 2231, comments, other charsets.
MULTIPART_TYPES = ["multipart/form-data; boundary=XyZ", 'multipart/form-data; boundary="XyZ"', "Multipart/Form-Data;boundary=XyZ",
                   "multipart/form-data; boundary=XyZ; boundary=ABC", "multipart/form-data; boundary=ABC; boundary=XyZ",
                   'multipart/form-data; x="a;boundary=ABC"; boundary=XyZ', "multipart/form-data; boundary*=utf-8''XyZ",
                   "multipart/form-data; boundary=XyZ (c)", "multipart/form-data; boundary = XyZ", 'multipart/form-data; boundary="XyZ',
                   "multipart/form-data; boundary=XyZ; charset=utf-16-le", "multipart/form-data; boundary=XyZ; charset=latin-1",
                   "multipart/form-data;; boundary=XyZ;", "multipart/form-data, text/plain; boundary=XyZ", "multipart/form-data"]
FORM_TYPES = ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=UTF-8",
              "Application/X-WWW-Form-Urlencoded; charset=\"utf-8\"", "application/x-www-form-urlencoded; charset=utf-8; charset=latin-1",
              "application/x-www-form-urlencoded; charset*=utf-8''latin-1", "application/x-www-form-urlencoded (c)",
              "application/x-www-form-urlencoded; charset=utf-16-le", "text/plain", "application/json"]
# JSON as attackers shape it beside or instead of a form: Python's extensions
# (NaN, Infinity), escapes, duplicates, wide encodings, cut or trailing text.
JSON_BODIES = ['{"username":"victim"}', '{"username":"victim","password":NaN}', '{"password":-Infinity,"username":"victim"}',
               '{"user\\u006eame":"victim"}', '{"username":"a","username":"victim"}', '{"username":"victim"} x',
               '{"username":"victim"', ' {"username":"victim","x":"&username=decoy"}', '{"x":"&username=victim"}',
               '{"username":["victim"]}', '{"username":"victim","x":[[[[1]]]]}']


def json_body(rng):
    text = rng.choice(JSON_BODIES)
    return text.encode(rng.choice(["utf-8", "utf-8", "utf-8", "utf-16", "utf-16-le", "utf-8-sig"]))


def form_body(rng):
    pairs = []
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(["username", "user%6Eame", "user+name", "Username", "username%00", "password", "%75sername"])
        value = rng.choice(["victim", "Victim", "%20victim", "vi%ctim", "v+i", "", "%ff"])
        pairs.append(key + ("=" + value if rng.random() < 0.9 else ""))
    return "&".join(pairs).encode()


def engine_reads(engine, content_type, body):
    """What the engine keys the rule on: ("refused",), or ("key", k), or ("none",)."""
    try:
        v = engine.check_request(method="POST", path="/login", client_ip="203.0.113.5",
                                 headers=[("content-type", content_type)], body=body)
    except InvalidRequestError:
        return ("refused",)
    return ("key", v.identity) if v.rule == "login-user" else ("none",)


def django_reads(content_type, body):
    """What `request.POST` reads (its type, charset and parser chosen as
    Django chooses them)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEFAULT_CHARSET="utf-8", DATA_UPLOAD_MAX_NUMBER_FIELDS=1000, ALLOWED_HOSTS=["*"])
        django.setup()
    from django.core.handlers.wsgi import WSGIRequest

    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body), "PATH_INFO": "/login", "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    request = WSGIRequest(environ)
    try:
        values = request.POST.getlist("username")
    except Exception:  # noqa: BLE001 - any parse failure: the app reads nothing
        return None
    for _, f in request.FILES.lists():
        for upload in f:
            upload.close()
    return values


def werkzeug_reads(content_type, body):
    from werkzeug.formparser import parse_form_data

    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    try:
        _, form, files = parse_form_data(environ, silent=False)
    except Exception:  # noqa: BLE001 - any parse failure: the app reads nothing
        return None
    for _, f in files.items(multi=True):
        f.close()
    return form.getlist("username")


def starlette_reads(content_type, body):
    """What Starlette's `await request.form()` reads (and so FastAPI's `Form`):
    python-multipart's parsers, chosen by the type as Starlette chooses."""
    import asyncio

    from starlette.requests import Request

    async def read():
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/login", "query_string": b"",
                 "headers": [(b"content-type", content_type.encode("latin-1"))]}
        form = await Request(scope, receive).form()
        values = form.getlist("username")
        await form.close()
        return values

    try:
        return asyncio.run(read())
    except Exception:  # noqa: BLE001 - any parse failure: the app reads nothing
        return None


def json_reads(content_type, body):
    """What an app reads that parses JSON whatever the type says
    (`json.loads(request.body)`, Flask's `get_json(force=True)`)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or "username" not in data:
        return None
    value = data["username"]
    return [value] if isinstance(value, str) else None


def agrees(engine_read, app_values):
    """Whether the engine holds what the app reads: it refused the body, or
    keyed exactly the one name the app reads. When the app reads no usable
    name, anything goes (counting a name no login can use harms nobody);
    when it reads two copies, the engine must refuse (the app takes one)."""
    if engine_read == ("refused",):
        return True
    names = [v for v in (app_values or []) if v.strip()]
    if len(names) > 1:
        return False
    if not names:
        return True
    return engine_read == ("key", names[0].strip().lower())


def run(kind):
    """The disagreements over the seeded bodies of `kind`, and how many the
    engine refused and keyed."""
    engine = Engine.from_toml(POLICY)
    rng = random.Random(20261207)
    disagreements = []
    refused = keyed = 0
    # Most multipart bodies hold some shape that is refused: more of them, so
    # that enough are read.
    for _ in range(12000 if kind == "multipart" else 3000):
        if kind == "multipart":
            content_type = MULTIPART_TYPES[0] if rng.random() < 0.7 else rng.choice(MULTIPART_TYPES)
            body = multipart_body(rng) if rng.random() < 0.9 else json_body(rng)
            if "ABC" in content_type and rng.random() < 0.5:
                body = body.replace(b"--XyZ", b"--ABC")
        else:
            content_type = FORM_TYPES[0] if rng.random() < 0.7 else rng.choice(FORM_TYPES)
            body = form_body(rng) if rng.random() < 0.8 else json_body(rng)
        ours = engine_reads(engine, content_type, body)
        refused += ours == ("refused",)
        keyed += ours[0] == "key"
        for parser, read in (("django", django_reads), ("werkzeug", werkzeug_reads), ("starlette", starlette_reads),
                             ("json.loads", json_reads)):
            theirs = read(content_type, body)
            if not agrees(ours, theirs):
                disagreements.append(repr((parser, body, ours, theirs)))
    return {"disagreements": disagreements, "refused": refused, "keyed": keyed}


@pytest.mark.parametrize("kind", ["multipart", "form"])
def test_the_engine_reads_what_the_frameworks_read_or_refuses(kind):
    pytest.importorskip("django")
    pytest.importorskip("werkzeug")
    pytest.importorskip("starlette")
    pytest.importorskip("python_multipart")
    # In a process of its own: Django's parser needs settings, which would
    # then be this process's for the other Django tests. (Werkzeug leaves the
    # temporary file of a part open when a body fails to parse: collected
    # there, not here.)
    code = f"import json, test_body_differential as t; print(json.dumps(t.run({kind!r})))"
    out = subprocess.run([sys.executable, "-W", "ignore::ResourceWarning", "-c", code],
                         cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["disagreements"], result["disagreements"][:5]
    # The generator reaches both outcomes.
    assert result["refused"] > 0 and result["keyed"] > 0, result
