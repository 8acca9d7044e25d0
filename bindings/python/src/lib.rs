//! `floodgate._floodgate`: the PyO3 module behind the `floodgate` Python package.
//! Thin: every decision is the core's; this file converts types, errors and the
//! GIL. Objects are frozen and hold the core objects directly (they are `Sync`),
//! so there is no lock in the wrapper.

use std::sync::Arc;
use std::time::Duration;

use floodgate::policy::{Engine, Event, EventSummary, LogLevel, OwnedRequest, Summary, Verdict};
use floodgate::{Algorithm, Decision, ErrorKind, FailMode, Limiter, Quota, RedisLimiter};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

mod aio;
mod middleware;

/// The exception class name for a core error kind (defined in
/// `floodgate/errors.py`, where the ValueError / ConnectionError bases are set).
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidQuota => "InvalidQuotaError",
        ErrorKind::QuotaParse => "QuotaParseError",
        ErrorKind::UnknownAlgorithm => "UnknownAlgorithmError",
        ErrorKind::EmptyKey => "EmptyKeyError",
        ErrorKind::KeyTooLong => "KeyTooLongError",
        ErrorKind::CostExceedsBurst => "CostExceedsBurstError",
        ErrorKind::InvalidCost => "InvalidCostError",
        ErrorKind::NoQuotas => "NoQuotasError",
        ErrorKind::TooManyQuotas => "TooManyQuotasError",
        ErrorKind::LogLimitTooLarge => "LogLimitTooLargeError",
        ErrorKind::InvalidOption => "InvalidOptionError",
        ErrorKind::InvalidConfig => "InvalidConfigError",
        ErrorKind::InvalidRequest => "InvalidRequestError",
        ErrorKind::StoreUnavailable => "StoreUnavailableError",
        ErrorKind::StoreMismatch => "StoreMismatchError",
        ErrorKind::AlreadySettled => "AlreadySettledError",
    }
}

/// The exception of a core error: its class by kind, `.code`, and the error's
/// fields (`Error::fields`: `.len`, `.max`, `.location`, `.line`...) as attributes.
fn to_py(e: floodgate::Error) -> PyErr {
    let msg = e.to_string();
    Python::attach(|py| {
        let made = py
            .import("floodgate.errors")
            .and_then(|m| m.getattr(class_name(e.kind())))
            .and_then(|cls| cls.call1((msg.clone(), e.kind().code())))
            .and_then(|exc| {
                for (name, value) in e.fields() {
                    match value {
                        floodgate::ErrorField::Number(v) => exc.setattr(name, v)?,
                        floodgate::ErrorField::Text(v) => exc.setattr(name, v)?,
                    }
                }
                Ok(exc)
            });
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(err) => err,
        }
    })
}

/// Whether `address` is where a reverse proxy usually sits (loopback,
/// private, link-local, carrier-grade NAT: the core's `is_proxy_address`, the
/// list every front end's warning uses); false for text that is no address.
#[pyfunction]
fn is_proxy_address(address: &str) -> bool {
    address
        .parse()
        .is_ok_and(floodgate::policy::is_proxy_address)
}

/// The stable code of every core error kind, with its exception class name.
#[pyfunction]
fn error_codes() -> Vec<(&'static str, &'static str)> {
    ErrorKind::ALL
        .iter()
        .map(|k| (k.code(), class_name(*k)))
        .collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Seconds (float) to a Duration, refusing NaN, infinities and negatives.
fn duration(name: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, not {s}"
        ))
    })
}

/// A key: `str` (UTF-8 encoded) or `bytes`.
fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    if let Ok(s) = key.cast::<PyString>() {
        // Borrowed: the UTF-8 buffer CPython caches on the str (abi3 >= 3.10).
        return Ok(std::borrow::Cow::Borrowed(s.to_str()?.as_bytes()));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(std::borrow::Cow::Borrowed(b.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "key must be str or bytes, not {}",
        key.get_type().name()?
    )))
}

