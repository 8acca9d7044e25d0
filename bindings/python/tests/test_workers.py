"""Several worker processes, as servers are deployed: FastAPI under
``uvicorn --workers 4`` and Flask under ``gunicorn -w 4``, hit over HTTP by one
client on many connections (the kernel spreads them over the workers).

On the shared-memory store the number of 200s equals the quota exactly; on the
in-process store each worker counts alone, so the same quota admits up to four
times as much (the drift this store exists to remove)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Optional, Sequence

import pytest

import floodgate

LIMIT = 150
REQUESTS = 1200
# Denials before a ban: the STRIKES-th denial bans the client for an hour.
STRIKES = 30

ASGI_APP = """
import os
from fastapi import FastAPI
from floodgate import Engine
from floodgate.asgi import FloodgateMiddleware

app = FastAPI()


@app.get("/api/items")
async def items():
    return {"pid": os.getpid()}


app.add_middleware(FloodgateMiddleware, engine=Engine.from_file("policy.toml"))
"""

WSGI_APP = """
import os
import flask
from floodgate import Engine
from floodgate.wsgi import FloodgateMiddleware

app = flask.Flask(__name__)


@app.get("/api/items")
def items():
    return {"pid": os.getpid()}


app.wsgi_app = FloodgateMiddleware(app.wsgi_app, Engine.from_file("policy.toml"))
"""


def policy(store: str, table: str, ban: bool = True) -> str:
    """One rule by address on ``store``, with a ban after STRIKES denials, or
    without (then the engine decides on its straight path for one rule by
    address, ``decide_lone``)."""
    head = f'[store]\nkind = "shared_memory"\npath = "{table}"\nmax_keys = 65536\n' if store == "shm" else ""
    rule = textwrap.dedent(
        f"""
        [[rule]]
        name = "api"
        match = "/api/**"
        key = "ip"
        quotas = ["{LIMIT}/hour"]
        """
    )
    if not ban:
        return head + rule
    return head + rule + textwrap.dedent(
        f"""
        [ban]
        after = {STRIKES}
        within = "1h"
        duration = "1h"
        status = 403
        """
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    return os.path.join(base, f"fg-pytest-{uuid.uuid4().hex}")


def _serve(kind: str, store: str, tmp_path, ban: bool = True):
    table = _table()
    app = ASGI_APP if kind == "uvicorn" else WSGI_APP
    proc, port = start_server(kind, app, policy(store, table, ban), tmp_path)
    return proc, port, table


def start_server(kind: str, app: str, policy_text: str, tmp_path, workers: int = 4, threads: int = 1,
                 preload: bool = False, args: Sequence[str] = ()):
    """Starts ``app`` (ASGI under uvicorn, WSGI under gunicorn) with ``policy_text``
    as ./policy.toml, on a free port: (process, port). ``preload``: gunicorn
    imports the app (and builds its engine) once, before forking the workers.
    ``args`` go to the server's command line."""
    (tmp_path / "policy.toml").write_text(policy_text)
    (tmp_path / "app.py").write_text(textwrap.dedent(app))
    port = _free_port()
    if kind == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", *args]
    else:
        cmd = [sys.executable, "-m", "gunicorn", "app:app", "-b", f"127.0.0.1:{port}", "-w", str(workers),
               "--threads", str(threads), "--log-level", "warning", *(["--preload"] if preload else []), *args]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    return proc, port


def _call(port: int, method: str, path: str, headers: Optional[dict] = None):
    """One request on a connection of its own: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request(method, path, headers={"Connection": "close", **(headers or {})})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def _wait_for_workers(proc, port: int) -> None:
    """Until the server answers, then a moment for the other workers to import
    the app (requests made before they are up would all go to the first)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")  # not under the rule: charges nothing
            conn.getresponse().read()
            conn.close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError("the server did not start")
    time.sleep(1.5)


def _hit(port: int) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/items", headers={"Connection": "close"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    pid = json.loads(body)["pid"] if r.status == 200 else 0
    return r.status, pid


