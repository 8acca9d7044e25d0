"""The Flask extension (floodgate.flask) over real HTTP, gunicorn with one
worker: its answers go through the app's after_request functions (Flask-CORS,
a request id), CORS preflights are charged unless the app says not, the app's own
before_request functions run only for allowed requests, and a view that
raises is settled as a failure. (The attack battery and the request lifecycle
also run against it: test_attacks.py, test_lifecycle.py, kind "flask".)"""

from __future__ import annotations

import json

import pytest

from test_workers import _call, _stop, _wait_for_workers, start_server

POLICY = """
[[rule]]
name = "page"
match = "/page"  # any method: a preflight too, were it checked
key = "ip"
algorithm = "fixed_window"
quotas = ["3/hour"]

[[rule]]
name = "hand-made"
match = "/hand-made"
key = "ip"
algorithm = "fixed_window"
quotas = ["2/hour"]

[[rule]]
name = "boom"
match = "/boom"
key = "ip"
algorithm = "fixed_window"
quotas = ["2/hour"]
count = "failures"
"""

APP = """
import flask
from flask_cors import CORS

from floodgate import Engine
from floodgate.flask import Floodgate

app = flask.Flask(__name__)
CORS(app, origins=["https://app.example"], expose_headers=["Retry-After", "RateLimit", "RateLimit-Policy"])
LOADS = {"page": 0}


@app.before_request
def load_user():
    # Registered before the extension, as an app's session or user loading
    # often is: still runs after the check, and only for allowed requests.
    if flask.request.method == "GET" and flask.request.path == "/page":
        LOADS["page"] += 1


@app.after_request
def request_id(response):
    response.headers["X-Request-Id"] = "rid-1"
    return response


@app.get("/page")
def page():
    return {"ok": True}


@app.get("/loads")
def loads():
    return dict(LOADS)


@app.route("/hand-made", methods=["GET", "OPTIONS"])
def hand_made():
    # A view answering OPTIONS itself: what it does is the app's, so a
    # preflight to it is checked like any request.
    return {"ok": True}


@app.get("/boom")
def boom():
    raise RuntimeError("boom")


@app.get("/health")
def health():
    return {"ok": True}


# Browsers' preflights uncharged (the default charges them: the last test).
Floodgate(app, Engine.from_file("policy.toml"), charge_preflights=False)
"""

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def flask_server(tmp_path_factory):
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask_cors")
    proc, port = start_server("gunicorn", APP, POLICY, tmp_path_factory.mktemp("flask-ext"), workers=1)
    try:
        _wait_for_workers(proc, port)
        yield port
    finally:
        _stop(proc)


def test_a_429_goes_through_the_apps_after_request_functions(flask_server):
    port = flask_server
    preflight = {"origin": ORIGIN, "access-control-request-method": "GET"}
    for _ in range(6):
        status, headers, _ = _call(port, "OPTIONS", "/page", preflight)
        assert (status, headers.get("access-control-allow-origin")) == (200, ORIGIN)
        assert "ratelimit" not in headers, "a preflight is not checked"
    replies = [_call(port, "GET", "/page", {"origin": ORIGIN}) for _ in range(4)]
    assert [r[0] for r in replies] == [200, 200, 200, 429], "the preflights charged nothing"
    for status, headers, _ in replies[:3]:
        assert headers["ratelimit-policy"] == '"page";q=3;w=3600'
        assert headers["x-request-id"] == "rid-1"
    status, headers, body = replies[3]
    # Flask-CORS and the app's own after_request decorated the 429: the page's
    # code can read it and its headers.
    assert headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "ratelimit", "ratelimit-policy"} <= exposed
    assert headers["x-request-id"] == "rid-1"
    assert headers["content-type"] == "application/json"
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit"].startswith('"page";r=0;')
    assert json.loads(body)["error"]
    # The app's before_request ran for the three allowed GETs only.
    assert json.loads(_call(port, "GET", "/loads")[2]) == {"page": 3}


def test_a_view_that_raises_is_settled_as_a_failure(flask_server):
    port = flask_server
    # count = "failures", 2 an hour: each 500 counts, so the third is refused.
    statuses = [_call(port, "GET", "/boom")[0] for _ in range(3)]
    assert statuses == [500, 500, 429]


def test_an_exception_that_propagates_still_frees_the_place():
    """With exceptions propagated (Flask's testing mode, PROPAGATE_EXCEPTIONS)
    no response is made and no after_request function runs: the request's
    in-flight place is given back as the exception leaves the app (the
    extension's wrapper of ``app.wsgi_app``)."""
    flask = pytest.importorskip("flask")
    from floodgate import Engine
    from floodgate.flask import Floodgate

    app = flask.Flask(__name__)
    app.testing = True

    @app.get("/job")
    def job():
        if flask.request.args.get("fail"):
            raise RuntimeError("boom")
        return {"ok": True}

    policy = '[[rule]]\nname = "job"\nmatch = "/job"\nkey = "ip"\nquotas = ["100/s"]\nmax_in_flight = 1\n'
    Floodgate(app, Engine.from_toml(policy))
    client = app.test_client()
    for _ in range(3):
        with pytest.raises(RuntimeError):
            client.get("/job?fail=1")
    assert client.get("/job").status_code == 200, "each failed request gave its place back"


def test_a_preflight_to_a_view_of_its_own_is_checked(flask_server):
    """Leaving preflights alone holds only where Flask answers OPTIONS itself:
    an attacker's "preflight" to a view that handles OPTIONS is charged."""
    port = flask_server
    preflight = {"origin": ORIGIN, "access-control-request-method": "GET"}
    statuses = [_call(port, "OPTIONS", "/hand-made", preflight)[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_preflights_are_charged_by_default():
    """Preflights reach a Flask app (its before_request functions run for
    them), so by default they are checked like any request: two headers do
    not take a flood past the limit."""
    flask = pytest.importorskip("flask")
    pytest.importorskip("flask_cors")
    from flask_cors import CORS

    from floodgate import Engine
    from floodgate.flask import Floodgate

    app = flask.Flask(__name__)
    CORS(app, origins=[ORIGIN])

    @app.get("/page")
    def page():
        return {"ok": True}

    Floodgate(app, Engine.from_toml(POLICY.split("[[rule]]\nname = \"hand-made\"")[0]))
    client = app.test_client()
    preflight = {"origin": ORIGIN, "access-control-request-method": "GET"}
    statuses = [client.options("/page", headers=preflight).status_code for _ in range(3)]
    statuses += [client.get("/page", headers={"origin": ORIGIN}).status_code for _ in range(2)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_response_replaced_by_an_after_request_function_still_settles():
    """An after_request function that returns a new response object (here one
    registered before the extension, so it runs after the extension's): the
    response the server sends is the one closed, and the request's in-flight
    place is given back then."""
    flask = pytest.importorskip("flask")
    from floodgate import Engine
    from floodgate.flask import Floodgate

    app = flask.Flask(__name__)

    @app.after_request
    def rewrap(response):
        return flask.Response(response.get_data(), status=response.status_code, headers=dict(response.headers))

    @app.get("/job")
    def job():
        return {"ok": True}

    policy = '[[rule]]\nname = "job"\nmatch = "/job"\nkey = "ip"\nquotas = ["100/s"]\nmax_in_flight = 1\n'
    Floodgate(app, Engine.from_toml(policy))
    client = app.test_client()
    statuses = []
    for _ in range(3):
        r = client.get("/job")
        statuses.append(r.status_code)
        r.close()  # what a server does once the response is sent
    assert statuses == [200, 200, 200], "each request gave its place back"