/// A cost: a non-negative int (bool refused).
fn cost(cost: &Bound<'_, PyAny>) -> PyResult<u64> {
    if cost.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err("cost must be an int, not bool"));
    }
    if !cost.is_instance_of::<pyo3::types::PyInt>() {
        if let Ok(f) = cost.cast::<pyo3::types::PyFloat>().map(|f| f.value()) {
            return floodgate::Error::cost_from_f64(f).map_err(to_py);
        }
        return Err(PyTypeError::new_err(format!(
            "cost must be an int, not {}",
            cost.get_type().name()?
        )));
    }
    match cost.extract::<i128>() {
        Ok(c) if c >= 0 => Ok(u64::try_from(c).unwrap_or(u64::MAX)),
        _ => Err(to_py(floodgate::Error::InvalidCost {
            problem: floodgate::CostProblem::Negative,
        })),
    }
}

/// The answer to a check. Frozen.
#[pyclass(frozen, eq, module = "floodgate", name = "Decision")]
#[derive(Debug, Clone, PartialEq)]
struct PyDecision {
    /// Let the request through.
    #[pyo3(get)]
    allowed: bool,
    /// The deciding quota's limit (its burst).
    #[pyo3(get)]
    limit: u64,
    /// Units left of it.
    #[pyo3(get)]
    remaining: u64,
    /// Seconds until a retry can be allowed (0.0 when allowed).
    #[pyo3(get)]
    retry_after: f64,
    /// Seconds until the quota is full again.
    #[pyo3(get)]
    reset_after: f64,
    /// Index of the deciding quota.
    #[pyo3(get)]
    quota: usize,
}

#[pymethods]
impl PyDecision {
    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, limit={}, remaining={}, retry_after={:.6}, reset_after={:.6}, quota={})",
            if self.allowed { "True" } else { "False" },
            self.limit,
            self.remaining,
            self.retry_after,
            self.reset_after,
            self.quota
        )
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }
}

impl From<Decision> for PyDecision {
    fn from(d: Decision) -> Self {
        PyDecision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after: secs(d.retry_after),
            reset_after: secs(d.reset_after),
            quota: d.quota,
        }
    }
}

/// Quotas from a string, or a list of strings or `(string, algorithm)` pairs.
fn quotas(quota: &Bound<'_, PyAny>, burst: Option<u64>, algorithm: &str) -> PyResult<Vec<Quota>> {
    let default: Algorithm = algorithm.parse().map_err(to_py)?;
    let items: Vec<(String, Option<String>)> = if let Ok(s) = quota.extract::<String>() {
        vec![(s, None)]
    } else {
        quota
            .try_iter()
            .map_err(|_| {
                PyTypeError::new_err("quota must be a string like \"100/minute\" or a list of them")
            })?
            .map(|item| {
                let item = item?;
                if let Ok(s) = item.extract::<String>() {
                    Ok((s, None))
                } else {
                    item.extract::<(String, String)>()
                        .map(|(q, a)| (q, Some(a)))
                        .map_err(|_| {
                            PyTypeError::new_err(
                                "each quota must be a string or a (quota, algorithm) pair",
                            )
                        })
                }
            })
            .collect::<PyResult<_>>()?
    };
    items
        .iter()
        .map(|(text, alg)| {
            let mut q: Quota = text.parse().map_err(to_py)?;
            if let Some(b) = burst {
                q = q.with_burst(b).map_err(to_py)?;
            }
            let a = match alg {
                Some(a) => a.parse().map_err(to_py)?,
                None => default,
            };
            q.with_algorithm(a).map_err(to_py)
        })
        .collect()
}

/// An in-memory rate limiter: `Limiter("100/minute", burst=20, algorithm="gcra")`;
/// with `shared_memory="/dev/shm/NAME"`, one exact limit across every worker
/// process of the machine that opens the same table.
#[pyclass(frozen, module = "floodgate", name = "Limiter")]
struct PyLimiter {
    inner: Limiter,
}

#[pymethods]
impl PyLimiter {
    #[new]
    #[pyo3(signature = (quota, *, burst=None, algorithm="gcra", max_keys=1_000_000, max_key_bytes=256, shared_memory=None))]
    fn new(
        quota: &Bound<'_, PyAny>,
        burst: Option<u64>,
        algorithm: &str,
        max_keys: usize,
        max_key_bytes: usize,
        shared_memory: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let mut builder = Limiter::builder()
            .quotas(quotas(quota, burst, algorithm)?)
            .max_keys(max_keys)
            .max_key_bytes(max_key_bytes);
        if let Some(path) = shared_memory {
            builder = builder.shared_memory(path);
        }
        let inner = builder.build().map_err(to_py)?;
        Ok(PyLimiter { inner })
    }