def _stop(proc) -> None:
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, 9)
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize("store", ["shm", "memory"])
def test_one_quota_across_four_workers(kind, store, tmp_path):
    pytest.importorskip(kind)
    proc, port, table = _serve(kind, store, tmp_path)
    try:
        _wait_for_workers(proc, port)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _hit(port), range(REQUESTS)))
    finally:
        _stop(proc)
        if os.path.exists(table):
            os.unlink(table)
    ok = [pid for status, pid in results if status == 200]
    statuses = {status for status, _ in results}
    assert statuses <= {200, 429, 403}, statuses
    denied = sum(1 for status, _ in results if status == 429)
    workers = len(set(ok))
    assert workers >= 2, f"the requests reached {workers} worker(s); the test needs several"
    if store == "shm":
        assert len(ok) == LIMIT, f"{len(ok)} admitted by {workers} workers on shared memory"
        # Strikes count across the workers and the ban holds in all of them:
        # STRIKES - 1 answers of 429 (a few more only when requests in flight
        # race the ban being written), then 403 from every worker.
        assert STRIKES - 1 <= denied <= STRIKES - 1 + 8, denied
        assert sum(1 for status, _ in results if status == 403) >= REQUESTS - LIMIT - STRIKES - 8
    else:
        # Each worker admits up to LIMIT on its own.
        assert LIMIT < len(ok) <= 4 * LIMIT, f"{len(ok)} admitted by {workers} workers in memory"


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_one_rule_by_address_across_four_workers_on_shared_memory(kind, tmp_path):
    """The policy most users start with, one rule by address and nothing
    else (decided on the engine's straight path), across four workers on
    shared memory over HTTP: exactly the quota, every other answer a 429
    with its rate-limit headers."""
    pytest.importorskip(kind)
    proc, port, table = _serve(kind, "shm", tmp_path, ban=False)
    try:
        _wait_for_workers(proc, port)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _hit(port), range(REQUESTS // 2)))
        status, headers, _ = _call(port, "GET", "/api/items")
    finally:
        _stop(proc)
        if os.path.exists(table):
            os.unlink(table)
    ok = [pid for status, pid in results if status == 200]
    assert len(set(ok)) >= 2, f"the requests reached {len(set(ok))} worker(s); the test needs several"
    assert len(ok) == LIMIT, f"{len(ok)} admitted on shared memory"
    assert sum(1 for status, _ in results if status == 429) == REQUESTS // 2 - LIMIT
    assert status == 429 and "retry-after" in headers and "ratelimit" in headers, (status, headers)


def _worker(path: str, n: int, out) -> None:
    limiter = floodgate.Limiter("100/hour", shared_memory=path, max_keys=1000)
    out.put(sum(limiter.check("hot").allowed for _ in range(n)))


def test_limiter_shared_across_processes():
    path = _table()
    try:
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(path, 80, out)) for _ in range(4)]
        for p in procs:
            p.start()
        total = sum(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join()
        assert total == 100
        limiter = floodgate.Limiter("100/hour", shared_memory=path, max_keys=1000)
        assert limiter.shared_memory == path
        assert not limiter.check("hot").allowed
        assert "shared_memory=" in repr(limiter)
        # Made for another quota: a typed error, the file left as it was.
        with pytest.raises(floodgate.StoreMismatchError) as e:
            floodgate.Limiter("101/hour", shared_memory=path, max_keys=1000)
        assert e.value.code == "store_mismatch"
        assert e.value.path == path
        with pytest.raises(floodgate.InvalidOptionError):
            floodgate.Limiter("10/s", algorithm="sliding_log", shared_memory=path + "-log")
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_fork_after_creating_keeps_one_table():
    """gunicorn --preload builds the limiter before forking: the mapping is
    shared, so the children still count together."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    path = _table()
    try:
        limiter = floodgate.Limiter("50/hour", shared_memory=path, max_keys=1000)
        r, w = os.pipe()
        kids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                n = sum(limiter.check("k").allowed for _ in range(40))
                os.write(w, bytes([n]))
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        got = os.read(r, 3)
        os.close(r)
        os.close(w)
        assert sum(got) == 50
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _redis_policy(url: str, algorithm: str = "gcra", extra: str = "", quotas: str = f'"{LIMIT}/hour"') -> str:
    return textwrap.dedent(
        f"""
        [store]
        kind = "redis"
        url = "{url}"
        prefix = "fg-workers-{uuid.uuid4().hex}"
        timeout_ms = 500
        fail_mode = "closed"

        [[rule]]
        name = "api"
        match = "/api/**"
        key = "ip"
        algorithm = "{algorithm}"
        quotas = [{quotas}]
        """
    ) + textwrap.dedent(extra)


# A second rule charged by every request, with a looser sliding window: two
# limiters' checks (two shapes) share the merged calls.
_EVERYTHING = f"""
[[rule]]
name = "everything"
match = "/**"
key = "ip"
algorithm = "sliding_window"
quotas = ["{10 * LIMIT}/hour"]
"""


# A looser daily quota beside the hourly one: two quotas of one rule in one
# packed Redis key.
_DAILY = f'"{LIMIT}/hour", "{5 * LIMIT}/day"'


@pytest.mark.parametrize(
    "algorithm,extra,quotas",
    [
        ("gcra", "", f'"{LIMIT}/hour"'),
        ("sliding_window", "", f'"{LIMIT}/hour"'),
        ("gcra", _EVERYTHING, f'"{LIMIT}/hour"'),
        ("sliding_window", "", _DAILY),
    ],
    ids=["gcra", "sliding", "two-rules", "two-quotas"],
)
@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_one_quota_across_four_workers_on_redis(kind, algorithm, extra, quotas, redis_url, tmp_path):
    """Four workers on one Redis: exactly the quota. Under uvicorn the ASGI
    middleware decides with the core's async engine (`check_request_async`:
    merged calls on a tokio worker, no thread pool); under gunicorn the WSGI
    middleware blocks with the GIL released. The sliding window runs the
    script's packed state (one key, rewritten in place while its stored
    expiry holds) the same way, also with two quotas in that key; with a
    second, looser rule on every request, the tighter still binds."""
    pytest.importorskip(kind)
    proc, port = start_server(
        kind, ASGI_APP if kind == "uvicorn" else WSGI_APP, _redis_policy(redis_url, algorithm, extra, quotas), tmp_path
    )
    try:
        _wait_for_workers(proc, port)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _hit(port), range(2 * LIMIT)))
    finally:
        _stop(proc)
    ok = [pid for status, pid in results if status == 200]
    assert {status for status, _ in results} <= {200, 429}
    assert len(set(ok)) >= 2, "the requests reached one worker; the test needs several"
    assert len(ok) == LIMIT, f"{len(ok)} admitted by {len(set(ok))} workers on Redis"


def test_gunicorn_preload_workers_on_redis_each_use_their_own_connections(redis_url, tmp_path):
    """`gunicorn --preload`: the engine, and its first Redis connection, are made
    in the master before it forks four workers. Each worker must talk to Redis
    on connections of its own: on the inherited one, workers read each other's
    replies, and a check waits out its deadline (500 ms) into the fail mode
    (`closed`: a 429 before the quota is spent)."""
    _preload_workers_count_exactly(_redis_policy(redis_url), tmp_path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_gunicorn_preload_workers_on_sentinel_with_passwords(own_sentinel_with_passwords, tmp_path):
    """The same through Redis Sentinel as production runs it: a master that
    takes only an ACL user (`master_user`, `master_password`), database 2
    (`master_db`), a sentinel that requires its own password (in its URL), and
    workers forked from the master that built the engine, each asking the
    sentinel on its own connection."""
    port, master = own_sentinel_with_passwords
    text = _redis_policy("unused").replace(
        'url = "unused"',
        f'sentinel = ["redis://:sentpw@127.0.0.1:{port}/"]\nmaster_name = "fgmaster"\n'
        'master_user = "app"\nmaster_password = "apppw"\nmaster_db = 2',
    )
    _preload_workers_count_exactly(text, tmp_path)
    cli = ["redis-cli", "-p", str(master.port), "--user", "app", "--pass", "apppw", "--no-auth-warning"]
    assert int(subprocess.run([*cli, "-n", "2", "DBSIZE"], capture_output=True, text=True).stdout) >= 1
    assert int(subprocess.run([*cli, "-n", "0", "DBSIZE"], capture_output=True, text=True).stdout) == 0


def _preload_workers_count_exactly(policy_text: str, tmp_path) -> None:
    """`gunicorn --preload` with four workers on `policy_text` (a Redis store,
    fail mode `closed`, LIMIT an hour per IP): 2 x LIMIT requests from one
    client, from several workers, admit exactly LIMIT, none after waiting out
    the deadline."""
    pytest.importorskip("gunicorn")
    proc, port = start_server("gunicorn", WSGI_APP, policy_text, tmp_path, preload=True)
    try:
        _wait_for_workers(proc, port)

        def timed_hit(_):
            start = time.monotonic()
            status, pid = _hit(port)
            return status, pid, time.monotonic() - start

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(timed_hit, range(2 * LIMIT)))
    finally:
        _stop(proc)
    statuses = [status for status, _, _ in results]
    ok = [pid for status, pid, _ in results if status == 200]
    assert len(set(ok)) >= 2, "the requests reached one worker; the test needs several"
    assert statuses[:LIMIT].count(429) <= 8, "denied before the quota was spent: a fail-mode answer"
    assert len(ok) == LIMIT, f"{len(ok)} admitted by {len(set(ok))} workers"
    assert max(t for _, _, t in results) < 0.4, "a request waited out its Redis deadline"


_FORK_POLICY = """
[store]
kind = "redis"
url = "{url}"
prefix = "fg-fork-{prefix}"
timeout_ms = 200
fail_mode = "closed"

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["400/hour"]
"""


def _fork(work, then=None) -> tuple[int, int]:
    """Forks a child that runs ``work()``, writes what it returns (JSON; an
    exception's repr) to a pipe, runs ``then()`` if given, and exits: 0 if
    ``work`` returned. (pid, the pipe's read end: ``_report``.)"""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through the pipe)
        code = 1
        try:
            os.close(r)
            try:
                result, code = work(), 0
            except BaseException as e:  # a hang shows as asyncio's TimeoutError
                result = repr(e)
            os.write(w, json.dumps(result).encode())
            os.close(w)
            if then is not None:
                then()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _report(r: int):
    """What a ``_fork`` child wrote."""
    with os.fdopen(r) as f:
        return json.loads(f.read())


def _fallbacks(engine) -> int:
    for line in engine.metrics().splitlines():
        if line.startswith("floodgate_store_fallbacks_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no floodgate_store_fallbacks_total in the metrics")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forked_children_never_share_the_parents_redis_connections(redis_url):
    """An engine built, and used, before `os.fork()` (gunicorn --preload,
    multiprocessing's fork): six children then check at once, each its own
    client. Each gets exactly its own client's answers, none from the fail
    mode, none after waiting out the deadline. On the parent's inherited
    connection they read each other's replies."""
    engine = floodgate.Engine.from_toml(_FORK_POLICY.format(url=redis_url, prefix=uuid.uuid4().hex))
    assert engine.check_request(method="GET", path="/api/x", client_ip="10.9.9.9").allowed
    start = time.time() + 0.3

    def child(k: int):
        sent, allowed, worst = 300 + 100 * k, 0, 0.0
        while time.time() < start:
            pass
        for _ in range(sent):
            t = time.perf_counter()
            allowed += engine.check_request(method="GET", path="/api/x", client_ip=f"10.0.0.{k + 1}").allowed
            worst = max(worst, time.perf_counter() - t)
        return [sent, allowed, _fallbacks(engine), worst]

    children = [_fork(lambda k=k: child(k)) for k in range(6)]
    # The parent goes on checking meanwhile, as a process that forked workers may.
    while time.time() < start:
        pass
    parent = [engine.check_request(method="GET", path="/api/x", client_ip="10.9.9.9").allowed for _ in range(600)]
    reports = []
    for pid, r in children:
        reports.append(_report(r))
        assert os.waitpid(pid, 0)[1] == 0, reports[-1]
    assert (sum(parent), _fallbacks(engine)) == (399, 0), "the parent's own answers"
    for k, (sent, allowed, fallbacks, worst) in enumerate(reports):
        assert (allowed, fallbacks) == (min(sent, 400), 0), (k, reports[k])
        assert worst < 0.2, (k, reports[k])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_forked_children_ask_the_sentinels_on_connections_of_their_own(own_sentinel):
    """On Sentinel, a connect first asks the sentinels which server is the
    master, on connections redis-rs keeps open. Children forked after the
    parent connected opened none of their own: they all asked on the parent's
    socket (replies for one process read by another; one left waiting). Four
    children each check; while they are alive the sentinel counts a client for
    the parent, one for each child and the one counting."""
    port, master = own_sentinel

    def sentinel_clients() -> int:
        out = subprocess.run(["redis-cli", "-p", str(port), "client", "list"], capture_output=True, text=True, check=True)
        return len(out.stdout.strip().splitlines())

    policy = _FORK_POLICY.replace('url = "{url}"', f'sentinel = ["redis://127.0.0.1:{port}"]\nmaster_name = "fgmaster"')
    engine = floodgate.Engine.from_toml(policy.format(prefix=uuid.uuid4().hex))
    assert engine.check_request(method="GET", path="/api/x", client_ip="10.9.9.9").allowed
    assert sentinel_clients() == 2, "the parent's and the counting one"
    go_r, go_w = os.pipe()

    def child(k: int):
        ip = f"10.0.0.{k + 1}"
        return [sum(engine.check_request(method="GET", path="/api/x", client_ip=ip).allowed for _ in range(50)),
                _fallbacks(engine)]

    # Each stays alive (its connections open) until counted.
    children = [_fork(lambda k=k: child(k), then=lambda: os.read(go_r, 1)) for k in range(4)]
    try:
        for pid, r in children:
            assert _report(r) == [50, 0], "every check answered by Redis"
        assert sentinel_clients() == 2 + 4, "a connection to the sentinel per child"
    finally:
        os.write(go_w, b"x" * len(children))
        for pid, _ in children:
            assert os.waitpid(pid, 0)[1] == 0
    # The children's checks reached the master they were told of: 50 each.
    keys = subprocess.run(["redis-cli", "-p", str(master.port), "--scan"], capture_output=True, text=True).stdout.split()
    assert len(keys) == 5, keys


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_async_checks_answer_in_a_child_forked_after_the_parent_made_some(redis_url):
    """The async checks run on a background tokio runtime whose thread does not
    survive a fork: a child's checks, spawned on the parent's runtime, would
    never run (every request of the worker hanging). A child makes its own."""
    import asyncio

    engine = floodgate.Engine.from_toml(_FORK_POLICY.format(url=redis_url, prefix=uuid.uuid4().hex))

    async def check(ip):
        return await floodgate.check_request_async(engine, method="GET", path="/api/x", client_ip=ip)

    assert asyncio.run(check("10.9.9.9")).allowed

    async def all_of_them():
        return await asyncio.wait_for(asyncio.gather(*(check("10.0.0.1") for _ in range(450))), 10)

    def child():
        verdicts = asyncio.run(all_of_them())
        return [sum(v.allowed for v in verdicts), _fallbacks(engine)]

    pid, r = _fork(child)
    report = _report(r)
    os.waitpid(pid, 0)
    assert report == [400, 0]
    # The parent's own runtime still answers.
    assert asyncio.run(check("10.9.9.8")).allowed


def _evalsha_calls(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_a_frozen_redis_costs_a_request_at_most_its_deadline_over_http(kind, tmp_path, own_redis):
    """Two workers on a Redis that freezes (SIGSTOP): every request is answered
    by the fail mode ("open": 200) within the store's deadline (100 ms) plus
    the server's own time, blocking (gunicorn) and async (uvicorn); once Redis
    thaws, checks go back to it without a restart."""
    pytest.importorskip(kind)
    redis, rport = own_redis.proc, own_redis.port
    text = _redis_policy(f"redis://127.0.0.1:{rport}/").replace(
        'timeout_ms = 500\nfail_mode = "closed"', 'timeout_ms = 100\nfail_mode = "open"'
    )
    assert 'fail_mode = "open"' in text
    proc, port = start_server(kind, ASGI_APP if kind == "uvicorn" else WSGI_APP, text, tmp_path, workers=2)
    try:
        _wait_for_workers(proc, port)
        # Both workers connected and counting on Redis.
        assert [_hit(port)[0] for _ in range(20)] == [200] * 20
        on_redis = _evalsha_calls(rport)
        assert on_redis >= 20
        redis.send_signal(19)  # SIGSTOP
        took = []
        try:
            for _ in range(20):
                t = time.monotonic()
                status, _ = _hit(port)
                took.append(time.monotonic() - t)
                assert status == 200, "fail mode open"
        finally:
            redis.send_signal(18)  # SIGCONT
        print(f"{kind}, Redis frozen: slowest request {max(took) * 1000:.1f} ms (deadline 100 ms)")
        # The deadline, plus what the server and this client take on a busy machine.
        assert max(took) < 0.1 + 0.4, took
        # Thawed: back on Redis (the breaker's next probe) within seconds,
        # counted after Redis has run the calls that waited for it.
        time.sleep(0.3)
        on_redis = _evalsha_calls(rport)
        deadline = time.monotonic() + 10
        while _evalsha_calls(rport) == on_redis and time.monotonic() < deadline:
            _hit(port)
            time.sleep(0.05)
        assert _evalsha_calls(rport) > on_redis, "never back on Redis"
    finally:
        _stop(proc)


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_a_full_redis_still_denies_over_http(kind, tmp_path, own_redis):
    """A Redis at maxmemory (noeviction) refuses every write: through the
    server, a client at its limit still gets Redis's 429 (under gunicorn the
    blocking call, under uvicorn a merged one), and a new client, whose
    charge Redis cannot record, the fail mode ("open": 200)."""
    pytest.importorskip(kind)
    rport = own_redis.port
    text = textwrap.dedent(
        f"""
        [store]
        kind = "redis"
        url = "redis://127.0.0.1:{rport}/"
        fail_mode = "open"

        [[rule]]
        name = "api"
        match = "/api/**"
        key = "header:x-client"
        quotas = ["3/hour"]
        """
    )
    proc, port = start_server(kind, ASGI_APP if kind == "uvicorn" else WSGI_APP, text, tmp_path, workers=2)

    def hit(client: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/items", headers={"x-client": client, "Connection": "close"})
        status = conn.getresponse().status
        conn.close()
        return status

    try:
        _wait_for_workers(proc, port)
        assert [hit("known") for _ in range(3)] == [200] * 3
        subprocess.run(["redis-cli", "-p", str(rport), "config", "set", "maxmemory", "1"], check=True,
                       capture_output=True)
        assert hit("known") == 429, "Redis's denial, not the fail mode's admission"
        assert hit("new") == 200, "a charge Redis cannot record: the fail mode (open)"
    finally:
        _stop(proc)


RELOADING_APP = """
import os, threading, time
from fastapi import FastAPI
from floodgate import Engine
from floodgate.asgi import FloodgateMiddleware

engine = Engine.from_file("policy.toml")
app = FastAPI()


@app.get("/api/items")
async def items():
    return {"pid": os.getpid()}


def watch(path="policy.toml", every=0.1):  # the README's file watcher
    seen = os.stat(path).st_mtime_ns
    while True:
        time.sleep(every)
        m = os.stat(path).st_mtime_ns
        if m != seen:
            seen = m
            try:
                engine.reload()
            except Exception:
                pass


threading.Thread(target=watch, daemon=True).start()
app.add_middleware(FloodgateMiddleware, engine=engine)
"""


def test_reload_on_a_file_change_through_a_running_server(tmp_path):
    """uvicorn serving with the README's file watcher: a broken policy file
    changes nothing (the running policy and its count stay); a new quota
    applies over HTTP once the file changes, with the count carried over (5
    used of a fixed window judged against the new 8: 3 more)."""
    pytest.importorskip("uvicorn")
    text = (
        "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nkey = \"ip\"\n"
        "algorithm = \"fixed_window\"\nquotas = [\"5/hour\"]\n"
    )
    proc, port = start_server("uvicorn", RELOADING_APP, text, tmp_path, workers=1)
    try:
        _wait_for_workers(proc, port)
        assert [_hit(port)[0] for _ in range(6)] == [200] * 5 + [429]
        # A typo: refused by the engine, the running policy (and its count) stays.
        time.sleep(0.05)
        (tmp_path / "policy.toml").write_text(text.replace("5/hour", "five/hour"))
        time.sleep(0.5)
        assert _hit(port)[0] == 429
        # A new quota: the count (5) carried over and judged against 8.
        (tmp_path / "policy.toml").write_text(text.replace("5/hour", "8/hour"))
        deadline = time.monotonic() + 5
        while _hit(port)[0] == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
        statuses = [_hit(port)[0] for _ in range(8)]
        assert statuses == [200] * 2 + [429] * 6, statuses  # the third 200 was the probe above
    finally:
        _stop(proc)


def test_calendar_day_across_four_workers_over_http(tmp_path):
    """A calendar quota through uvicorn with 4 workers on the shared-memory
    store: exactly the day's quota admitted across the workers, and the 429's
    Retry-After is the time left until midnight UTC."""
    pytest.importorskip("uvicorn")
    table = _table()
    text = (
        f'[store]\nkind = "shared_memory"\npath = "{table}"\nmax_keys = 1000\n\n'
        '[[rule]]\nname = "plan"\nmatch = "/api/**"\nkey = "ip"\n'
        'quotas = ["20/day"]\ncalendar = true\n'
    )
    proc, port = start_server("uvicorn", ASGI_APP, text, tmp_path, workers=4)
    try:
        _wait_for_workers(proc, port)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _hit(port), range(40)))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/items", headers={"Connection": "close"})
        r = conn.getresponse()
        r.read()
        retry_after = int(r.getheader("Retry-After"))
        conn.close()
    finally:
        _stop(proc)
        if os.path.exists(table):
            os.unlink(table)
    ok = [pid for status, pid in results if status == 200]
    assert len(ok) == 20, f"{len(ok)} admitted by {len(set(ok))} workers"
    assert len(set(ok)) >= 2, "the requests reached one worker; the test needs several"
    now = time.time()
    until_midnight = 86_400 - now % 86_400
    assert r.status == 429 and abs(retry_after - until_midnight) <= 5, (retry_after, until_midnight)


def test_asgi_keys_by_the_first_copy_of_a_raw_header_over_http(tmp_path):
    """The ASGI middleware hands uvicorn's header list to the engine as sent:
    a key header repeated (the first copy counts, as Starlette reads it) and
    not ASCII (read as Latin-1) keys the same client request after request."""
    pytest.importorskip("uvicorn")
    text = textwrap.dedent(
        """
        [[rule]]
        name = "keyed"
        match = "/api/**"
        key = "header:x-api-key"
        quotas = ["2/hour"]
        """
    )
    proc, port = start_server("uvicorn", ASGI_APP, text, tmp_path, workers=1)
    try:
        _wait_for_workers(proc, port)

        def get(first: bytes, second: bytes) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.putrequest("GET", "/api/items")
            conn.putheader("X-Api-Key", first)
            conn.putheader("X-Api-Key", second)
            conn.endheaders()
            r = conn.getresponse()
            r.read()
            headers = {k.lower(): v for k, v in r.getheaders()}
            conn.close()
            return r.status, headers

        statuses = [get(b"k\xe9y", f"other-{i}".encode())[0] for i in range(3)]
        assert statuses == [200, 200, 429], statuses
        status, headers = get(b"another", b"k\xe9y")
        assert status == 200 and headers["ratelimit"].startswith('"keyed";r=1;'), headers
    finally:
        _stop(proc)


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_an_in_memory_ban_holds_over_http(kind, tmp_path):
    """One worker, the in-process store: the client gets its quota, then the
    STRIKES - 1 denials before the ban, then the ban's 403 on every request
    (the ban check answers "nobody banned" without a lookup until the first
    ban is recorded, then must find it)."""
    pytest.importorskip(kind)
    proc, port = start_server(kind, ASGI_APP if kind == "uvicorn" else WSGI_APP, policy("memory", ""), tmp_path, workers=1)
    try:
        _wait_for_workers(proc, port)
        statuses = [_hit(port)[0] for _ in range(LIMIT + STRIKES + 20)]
    finally:
        _stop(proc)
    assert statuses == [200] * LIMIT + [429] * (STRIKES - 1) + [403] * 21, statuses


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_an_untrusted_proxy_is_warned_of_once_in_the_servers_log(kind, tmp_path):
    """Behind a loopback proxy that no setting trusts (uvicorn told not to
    resolve X-Forwarded-For itself), the server's log gets one
    ERR_FG_UNTRUSTED_PROXY line per worker, however many requests come."""
    pytest.importorskip(kind)
    app = (ASGI_APP if kind == "uvicorn" else WSGI_APP).replace("/api/items", "/open")
    args = ["--no-proxy-headers"] if kind == "uvicorn" else []
    proc, port = start_server(kind, app, policy("memory", ""), tmp_path, workers=1, args=args)
    try:
        _wait_for_workers(proc, port)
        for i in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/open", headers={"X-Forwarded-For": f"198.51.100.{i}"})
            assert conn.getresponse().status == 200
            conn.close()
    finally:
        os.killpg(proc.pid, 15)
        log = proc.communicate(timeout=15)[1].decode(errors="replace")
    assert log.count("ERR_FG_UNTRUSTED_PROXY") == 1, log
