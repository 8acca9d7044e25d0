import pathlib
import asyncio
import concurrent.futures
import logging

import pytest

import floodgate
from floodgate import Engine

POLICY = (pathlib.Path(__file__).resolve().parents[3] / "tests" / "policies" / "bindings.toml").read_text()

T = 1_700_000_000.0


def test_check_request_and_verdict():
    e = Engine.from_toml(POLICY)
    for _ in range(2):
        v = e.check_request(method="POST", path="/auth/login", client_ip="203.0.113.7", now=T)
        assert v.allowed and v.status == 200 and v.rule == "login" and v.reason == "allowed"
    v = e.check_request(method="POST", path="/auth/login", client_ip="203.0.113.7", now=T)
    assert not v and v.status == 429 and v.reason == "rate_limited"
    assert v.retry_after == pytest.approx(30.0)
    headers = dict(v.headers)
    assert headers["Retry-After"] == "30"
    assert headers["RateLimit-Policy"] == '"login";q=2;w=60'
    assert v.identity is not None
    assert e.check_request(method="POST", path="/oauth/token", headers={"X-Client-Id": "a"}).allowed
    assert e.check_request(method="POST", path="/oauth/token").status == 401
    assert e.check_request(method="GET", path="/", headers=[("x-api-key", "sk_revoked")]).status == 403
    assert "floodgate_requests_total" in e.metrics()
    assert "login" in e.describe()