    /// Checks `cost` units for `key` (str or bytes), charging them if allowed;
    /// `cost=0` peeks. `now` (seconds, any epoch) replaces the clock for replays.
    /// Keeps the GIL: the check takes well under a microsecond.
    #[pyo3(signature = (key, cost=None, *, now=None))]
    fn check(
        &self,
        key: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
        now: Option<f64>,
    ) -> PyResult<PyDecision> {
        let key = key_bytes(key)?;
        let c = match cost {
            Some(c) => self::cost(c)?,
            None => 1,
        };
        let d = match now {
            Some(t) => self.inner.check_at(&key, c, duration("now", t)?),
            None => self.inner.check(&key, c),
        };
        d.map(PyDecision::from).map_err(to_py)
    }

    /// Forgets `key`; True if it was held.
    fn reset(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.inner.reset(key_bytes(key)?.as_ref()).map_err(to_py)
    }

    /// Keys held now.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The shared-memory table's path, or None for the in-process store.
    #[getter]
    fn shared_memory(&self) -> Option<String> {
        self.inner
            .shared_memory_path()
            .map(|p| p.display().to_string())
    }

    fn __repr__(&self) -> String {
        let shared = self
            .inner
            .shared_memory_path()
            .map(|p| format!(", shared_memory={:?}", p.display().to_string()))
            .unwrap_or_default();
        format!(
            "Limiter(quotas={:?}, keys={}{shared})",
            self.inner
                .quotas()
                .iter()
                .map(|q| q.to_string())
                .collect::<Vec<_>>(),
            self.inner.len()
        )
    }
}

/// Runs `call` on the core's background tokio runtime and returns an asyncio
/// future of the running loop that its result settles (through the loop's
/// inbox, `_aio.py`: no tokio thread takes the GIL).
fn on_loop<'py>(
    py: Python<'py>,
    call: impl std::future::Future<Output = aio::Done> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    let rt = floodgate::background_runtime().map_err(to_py)?;
    // `_aio.register`, looked up once rather than imported per call.
    static REGISTER: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let (future, id, inbox): (Bound<'py, PyAny>, u64, Bound<'py, aio::Inbox>) = REGISTER
        .import(py, "floodgate._aio", "register")?
        .call0()?
        .extract()?;
    let inbox = inbox.unbind();
    rt.spawn(async move {
        let done = call.await;
        inbox.get().push(id, done);
    });
    Ok(future)
}

/// A rate limiter on Redis, shared by every process using the same Redis:
/// `RedisLimiter("redis://127.0.0.1:6379/", "100/minute", fail_mode="local")`.
#[pyclass(frozen, module = "floodgate", name = "RedisLimiter")]
struct PyRedisLimiter {
    inner: Arc<RedisLimiter>,
}

#[pymethods]
impl PyRedisLimiter {
    #[new]
    #[pyo3(signature = (url, quota, *, burst=None, algorithm="gcra", fail_mode="local", timeout=None, prefix="fg", lease=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &str,
        quota: &Bound<'_, PyAny>,
        burst: Option<u64>,
        algorithm: &str,
        fail_mode: &str,
        timeout: Option<f64>,
        prefix: &str,
        lease: u64,
    ) -> PyResult<Self> {
        let qs = quotas(quota, burst, algorithm)?;
        let mode: FailMode = fail_mode.parse().map_err(to_py)?;
        // None: the core's default.
        let t = timeout.map(|t| duration("timeout", t)).transpose()?;
        let mut b = RedisLimiter::builder(url)
            .timeouts(t)
            .fail_mode(mode)
            .prefix(prefix);
        if lease > 0 {
            b = b.lease(lease, Duration::from_secs(1));
        }
        for q in qs {
            b = b.quota(q);
        }
        let inner = py.detach(|| b.build()).map_err(to_py)?;
        Ok(PyRedisLimiter {
            inner: Arc::new(inner),
        })
    }

    /// Checks on Redis (one round trip, GIL released; at most `timeout`).
    #[pyo3(signature = (key, cost=None, *, now=None))]
    fn check(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
        now: Option<f64>,
    ) -> PyResult<PyDecision> {
        let key = key_bytes(key)?;
        let c = match cost {
            Some(c) => self::cost(c)?,
            None => 1,
        };
        let now = now.map(|t| duration("now", t)).transpose()?;
        let d = py.detach(|| match now {
            Some(t) => self.inner.check_at(&key, c, t),
            None => self.inner.check(&key, c),
        });
        d.map(PyDecision::from).map_err(to_py)
    }

    /// `await limiter.check_async(key)`: the check as an asyncio future. The
    /// round trip runs on a tokio worker over one multiplexed connection, so
    /// concurrent checks from many tasks are pipelined and the loop never waits;
    /// the result comes back through the loop's own reader (see `_aio.py`), never
    /// by taking the GIL from another thread.
    #[pyo3(signature = (key, cost=None))]
    fn check_async<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = key_bytes(key)?.into_owned();
        let c = match cost {
            Some(c) => self::cost(c)?,
            None => 1,
        };
        let limiter = Arc::clone(&self.inner);
        on_loop(py, async move {
            aio::Done::Decision(limiter.check_async(&key, c).await)
        })
    }

    /// Forgets `key` in Redis.
    fn reset(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = key_bytes(key)?;
        py.detach(|| self.inner.reset(key.as_ref())).map_err(to_py)
    }

    /// Checks answered by the fail mode so far.
    #[getter]
    fn fallbacks(&self) -> u64 {
        self.inner.fallbacks()
    }
}

