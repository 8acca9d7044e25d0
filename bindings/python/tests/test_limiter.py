import json
import math
import threading

import pytest

import floodgate
from floodgate import Decision, Limiter


def test_check_and_decision():
    lim = Limiter("3/second")
    d = lim.check("k", now=0.0)
    assert isinstance(d, Decision)
    assert d.allowed and bool(d) and d.limit == 3 and d.remaining == 2 and d.quota == 0
    assert lim.check("k", 2, now=0.0).allowed
    denied = lim.check("k", now=0.0)
    assert not denied.allowed and not denied
    assert denied.retry_after == pytest.approx(1 / 3, abs=1e-6)
    assert "Decision(allowed=False" in repr(denied)
    assert denied == lim.check("k", now=0.0)  # equal values compare equal
    with pytest.raises(AttributeError):
        denied.allowed = True  # frozen
    assert lim.check(b"k", 0, now=1.0).allowed  # peek with bytes key
    assert lim.reset("k") is True and lim.reset("nope") is False
    assert len(lim) == 0  # "k" and b"k" are one key, now forgotten


def test_several_quotas_and_algorithms():
    lim = Limiter(["2/second", "3/minute"], algorithm="fixed_window")
    allowed = [lim.check("k", now=t).allowed for t in (0.0, 0.1, 1.0, 1.5, 2.0)]
    assert allowed == [True, True, True, False, False]
    burst = Limiter("10/second", burst=20)
    assert sum(burst.check("b", now=0.0).allowed for _ in range(30)) == 20


def _key(step):
    if "key_hex" in step:
        return bytes.fromhex(step["key_hex"])
    return step["key"]


def test_shared_vectors(root):
    files = sorted((root / "tests" / "vectors").glob("*.json"))
    assert files
    ran = 0
    for f in files:
        v = json.loads(f.read_text())
        quotas = [(q["quota"], q["algorithm"]) for q in v["quotas"]]
        lim = Limiter(quotas, max_key_bytes=v.get("options", {}).get("max_key_bytes", 256))
        for i, step in enumerate(v["steps"]):
            op = step.get("op", "check")
            now = step["now_ns"] / 1e9
            key = _key(step)
            if op == "reset":
                if "expect_error" in step:
                    with pytest.raises(floodgate.FloodgateError) as e:
                        lim.reset(key)
                    assert e.value.code == step["expect_error"]
                else:
                    assert lim.reset(key) == step["expect_reset"]
                continue
            cost = 0 if op == "peek" else step["cost"]
            # now as float seconds: exact to the nanosecond below 2^53 ns.
            if "expect_error" in step:
                with pytest.raises(floodgate.FloodgateError) as e:
                    lim.check(key, cost, now=now)
                assert e.value.code == step["expect_error"], f"{v['name']} step {i}"
                continue
            d = lim.check(key, cost, now=now)
            exp = step["expect"]
            got = {
                "allowed": d.allowed,
                "limit": d.limit,
                "remaining": d.remaining,
                "retry_after_ns": round(d.retry_after * 1e9),
                "reset_after_ns": round(d.reset_after * 1e9),
                "quota": d.quota,
            }
            assert got == exp, f"{v['name']} step {i}"
            ran += 1
    assert ran > 30


def test_threads_admit_exactly_the_burst():
    lim = Limiter("1/hour", burst=5000)
    counts = []

    def work():
        counts.append(sum(lim.check("shared").allowed for _ in range(2500)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 5000
