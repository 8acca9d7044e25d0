"""The request lifecycle over real HTTP: only failed logins count, the real cost
of a request replaces its estimate, and requests in flight are capped; FastAPI
under ``uvicorn --workers 2`` and Flask under ``gunicorn -w 2 --threads 8``, both
on the shared-memory store, settled by the middleware. Attacks are sent the way
an attacker sends them: many connections at once, before any response."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import pytest

import floodgate
from test_workers import _call, _stop, _table, _wait_for_workers, start_server

LOGIN_LIMIT = 5

POLICY = """
[store]
kind = "shared_memory"
path = "{table}"
max_keys = 65536

[[rule]]
name = "login"
match = "POST /login"
key = "header:x-username"
algorithm = "fixed_window"
quotas = ["{login}/hour"]
count = "failures"

[[rule]]
name = "slow"
match = "GET /slow"
key = "ip"
quotas = ["1000/s"]
max_in_flight = 2

[[rule]]
name = "graphql"
match = "POST /graphql"
key = "ip"
algorithm = "fixed_window"
quotas = ["100/hour"]
cost = 10
cost_from = "response"
"""

ASGI_APP = """
import asyncio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from floodgate import Engine
from floodgate.asgi import FloodgateMiddleware

app = FastAPI()


@app.post("/login")
async def login(request: Request):
    await asyncio.sleep(0.05)  # checking a password takes a while
    ok = request.headers.get("x-password") == "right"
    return JSONResponse({"ok": ok}, status_code=200 if ok else 401)


@app.get("/slow")
async def slow():
    await asyncio.sleep(1.0)
    return {"ok": True}


@app.post("/graphql")
async def graphql(cost: int):
    async def chunks():
        for _ in range(3):
            yield b"{}"
    return StreamingResponse(chunks(), headers={"Floodgate-Cost": str(cost)})


@app.get("/health")
async def health():
    return {"ok": True}


app.add_middleware(FloodgateMiddleware, engine=Engine.from_file("policy.toml"))
"""

WSGI_APP = """
import time
import flask
from floodgate import Engine
from floodgate.wsgi import FloodgateMiddleware

app = flask.Flask(__name__)


@app.post("/login")
def login():
    time.sleep(0.05)
    ok = flask.request.headers.get("x-password") == "right"
    return {"ok": ok}, 200 if ok else 401


@app.get("/slow")
def slow():
    time.sleep(1.0)
    return {"ok": True}


@app.post("/graphql")
def graphql():
    cost = flask.request.args["cost"]
    def chunks():
        for _ in range(3):
            yield "{}"
    return flask.Response(chunks(), headers={"Floodgate-Cost": cost})


@app.get("/health")
def health():
    return {"ok": True}


app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"))
"""


# The same with the Flask extension: settled when gunicorn closes the response.
FLASK_APP = WSGI_APP.replace("from floodgate.wsgi import FloodgateMiddleware", "from floodgate.flask import Floodgate").replace(
    'app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"))', 'Floodgate(app, Engine.from_file("policy.toml"))'
)


def _serve(kind: str, tmp_path):
    """``kind`` "flask": the Flask extension under gunicorn."""
    table = _table()
    app = {"uvicorn": ASGI_APP, "gunicorn": WSGI_APP, "flask": FLASK_APP}[kind]
    proc, port = start_server("gunicorn" if kind == "flask" else kind, app, POLICY.format(table=table, login=LOGIN_LIMIT), tmp_path, workers=2, threads=8)
    return proc, port, table


def _remaining(headers: dict) -> int:
    # RateLimit: "graphql";r=90;t=...
    field = headers["ratelimit"]
    return int(field.split(";r=", 1)[1].split(";", 1)[0])


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn", "flask"])
def test_lifecycle_over_http(kind, tmp_path):
    proc, port, table = _serve(kind, tmp_path)
    try:
        _wait_for_workers(proc, port)
        login = lambda user, pw: _call(port, "POST", "/login", {"x-username": user, "x-password": pw})[0]  # noqa: E731
        # Twenty successful logins: none counts.
        assert [login("alice", "right") for _ in range(20)] == [200] * 20
        # Credential stuffing: 40 guesses at once, before any response. Each is
        # charged on arrival, so exactly LOGIN_LIMIT reach the password check.
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            statuses = list(pool.map(lambda _: login("bob", "guess"), range(40)))
        assert statuses.count(401) == LOGIN_LIMIT, statuses
        assert statuses.count(429) == 40 - LOGIN_LIMIT
        assert login("bob", "right") == 429, "failures used the quota up"
        assert login("alice", "right") == 200

        # In flight: six slow requests at once, two places.
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: _call(port, "GET", "/slow"), range(6)))
        codes = sorted(a[0] for a in answers)
        assert codes == [200, 200, 429, 429, 429, 429], codes
        denied = [a for a in answers if a[0] == 429]
        assert all(a[1]["retry-after"] == "1" for a in denied)
        # Settled once done: the places are free again (settled after the
        # response has left, so possibly a moment after the client has it).
        deadline = time.monotonic() + 5
        while (status := _call(port, "GET", "/slow")[0]) == 429 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 200

        # The real cost of a streamed response replaces the estimate of 10.
        status, headers, body = _call(port, "POST", "/graphql?cost=40")
        assert (status, body) == (200, b"{}{}{}")
        assert "floodgate-cost" not in headers, "the cost header is removed"
        assert _remaining(headers) == 90, "charged the estimate on arrival"
        # WSGI settles at the iterable's close(), which gunicorn calls after the
        # response is on the wire: give it a moment before the next request.
        time.sleep(0.3)
        status, headers, _ = _call(port, "POST", "/graphql?cost=1")
        assert _remaining(headers) == 100 - 40 - 10
    finally:
        _stop(proc)
        if os.path.exists(table):
            os.unlink(table)


def test_settle_in_process():
    e = floodgate.Engine.from_toml(
        """
[[rule]]
name = "login"
match = "POST /login"
key = "ip"
algorithm = "fixed_window"
quotas = ["2/h"]
count = "failures"
failure_status = "401,403"
"""
    )
    check = lambda: e.check_request(method="POST", path="/login", client_ip="192.0.2.1", now=1.8e9)  # noqa: E731
    v = check()
    assert v.needs_settle
    e.settle(v, status=500, now=1.8e9)  # not a failure here: given back
    assert not v.needs_settle
    with pytest.raises(floodgate.AlreadySettledError) as err:
        e.settle(v, status=401)
    assert err.value.code == "already_settled"
    assert isinstance(err.value, ValueError)
    a, b = check(), check()
    assert a and b and not check()
    with pytest.raises(floodgate.InvalidRequestError):
        e.settle(a, status=700)
    with pytest.raises(floodgate.InvalidCostError):
        e.settle(a, status=200, cost=-3)
    with pytest.raises(floodgate.InvalidCostError):
        e.settle(a, status=200, cost=float("nan"))
    e.settle(a, status=200, now=1.8e9)
    assert check()
    denied = check()
    assert not denied.needs_settle
    e.settle(denied, status=429)  # nothing to settle: a no-op
    assert "floodgate_settled_total 2" in e.metrics()