/// The answer to a request. Frozen.
#[pyclass(frozen, module = "floodgate", name = "Verdict")]
struct PyVerdict {
    /// Let the request through.
    #[pyo3(get)]
    allowed: bool,
    /// The HTTP status to answer: 200, 429, 403 or 401.
    #[pyo3(get)]
    status: u16,
    /// Seconds the client must wait (0.0 unless 429 or banned).
    #[pyo3(get)]
    retry_after: f64,
    /// Response headers to set, as (name, value) pairs.
    #[pyo3(get)]
    headers: Py<PyList>,
    /// The deciding rule, if any.
    #[pyo3(get)]
    rule: Option<String>,
    /// The deciding rule's key (may contain a user id).
    #[pyo3(get)]
    identity: Option<String>,
    /// Why: allowed, no_rule, allow_listed, rate_limited, banned, deny_listed,
    /// unauthorized, concurrency.
    #[pyo3(get)]
    reason: &'static str,
    /// The deciding quota's limit, and what is left of it.
    #[pyo3(get)]
    limit: u64,
    #[pyo3(get)]
    remaining: u64,
    /// The request carried a verified token.
    #[pyo3(get)]
    authenticated: bool,
    /// Why a token was refused, if one was.
    #[pyo3(get)]
    token_problem: Option<&'static str>,
    /// Seconds until the deciding quota is full again.
    #[pyo3(get)]
    reset_after: f64,
    /// The JSON body to answer a denial with (empty when allowed), built by the
    /// core so every front end sends the same one.
    #[pyo3(get)]
    body: Py<PyBytes>,
    /// What `Engine.settle` gives back or charges (only for rules with `count`,
    /// `cost_from = "response"` or `max_in_flight`).
    settlement: Option<floodgate::policy::Settlement>,
}

#[pymethods]
impl PyVerdict {
    fn __repr__(&self) -> String {
        format!(
            "Verdict(allowed={}, status={}, reason={:?}, rule={:?}, retry_after={:.3})",
            if self.allowed { "True" } else { "False" },
            self.status,
            self.reason,
            self.rule,
            self.retry_after
        )
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }

    /// Whether `Engine.settle` has something to do for this verdict (a rule
    /// with `count`, `cost_from = "response"` or `max_in_flight` admitted it)
    /// and it was not settled yet.
    #[getter]
    fn needs_settle(&self) -> bool {
        self.settlement.as_ref().is_some_and(|s| !s.is_settled())
    }
}

fn verdict(py: Python<'_>, v: Verdict) -> PyResult<PyVerdict> {
    let headers = PyList::empty(py);
    for (name, value) in &v.headers {
        headers.append(PyTuple::new(py, [name.to_string(), value.clone()])?)?;
    }
    Ok(PyVerdict {
        allowed: v.allowed,
        status: v.status,
        retry_after: secs(v.retry_after),
        headers: headers.unbind(),
        rule: v.rule.as_deref().map(str::to_string),
        identity: v.identity.clone(),
        reason: v.reason.code(),
        limit: v.limit,
        remaining: v.remaining,
        authenticated: v.authenticated,
        token_problem: v.token_problem.map(|p| p.code()),
        reset_after: secs(v.reset_after),
        body: PyBytes::new(py, v.body().as_bytes()).unbind(),
        settlement: v.settlement,
    })
}

