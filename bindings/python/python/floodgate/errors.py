"""Floodgate's exceptions: one base, one subclass per stable core error code."""

from __future__ import annotations


class FloodgateError(Exception):
    """Base of every Floodgate error. ``code`` is the stable core code; the core
    error's fields are attributes too (``len``/``max``, ``cost``/``burst``/``quota``,
    ``location``/``line``/``detail``, ``field``/``problem``, ``store``/``detail``...),
    the same as on Node's errors."""

    code: str = "floodgate_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidQuotaError(FloodgateError, ValueError):
    """An invalid quota (zero rate or period, burst out of range)."""

    code = "invalid_quota"


class QuotaParseError(FloodgateError, ValueError):
    """A quota string that does not parse (use e.g. ``"100/minute burst 20"``)."""

    code = "quota_parse"


class UnknownAlgorithmError(FloodgateError, ValueError):
    """An unknown algorithm name."""

    code = "unknown_algorithm"


class EmptyKeyError(FloodgateError, ValueError):
    """An empty key."""

    code = "empty_key"


class KeyTooLongError(FloodgateError, ValueError):
    """A key longer than ``max_key_bytes``."""

    code = "key_too_long"


class CostExceedsBurstError(FloodgateError, ValueError):
    """A cost above the burst: it could never be allowed."""

    code = "cost_exceeds_burst"


class InvalidCostError(FloodgateError, ValueError):
    """A cost that is negative, NaN, infinite or fractional."""

    code = "invalid_cost"


class NoQuotasError(FloodgateError, ValueError):
    """No quota given."""

    code = "no_quotas"


class TooManyQuotasError(FloodgateError, ValueError):
    """More quotas than one check takes."""

    code = "too_many_quotas"


class LogLimitTooLargeError(FloodgateError, ValueError):
    """A sliding-log limit above the maximum."""

    code = "log_limit_too_large"


class InvalidOptionError(FloodgateError, ValueError):
    """An invalid option value."""

    code = "invalid_option"


class InvalidConfigError(FloodgateError, ValueError):
    """An invalid policy; the message gives the line."""

    code = "invalid_config"


class InvalidRequestError(FloodgateError, ValueError):
    """An invalid request (e.g. an empty method)."""

    code = "invalid_request"


class StoreUnavailableError(FloodgateError, ConnectionError):
    """The store (Redis) cannot be reached or refused the credentials."""

    code = "store_unavailable"


class StoreMismatchError(FloodgateError, ValueError):
    """A shared-memory table made for other quotas, another size or another
    build, or corrupt: every worker must load the same quotas (``.path``,
    ``.problem``)."""

    code = "store_mismatch"


class AlreadySettledError(FloodgateError, ValueError):
    """``Engine.settle`` called a second time for one verdict: the first
    settlement stands and nothing is given back twice."""

    code = "already_settled"


__all__ = [
    "FloodgateError",
    "InvalidQuotaError",
    "QuotaParseError",
    "UnknownAlgorithmError",
    "EmptyKeyError",
    "KeyTooLongError",
    "CostExceedsBurstError",
    "InvalidCostError",
    "NoQuotasError",
    "TooManyQuotasError",
    "LogLimitTooLargeError",
    "InvalidOptionError",
    "InvalidConfigError",
    "InvalidRequestError",
    "StoreUnavailableError",
    "StoreMismatchError",
    "AlreadySettledError",
]