def test_a_request_without_a_client_address_is_limited_on_one_key():
    # An ASGI server on a Unix socket, or a client gone before the check, has no
    # address: IP-keyed rules charge one key for all such requests (they skipped
    # the rule, so such requests were unlimited).
    e = Engine.from_toml(POLICY)
    verdicts = [e.check_request(method="POST", path="/auth/login", now=T) for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert verdicts[2].status == 429 and verdicts[2].identity == "-"
    assert e.check_request(method="POST", path="/auth/login", client_ip="203.0.113.8", now=T).allowed


def test_from_dict_and_file(tmp_path):
    e = Engine.from_dict({"rule": [{"name": "all", "match": "/**", "quotas": ["1/s"]}]})
    assert e.check_request(method="GET", path="/", client_ip="::1", now=T).allowed
    p = tmp_path / "policy.toml"
    p.write_text(POLICY)
    assert Engine.from_file(p).check_request(method="GET", path="/x").reason == "no_rule"
    with pytest.raises(floodgate.InvalidConfigError, match="line"):
        Engine.from_toml("[[rule]]\nname = \"x\"\nmatch = \"/**\"\nquotas = [\"ten\"]\n")
    with pytest.raises(ValueError):
        e.check_request(method="GET", path="/", client_ip="not-an-ip")


def test_denials_log_at_debug_not_per_request_at_info(caplog):
    # At INFO (what production runs), a flood writes no line per denial: the
    # core's summaries (one per 10 s, unit-tested there) and state changes only.
    with caplog.at_level(logging.INFO, logger="floodgate"):
        e = Engine.from_toml(POLICY)
        for _ in range(200):
            e.check_request(method="POST", path="/auth/login", client_ip="198.51.100.1", now=T)
    assert [r for r in caplog.records if r.name == "floodgate"] == []
    # With DEBUG enabled (checked when the engine is made and with each
    # summary), every event is a DEBUG record with its fields.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="floodgate"):
        e = Engine.from_toml(POLICY)
        for _ in range(3):
            e.check_request(method="POST", path="/auth/login", client_ip="198.51.100.1", now=T)
    denied = [r for r in caplog.records if getattr(r, "floodgate_event", None) == "denied"]
    assert len(denied) == 1
    assert denied[0].floodgate_rule == "login" and denied[0].floodgate_status == 429
    assert denied[0].levelno == logging.DEBUG


def test_the_engine_lists_the_headers_its_policy_reads():
    e = Engine.from_toml(POLICY)
    assert set(e.request_headers) >= {"x-api-key", "x-client-id"}
    assert "cookie" not in e.request_headers


def test_async_check_request_in_memory_and_on_redis(redis_url):
    memory = Engine.from_toml(POLICY)
    import os
    import time

    prefix = f"py-{os.getpid()}-{time.time_ns()}"
    on_redis = Engine.from_toml(
        f'[store]\nkind = "redis"\nurl = "{redis_url}"\ntimeout_ms = 200\nprefix = "{prefix}"\n' + POLICY
    )
    assert on_redis.blocking and not memory.blocking

    async def main():
        v1 = await floodgate.check_request_async(memory, method="POST", path="/auth/login", client_ip="192.0.2.1")
        results = await asyncio.gather(
            *[
                floodgate.check_request_async(on_redis, method="POST", path="/auth/login", client_ip="192.0.2.99")
                for _ in range(6)
            ]
        )
        return v1, results

    v1, results = asyncio.run(main())
    assert v1.allowed
    assert sum(r.allowed for r in results) == 2  # shared limit on Redis: exactly 2


def test_native_async_engine_matches_the_blocking_one_and_uses_no_thread_pool(redis_url):
    """`engine.check_request_async` / `settle_async` on Redis: the core's async
    engine (round trips on the tokio worker's multiplexed connection), so the
    same verdicts as `check_request`, and no thread pool: the loop's default
    executor refuses work for the whole run."""
    import os
    import time

    stamp = f"{os.getpid()}-{time.time_ns()}"
    text = lambda prefix: (  # noqa: E731
        f'[store]\nkind = "redis"\nurl = "{redis_url}"\ntimeout_ms = 500\nprefix = "{prefix}"\n' + POLICY
    )
    blocking, native = Engine.from_toml(text(f"pys-{stamp}")), Engine.from_toml(text(f"pya-{stamp}"))
    requests = [
        dict(method="POST", path="/auth/login", client_ip="192.0.2.7"),
        dict(method="POST", path="/auth/login", client_ip="192.0.2.7"),
        dict(method="POST", path="/auth/login", client_ip="192.0.2.7"),
        dict(method="POST", path="/oauth/token", headers={"X-Client-Id": "c1"}),
        dict(method="POST", path="/oauth/token"),
        dict(method="GET", path="/", headers=[("x-api-key", "sk_revoked")]),
    ]
    want = [blocking.check_request(**r) for r in requests]

    class NoPool(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            raise AssertionError("a thread pool was used")

    async def main():
        asyncio.get_running_loop().set_default_executor(NoPool())
        got = [await floodgate.check_request_async(native, **r) for r in requests]
        many = await asyncio.gather(
            *[native.check_request_async(method="POST", path="/auth/login", client_ip="192.0.2.8") for _ in range(6)]
        )
        await native.settle_async(got[0], status=200)
        return got, many

    got, many = asyncio.run(main())
    summary = lambda v: (v.allowed, v.status, v.reason, v.rule, v.limit, v.remaining)  # noqa: E731
    assert [summary(v) for v in got] == [summary(v) for v in want]
    assert sum(v.allowed for v in many) == 2  # exact on Redis across concurrent tasks
    with pytest.raises(floodgate.InvalidRequestError):
        asyncio.run(native.check_request_async(method="GET", path="/", client_ip="not-an-ip"))


def test_redis_limiter_async(redis_url):
    import os

    lim = floodgate.RedisLimiter(redis_url, "5/minute", fail_mode="closed", timeout=0.2, prefix=f"py-{os.getpid()}")
    lim.reset("k")

    async def main():
        return await asyncio.gather(*[floodgate.check_async(lim, "k") for _ in range(8)])

    results = asyncio.run(main())
    assert sum(d.allowed for d in results) == 5
    assert lim.fallbacks == 0


def test_redis_limiter_native_async_is_exact_and_raises(redis_url):
    import os

    lim = floodgate.RedisLimiter(redis_url, "100/minute", fail_mode="closed", timeout=0.5, prefix=f"pyn-{os.getpid()}")
    lim.reset("hot")

    async def main():
        # 300 concurrent checks on one key, pipelined: exactly the limit passes.
        ds = await asyncio.gather(*[lim.check_async("hot") for _ in range(300)])
        with pytest.raises(floodgate.EmptyKeyError):
            await lim.check_async("")
        with pytest.raises(floodgate.InvalidCostError):
            await lim.check_async("k", -1)
        with pytest.raises(TypeError):
            await lim.check_async(None)
        return ds

    ds = asyncio.run(main())
    assert sum(d.allowed for d in ds) == 100
    assert all(d.retry_after > 0 for d in ds if not d.allowed)
    assert lim.fallbacks == 0
    # A second event loop reuses the same runtime and connection.
    assert asyncio.run(_one(lim)).allowed is False


async def _one(lim):
    # A cancelled check does not disturb the next ones on the same loop.
    t = asyncio.ensure_future(lim.check_async("other"))
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    return await lim.check_async("hot")


def test_redis_async_when_redis_goes_down(tmp_path, own_redis):
    import subprocess
    import time

    port, url = own_redis.port, own_redis.url
    closed = floodgate.RedisLimiter(url, "100/minute", fail_mode="closed", timeout=0.1)
    opened = floodgate.RedisLimiter(url, "100/minute", fail_mode="open", timeout=0.1)

    async def both():
        return await asyncio.gather(closed.check_async("k"), opened.check_async("k"))

    assert [d.allowed for d in asyncio.run(both())] == [True, True]
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
    t = time.monotonic()
    c, o = asyncio.run(both())
    assert (c.allowed, o.allowed) == (False, True)
    assert closed.fallbacks >= 1 and opened.fallbacks >= 1
    assert time.monotonic() - t < 5


def test_verdict_exposes_every_core_field():
    from floodgate import _floodgate

    props = {name for name in dir(_floodgate.Verdict) if not name.startswith("_")}
    # needs_settle is the lifecycle handle (Engine.settle), not a field of the decision.
    assert props - {"needs_settle"} == set(_floodgate.VERDICT_FIELDS)
    v = Engine.from_toml(POLICY).check_request(method="GET", path="/api/items", client_ip="203.0.113.1")
    assert v.body == b"" and v.reset_after >= 0.0
    assert _floodgate.BAD_REQUEST_BODY == b'{"error":"bad_request"}'
    assert not Engine.from_toml(POLICY).blocking


def test_pk_is_the_same_in_every_worker_process():
    import subprocess
    import sys

    code = (
        "import sys; from floodgate import Engine; "
        "e = Engine.from_toml(sys.stdin.read()); "
        "v = e.check_request(method='GET', path='/api/items', client_ip='203.0.113.9'); "
        "print(dict(v.headers)['RateLimit'].split(';pk=')[1])"
    )
    pks = {
        subprocess.run([sys.executable, "-c", code], input=POLICY, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(pks) == 1 and pks != {""}, pks


def test_reload_keeps_counters_and_refuses_a_bad_policy(tmp_path):
    """`engine.reload(...)`: counters of unchanged rules kept, a typo refused
    with the running policy kept; a SIGHUP handler is one line."""
    import signal

    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    e = Engine.from_file(policy)
    for _ in range(2):
        assert e.check_request(method="POST", path="/auth/login", client_ip="192.0.2.50", now=T).allowed
    policy.write_text(POLICY.replace('quotas = ["100/min"]', 'quotas = ["200/min"]'))
    report = e.reload()
    # api's quota changed, not its key: its counters are carried over.
    assert "login" in report["kept"] and report["carried"] == ["api"] and report["reset"] == []
    assert not e.check_request(method="POST", path="/auth/login", client_ip="192.0.2.50", now=T).allowed
    with pytest.raises(floodgate.InvalidConfigError, match="line"):
        e.reload(toml=POLICY.replace('quotas = ["2/min"]', 'quotas = ["two/min"]'))
    assert not e.check_request(method="POST", path="/auth/login", client_ip="192.0.2.50", now=T).allowed
    # On SIGHUP, as a server would wire it.
    previous = signal.signal(signal.SIGHUP, lambda *_: e.reload())
    try:
        policy.write_text(POLICY + '\n[[rule]]\nname = "extra"\nmatch = "/extra"\nquotas = ["1/min"]\n')
        signal.raise_signal(signal.SIGHUP)
        assert "extra" in e.describe()
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_calendar_month_ends_on_the_first_and_retry_after_points_there():
    """tests/policies/calendar.toml: 3 a calendar month per client (UTC), 2 exports
    a calendar day in Paris; a client denied at 23:59 on January 31st is told
    60 s, and is admitted at midnight."""
    policy = (pathlib.Path(__file__).resolve().parents[3] / "tests" / "policies" / "calendar.toml").read_text()
    e = Engine.from_toml(policy)
    jan31 = 1_769_903_940.0  # 2026-01-31T23:59:00Z
    for _ in range(3):
        assert e.check_request(method="GET", path="/api/items", client_ip="198.51.100.7", now=jan31).allowed
    v = e.check_request(method="GET", path="/api/items", client_ip="198.51.100.7", now=jan31)
    assert v.status == 429 and v.retry_after == pytest.approx(60.0)
    assert dict(v.headers)["Retry-After"] == "60"
    assert dict(v.headers)["RateLimit-Policy"].endswith(";w=2592000")
    assert e.check_request(method="GET", path="/api/items", client_ip="198.51.100.7", now=jan31 + 60).allowed
    # Paris: midnight was 23:00 UTC, so at 23:59 UTC it is already February 1st.
    for _ in range(2):
        assert e.check_request(method="GET", path="/export", client_ip="203.0.113.9", now=jan31).allowed
    v = e.check_request(method="GET", path="/export", client_ip="203.0.113.9", now=jan31)
    assert v.status == 429 and v.retry_after == pytest.approx(23 * 3600 + 60)