/// A policy engine: `Engine.from_file("policy.toml")`, `Engine.from_toml(text)`,
/// `Engine.from_dict({...})`.
#[pyclass(frozen, module = "floodgate", name = "Engine")]
struct PyEngine {
    inner: Arc<Engine>,
    /// `Engine::may_block()`: a rule on Redis (the GIL is released for checks).
    blocking: bool,
}

/// Seconds between the `floodgate` logger's summary lines.
const SUMMARY_SECS: u64 = 10;

fn py_level(level: LogLevel) -> i32 {
    match level {
        LogLevel::Debug => 10,
        LogLevel::Info => 20,
        LogLevel::Warning => 30,
    }
}

fn logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("logging")?
        .call_method1("getLogger", ("floodgate",))
}

fn debug_enabled(py: Python<'_>) -> bool {
    logger(py)
        .and_then(|l| l.call_method1("isEnabledFor", (10,))?.extract::<bool>())
        .unwrap_or(false)
}

/// The core's logging policy on the `floodgate` logger: state changes (Redis
/// fallback at WARNING, recovery at INFO) as they happen; per-request events at
/// DEBUG only when DEBUG is enabled (checked at start and with each summary, so
/// the GIL is not taken per denial); one summary line per interval, at WARNING
/// when it counts bans, else INFO.
fn forward_events(py: Python<'_>, engine: &Engine) {
    let summary = EventSummary::new(Duration::from_secs(SUMMARY_SECS));
    let debug = Arc::new(std::sync::atomic::AtomicBool::new(debug_enabled(py)));
    engine.set_event_sink(move |e: &Event| {
        use std::sync::atomic::Ordering::Relaxed;
        let due = summary.record(e);
        let each = e.kind.is_state_change() || debug.load(Relaxed);
        if due.is_none() && !each {
            return;
        }
        Python::attach(|py| {
            if let Some(s) = &due {
                let _ = log_summary(py, s);
                debug.store(debug_enabled(py), Relaxed);
            }
            if each {
                let _ = log_event(py, e);
            }
        });
    });
}

fn log_summary(py: Python<'_>, s: &Summary) -> PyResult<()> {
    let extra = PyDict::new(py);
    extra.set_item("floodgate_event", "summary")?;
    extra.set_item("floodgate_interval", s.interval.as_secs_f64())?;
    extra.set_item("floodgate_events", s.total())?;
    let kw = PyDict::new(py);
    kw.set_item("extra", extra)?;
    logger(py)?.call_method("log", (py_level(s.level()), s.to_string()), Some(&kw))?;
    Ok(())
}

/// Logs one event to the `floodgate` logger at its level (state changes) or
/// DEBUG, with the fields in `extra` (prefixed `floodgate_`).
fn log_event(py: Python<'_>, e: &Event) -> PyResult<()> {
    let logger = logger(py)?;
    let level = py_level(e.kind.log_level());
    if !logger
        .call_method1("isEnabledFor", (level,))?
        .extract::<bool>()?
    {
        return Ok(());
    }
    let extra = PyDict::new(py);
    extra.set_item("floodgate_event", e.kind.code())?;
    extra.set_item("floodgate_rule", e.rule.as_deref())?;
    extra.set_item("floodgate_client_ip", e.client_ip.map(|ip| ip.to_string()))?;
    extra.set_item("floodgate_key", e.key.as_deref())?;
    extra.set_item("floodgate_status", e.status)?;
    extra.set_item("floodgate_retry_after", secs(e.retry_after))?;
    extra.set_item("floodgate_token_problem", e.token_problem.map(|p| p.code()))?;
    let kw = PyDict::new(py);
    kw.set_item("extra", extra)?;
    let msg = format!(
        "floodgate {} rule={} status={}",
        e.kind.code(),
        e.rule.as_deref().unwrap_or("-"),
        e.status
    );
    logger.call_method("log", (level, msg), Some(&kw))?;
    Ok(())
}

impl PyEngine {
    fn wrap(py: Python<'_>, inner: Engine) -> Self {
        forward_events(py, &inner);
        let blocking = inner.may_block();
        PyEngine {
            inner: Arc::new(inner),
            blocking,
        }
    }

