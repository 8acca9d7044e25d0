//! The middleware's check (`floodgate.asgi`, `floodgate.wsgi`,
//! `floodgate.django`): `Engine._check_middleware`.
//!
//! Most requests a middleware sees are allowed with nothing to settle, and all
//! it does with those is add the rate-limit headers to the response. This path
//! decides into a per-thread [`VerdictBuf`] (the core's allocation-free
//! `check_request_into`), reads the request's strings in place instead of
//! copying them into an `OwnedRequest`, and for such a request returns only the
//! headers to add, already shaped for the server: `(bytes, bytes)` pairs with
//! lower-case names for ASGI, `(str, str)` pairs for WSGI and Django, their
//! names made once. Any other verdict (a denial, a verdict to settle) comes
//! back as the `Verdict` object `check_request` returns.

use std::borrow::Cow;
use std::cell::RefCell;

use floodgate::policy::{
    Engine, RESPONSE_HEADERS, Request, VerdictBuf, parse_client_ip, response_header_index,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

thread_local! {
    /// Each thread's verdict buffer: its strings are reused request after request.
    static BUF: RefCell<VerdictBuf> = RefCell::new(VerdictBuf::new());
}

/// The response header names, made once: lower-case bytes (ASGI) and strings.
struct Names {
    asgi: Vec<Py<PyBytes>>,
    text: Vec<Py<PyString>>,
}

static NAMES: PyOnceLock<Names> = PyOnceLock::new();

fn names(py: Python<'_>) -> &Names {
    NAMES.get_or_init(py, || Names {
        asgi: RESPONSE_HEADERS
            .iter()
            .map(|n| PyBytes::new(py, n.to_ascii_lowercase().as_bytes()).unbind())
            .collect(),
        text: RESPONSE_HEADERS
            .iter()
            .map(|n| PyString::intern(py, n).unbind())
            .collect(),
    })
}

/// A header name or value as text: `str` as is; `bytes` (ASGI) borrowed when
/// ASCII, else decoded as Latin-1 (what Starlette does).
fn text<'a>(v: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Cow<'a, str>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        return Ok(match std::str::from_utf8(bytes) {
            Ok(s) if s.is_ascii() => Cow::Borrowed(s),
            _ => Cow::Owned(bytes.iter().map(|&c| char::from(c)).collect()),
        });
    }
    match v.cast::<PyString>() {
        Ok(s) => Ok(s.to_cow()?),
        Err(_) => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{what} must be str or bytes"
        ))),
    }
}

/// Decides a request for a middleware; see the module docs. `headers`: a list
/// of `(name, value)` pairs, str or bytes (ASGI's `scope["headers"]` as is);
/// only those the policy reads are read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check<'py>(
    py: Python<'py>,
    engine: &Engine,
    blocking: bool,
    method: &str,
    path: &str,
    client_ip: Option<&str>,
    headers: &Bound<'py, PyAny>,
    asgi: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // The pairs the policy reads, kept alive while their text is borrowed.
    let mut kept: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = Vec::new();
    if !engine.request_headers().is_empty() && !headers.is_none() {
        for item in headers.try_iter()? {
            let item = item?;
            let pair = item.cast::<PyTuple>()?;
            let (k, v) = (pair.get_item(0)?, pair.get_item(1)?);
            if engine.reads_header(&text(&k, "a header name")?) {
                kept.push((k, v));
            }
        }
    }
    let mut texts: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::with_capacity(kept.len());
    for (k, v) in &kept {
        texts.push((text(k, "a header name")?, text(v, "a header value")?));
    }
    let pairs: Vec<(&str, &str)> = texts.iter().map(|(k, v)| (&**k, &**v)).collect();
    let client_ip = client_ip
        .map(parse_client_ip)
        .transpose()
        .map_err(crate::to_py)?;
    let req = Request {
        method,
        path,
        client_ip,
        headers: &pairs,
    };
    BUF.with(|cell| {
        // A check re-entered on this thread (a logging handler that checks)
        // decides into a buffer of its own.
        let mut fresh;
        let mut held = cell.try_borrow_mut();
        let buf: &mut VerdictBuf = match &mut held {
            Ok(b) => b,
            Err(_) => {
                fresh = VerdictBuf::new();
                &mut fresh
            }
        };
        let mut run = || engine.check_request_into(&req, None, buf);
        if blocking { py.detach(run) } else { run() }.map_err(crate::to_py)?;
        let v = buf.verdict();
        if !v.allowed || v.settlement.is_some() {
            return Ok(Bound::new(py, crate::verdict(py, v.clone())?)?.into_any());
        }
        let names = names(py);
        let list = PyList::empty(py);
        for (name, value) in &v.headers {
            let i = response_header_index(name).ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "header {name} is not in RESPONSE_HEADERS"
                ))
            })?;
            let pair = if asgi {
                let n = names.asgi.get(i).map(|n| n.bind(py).clone().into_any());
                (n, PyBytes::new(py, value.as_bytes()).into_any())
            } else {
                let n = names.text.get(i).map(|n| n.bind(py).clone().into_any());
                (n, PyString::new(py, value).into_any())
            };
            if let (Some(n), v) = pair {
                list.append(PyTuple::new(py, [n, v])?)?;
            }
        }
        Ok(list.into_any())
    })
}
