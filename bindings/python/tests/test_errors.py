import math

import pytest

import floodgate
from floodgate import Engine, Limiter, errors


def test_every_error_code_has_its_own_exception():
    codes = floodgate.error_codes()
    classes = {cls for _, cls in codes}
    assert len(classes) == len(codes), "one class per code"
    for code, name in codes:
        cls = getattr(floodgate, name)
        assert issubclass(cls, floodgate.FloodgateError)
        assert cls.code == code
        assert issubclass(cls, (ValueError, ConnectionError))
    assert issubclass(floodgate.StoreUnavailableError, ConnectionError)


@pytest.mark.parametrize(
    "make, exc",
    [
        (lambda: Limiter("0/second"), errors.InvalidQuotaError),
        (lambda: Limiter("ten per second"), errors.QuotaParseError),
        (lambda: Limiter("1/s", algorithm="leaky"), errors.UnknownAlgorithmError),
        (lambda: Limiter([]), errors.NoQuotasError),
        (lambda: Limiter(["1/s"] * 40), errors.TooManyQuotasError),
        (lambda: Limiter("100000/s", algorithm="sliding_log"), errors.LogLimitTooLargeError),
        (lambda: Engine.from_toml("[[rule]]\nname = 1\n"), errors.InvalidConfigError),
        (lambda: Engine.from_toml("").check_request(method="", path="/"), errors.InvalidRequestError),
        (lambda: floodgate.RedisLimiter("redis://127.0.0.1:1/", "1/s", timeout=0.05), errors.StoreUnavailableError),
        (lambda: floodgate.RedisLimiter("redis://127.0.0.1:1/", "1/s", fail_mode="maybe"), errors.InvalidOptionError),
    ],
)
def test_errors_raise_their_class(make, exc):
    with pytest.raises(exc) as e:
        make()
    assert e.value.code == exc.code
    assert str(e.value)


def test_bad_input_is_a_clear_error_and_keeps_state():
    lim = Limiter("2/second")
    assert lim.check("k", now=0.0).allowed
    for key, exc in [
        ("", errors.EmptyKeyError),
        ("x" * 300, errors.KeyTooLongError),
        (b"\xff" * 300, errors.KeyTooLongError),
        (None, TypeError),
        (12, TypeError),
    ]:
        with pytest.raises(exc):
            lim.check(key, now=0.0)
    for cost, exc in [
        (-1, errors.InvalidCostError),
        (math.nan, errors.InvalidCostError),
        (math.inf, errors.InvalidCostError),
        (1.5, errors.InvalidCostError),
        (10**30, errors.CostExceedsBurstError),
        (3, errors.CostExceedsBurstError),
        ("1", TypeError),
        (True, TypeError),
    ]:
        with pytest.raises(exc):
            lim.check("k", cost, now=0.0)
    with pytest.raises(ValueError):
        lim.check("k", now=math.nan)
    with pytest.raises(ValueError):
        lim.check("k", now=-1.0)
    # Non-UTF-8 bytes keys are fine; state is intact: one unit left.
    assert lim.check(b"\xff\xfe", now=0.0).allowed
    d = lim.check("k", now=0.0)
    assert d.allowed and d.remaining == 0


def test_errors_carry_the_core_fields():
    from floodgate import Engine, Limiter

    with pytest.raises(floodgate.KeyTooLongError) as e:
        Limiter("1/s").check("x" * 5000)
    assert e.value.len == 5000 and e.value.max < 5000
    with pytest.raises(floodgate.InvalidConfigError) as e:
        Engine.from_toml('[[rule]]\nname = "x"\nmatch = "/**"\nquotas = ["ten"]\n')
    assert e.value.line == 4 and e.value.location == "rule[0].quotas[0]" and e.value.detail
    with pytest.raises(floodgate.InvalidRequestError) as e:
        Engine.from_toml("").check_request(method="GET", path="/", client_ip="nope")
    assert e.value.field == "client_ip"