    /// The request as the core takes it: only the headers the policy reads
    /// are converted to Rust strings.
    fn owned_request(
        &self,
        method: &str,
        path: &str,
        client_ip: Option<&str>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<OwnedRequest> {
        let mut request = OwnedRequest::new(method, path, client_ip).map_err(to_py)?;
        let mut add = |k: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>| -> PyResult<()> {
            let name = k.cast::<PyString>()?.to_cow()?;
            if self.inner.reads_header(&name) {
                request.header(name.into_owned(), v.extract::<String>()?);
            }
            Ok(())
        };
        match headers {
            None => {}
            Some(h) => {
                if let Ok(d) = h.cast::<PyDict>() {
                    for (k, v) in d.iter() {
                        add(&k, &v)?;
                    }
                } else {
                    let pairs = if h.hasattr("items")? {
                        h.call_method0("items")?.try_iter()?
                    } else {
                        h.try_iter()?
                    };
                    for kv in pairs {
                        let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = kv?.extract()?;
                        add(&k, &v)?;
                    }
                }
            }
        }
        Ok(request)
    }
}

#[pymethods]
impl PyEngine {
    /// An engine from a policy file (TOML, or JSON if it ends in .json).
    #[staticmethod]
    fn from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let e = py.detach(|| Engine::from_path(&path)).map_err(to_py)?;
        Ok(Self::wrap(py, e))
    }

    /// An engine from TOML text.
    #[staticmethod]
    fn from_toml(py: Python<'_>, text: &str) -> PyResult<Self> {
        let e = py.detach(|| Engine::from_toml_str(text)).map_err(to_py)?;
        Ok(Self::wrap(py, e))
    }

    /// An engine from a dict shaped like the TOML file (`{"rule": [...]}`).
    #[staticmethod]
    fn from_dict(py: Python<'_>, policy: &Bound<'_, PyDict>) -> PyResult<Self> {
        let json = py.import("json")?.call_method1("dumps", (policy,))?;
        let text: String = json.extract()?;
        let e = py.detach(|| Engine::from_json_str(&text)).map_err(to_py)?;
        Ok(Self::wrap(py, e))
    }

    /// Decides one request. `headers` is a mapping or a list of (name, value)
    /// pairs; `client_ip` the socket peer (or what a trusted proxy reported);
    /// `now` (Unix seconds) replaces the clock for replays and tests.
    /// `body` (bytes): the whole request body, for rules keyed by a body
    /// field (`key = "body:username"`); read it when `reads_body` says so.
    #[pyo3(signature = (*, method, path, client_ip=None, headers=None, now=None, body=None))]
    #[allow(clippy::too_many_arguments)]
    fn check_request(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        client_ip: Option<&str>,
        headers: Option<&Bound<'_, PyAny>>,
        now: Option<f64>,
        body: Option<&[u8]>,
    ) -> PyResult<PyVerdict> {
        let mut request = self.owned_request(method, path, client_ip, headers)?;
        request.body = body.map(<[u8]>::to_vec);
        let now = now.map(|t| duration("now", t)).transpose()?;
        let run = || self.inner.check_owned(&request, now);
        let v = if self.blocking { py.detach(run) } else { run() }.map_err(to_py)?;
        verdict(py, v)
    }

    /// The middlewares' check (`floodgate.asgi`, `.wsgi`, `.django`; not API):
    /// the response headers to add, as a list of pairs (`(bytes, bytes)` with
    /// lower-case names when `asgi`, else `(str, str)`), when the request is
    /// allowed with nothing to settle; otherwise the `Verdict`. `headers`: a
    /// list of `(name, value)` pairs, str or bytes.
    #[pyo3(signature = (method, path, client_ip, headers, asgi, body=None))]
    #[allow(clippy::too_many_arguments)]
    fn _check_middleware<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        path: &str,
        client_ip: Option<&str>,
        headers: &Bound<'py, PyAny>,
        asgi: bool,
        body: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyAny>> {
        middleware::check(
            py,
            &self.inner,
            self.blocking,
            middleware::Target { method, path, body },
            client_ip,
            headers,
            asgi,
        )
    }

    /// Whether a rule that `method` and `path` meet keys on a field of the
    /// request body (`key = "body:username"`): read the body (at most
    /// `MAX_BODY_BYTES`, else answer 413) and pass it as `body=` for these
    /// requests only.
    fn reads_body(&self, method: &str, path: &str) -> bool {
        self.inner.reads_body(method, path)
    }

    /// The WSGI middleware's reader (`floodgate.wsgi`): `keys` are the
    /// (environ key, header name) pairs to read, `trusted` the proxies whose
    /// `forwarded_header` names the client.
    #[pyo3(signature = (keys, trusted, forwarded_header))]
    fn _wsgi_reader(
        &self,
        py: Python<'_>,
        keys: Vec<(String, String)>,
        trusted: Option<PyRef<'_, PyTrustedProxies>>,
        forwarded_header: &str,
    ) -> middleware::WsgiReader {
        middleware::WsgiReader::new(
            py,
            Arc::clone(&self.inner),
            self.blocking,
            keys,
            trusted.map(|t| t.0.clone()),
            forwarded_header,
        )
    }

    /// Settles an admitted request once its response is known: gives back the
    /// charge of rules that do not count `status` (`count = "failures"`...),
    /// replaces the estimate by `cost` on rules with `cost_from = "response"`,
    /// and frees the request's places in flight. Raises `AlreadySettledError`
    /// the second time. A verdict with nothing to settle is a no-op.
    #[pyo3(signature = (verdict, *, status, cost=None, now=None))]
    fn settle(
        &self,
        py: Python<'_>,
        verdict: &PyVerdict,
        status: i64,
        cost: Option<f64>,
        now: Option<f64>,
    ) -> PyResult<()> {
        let Some(settlement) = &verdict.settlement else {
            return Ok(());
        };
        let status = u16::try_from(status).unwrap_or(0);
        let cost = cost
            .map(floodgate::Error::cost_from_f64)
            .transpose()
            .map_err(to_py)?;
        let now = now.map(|t| duration("now", t)).transpose()?;
        let outcome = floodgate::policy::Settle { status, cost };
        let run = || self.inner.settle_settlement(Some(settlement), outcome, now);
        if self.blocking { py.detach(run) } else { run() }.map_err(to_py)
    }

    /// `await engine.check_request_async(...)`: the request decided without
    /// holding a thread while Redis answers. The round trips run on a tokio
    /// worker over one multiplexed connection (pipelined with every other
    /// pending check), and the verdict comes back through the running loop's
    /// own reader; an in-memory engine answers as fast as `check_request`.
    #[pyo3(signature = (*, method, path, client_ip=None, headers=None, body=None))]
    fn check_request_async<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        path: &str,
        client_ip: Option<&str>,
        headers: Option<&Bound<'py, PyAny>>,
        body: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut request = self.owned_request(method, path, client_ip, headers)?;
        request.body = body.map(<[u8]>::to_vec);
        let engine = Arc::clone(&self.inner);
        on_loop(py, async move {
            aio::Done::Verdict(engine.check_owned_async(&request).await)
        })
    }

    /// `await engine.settle_async(verdict, status=..., cost=...)`: `settle`
    /// without holding a thread while Redis answers.
    #[pyo3(signature = (verdict, *, status, cost=None))]
    fn settle_async<'py>(
        &self,
        py: Python<'py>,
        verdict: &PyVerdict,
        status: i64,
        cost: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let settlement = verdict.settlement.clone();
        let status = u16::try_from(status).unwrap_or(0);
        let cost = cost
            .map(floodgate::Error::cost_from_f64)
            .transpose()
            .map_err(to_py)?;
        let engine = Arc::clone(&self.inner);
        on_loop(py, async move {
            let outcome = floodgate::policy::Settle { status, cost };
            aio::Done::Settled(
                engine
                    .settle_settlement_async(settlement.as_ref(), outcome)
                    .await,
            )
        })
    }

    /// Changes the policy without a restart: `path` (or, with neither
    /// argument, the file the engine was made from, read again) or `toml`
    /// text. The new policy is compiled and checked first; on any error the
    /// running policy stays and `InvalidConfigError` says why. Returns what
    /// happened to each rule: `{"kept": [...], "reset": [...], "added": [...],
    /// "removed": [...]}` (kept rules keep their counters exactly).
    #[pyo3(signature = (path=None, *, toml=None))]
    fn reload<'py>(
        &self,
        py: Python<'py>,
        path: Option<std::path::PathBuf>,
        toml: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let report = py
            .detach(|| match (path, toml) {
                (Some(p), None) => self.inner.reload_with(p),
                (None, Some(t)) => self.inner.reload_toml_str(t),
                (None, None) => self.inner.reload(),
                (Some(_), Some(_)) => Err(floodgate::Error::InvalidOption {
                    option: "reload",
                    problem: "give a path or toml text, not both",
                }),
            })
            .map_err(to_py)?;
        let out = PyDict::new(py);
        out.set_item("kept", report.kept)?;
        out.set_item("carried", report.carried)?;
        out.set_item("reset", report.reset)?;
        out.set_item("added", report.added)?;
        out.set_item("removed", report.removed)?;
        Ok(out)
    }

    /// The counters, as Prometheus text.
    fn metrics(&self) -> String {
        self.inner.metrics()
    }

    /// The effective rules, as `floodgate check-config` prints them.
    fn describe(&self) -> String {
        self.inner.describe()
    }

    /// The request headers the policy reads, lower case: the middleware pass
    /// only these (the rest cannot change a verdict).
    #[getter]
    fn request_headers(&self) -> Vec<String> {
        self.inner.request_headers().to_vec()
    }

    /// Whether checks may wait on Redis (then the middleware use
    /// `check_request_async`, which holds no thread while it waits).
    #[getter]
    fn blocking(&self) -> bool {
        self.blocking
    }
}

/// Trusted proxies (`floodgate._web.networks`): the core's rules for the
/// client address behind them, so every front end follows one algorithm.
#[pyclass(name = "TrustedProxies", module = "floodgate._floodgate", frozen)]
struct PyTrustedProxies(floodgate::policy::TrustedProxies);

#[pymethods]
impl PyTrustedProxies {
    #[new]
    fn new(trusted: Vec<String>) -> PyResult<Self> {
        floodgate::policy::TrustedProxies::new(trusted)
            .map(Self)
            .map_err(to_py)
    }

    fn __bool__(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `unix:` is trusted: a peer without an address (a Unix-domain
    /// socket) is a trusted proxy.
    #[getter]
    fn unix(&self) -> bool {
        self.0.trusts_unix_socket()
    }

    /// Whether `peer` (`None`: a Unix socket) is a trusted proxy; text that is
    /// no address is not.
    #[pyo3(signature = (peer))]
    fn trusts(&self, peer: Option<&str>) -> bool {
        match peer {
            Some(p) => {
                floodgate::policy::parse_client_ip(p).is_ok_and(|ip| self.0.trusts_peer(Some(ip)))
            }
            None => self.0.trusts_peer(None),
        }
    }

    /// The client of a request from `peer` whose forwarding header `header`
    /// had `values` (in order). `peer` `None` is a Unix-domain socket: its
    /// header is read only if `unix:` is trusted. `None` when there is no
    /// client address (or `peer` is text that is no address).
    #[pyo3(signature = (peer, values, header))]
    fn client_ip(&self, peer: Option<&str>, values: Vec<String>, header: &str) -> Option<String> {
        let peer = match peer {
            Some(p) => Some(floodgate::policy::parse_client_ip(p).ok()?),
            None => None,
        };
        let forwarded = header.eq_ignore_ascii_case("forwarded");
        self.0
            .client_ip_of(peer, values.iter().map(String::as_str), forwarded)
            .map(|ip| ip.to_string())
    }
}

#[pymodule(gil_used = false)]
fn _floodgate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<aio::Inbox>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyDecision>()?;
    m.add_class::<PyLimiter>()?;
    m.add_class::<PyRedisLimiter>()?;
    m.add_class::<PyVerdict>()?;
    m.add_class::<PyEngine>()?;
    m.add_class::<PyTrustedProxies>()?;
    m.add_class::<middleware::WsgiReader>()?;
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    m.add_function(wrap_pyfunction!(is_proxy_address, m)?)?;
    m.add(
        "VERDICT_FIELDS",
        floodgate::policy::Verdict::FIELDS.to_vec(),
    )?;
    m.add("MAX_BODY_BYTES", floodgate::policy::MAX_BODY_BYTES)?;
    m.add(
        "TOO_LARGE_BODY",
        PyBytes::new(
            m.py(),
            floodgate::policy::denial_body(413, Duration::ZERO, None).as_bytes(),
        ),
    )?;
    m.add(
        "BAD_REQUEST_BODY",
        PyBytes::new(
            m.py(),
            floodgate::policy::denial_body(400, Duration::ZERO, None).as_bytes(),
        ),
    )?;
    Ok(())
}
