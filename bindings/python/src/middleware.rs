//! The middleware's check (`floodgate.asgi`, `floodgate.django`):
//! `Engine._check_middleware`; and the WSGI middleware's, which reads the
//! request from the environ itself: [`WsgiReader`].
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
/// What a request asks for: its method, its target, and its body when the
/// middleware read it (`Engine::reads_body`).
pub(crate) struct Target<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a [u8]>,
}

pub(crate) fn check<'py>(
    py: Python<'py>,
    engine: &Engine,
    blocking: bool,
    target: Target<'_>,
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
        method: target.method,
        path: target.path,
        client_ip,
        headers: &pairs,
        body: target.body,
    };
    decide(py, engine, blocking, &req, asgi)
}

/// Decides `req` into this thread's buffer: the headers to add (a plain
/// allowed request), else the `Verdict`; see the module docs.
fn decide<'py>(
    py: Python<'py>,
    engine: &Engine,
    blocking: bool,
    req: &Request<'_>,
    asgi: bool,
) -> PyResult<Bound<'py, PyAny>> {
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
        let mut run = || engine.check_request_into(req, None, buf);
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

/// The WSGI middleware's check (`floodgate.wsgi`): reads what the engine needs
/// from the environ in one call (the method, `PATH_INFO`, `REMOTE_ADDR`, the
/// policy's headers and the forwarding header), as the middleware's Python did
/// line by line: the same request, without the Python objects and calls per
/// request (the middleware in a loop, `ci` profile: 2.19 -> 1.68 µs per
/// request; over HTTP on gunicorn within the host's noise, benches/README.md).
#[pyclass(module = "floodgate._floodgate", frozen)]
pub(crate) struct WsgiReader {
    engine: std::sync::Arc<Engine>,
    blocking: bool,
    /// (environ key, header name) of each header to read: `HTTP_X_API_KEY`,
    /// `x-api-key`; none when neither the policy nor a trusted proxy needs one.
    keys: Vec<(Py<PyString>, String)>,
    /// `None`: no proxy is trusted, the peer is the client.
    trusted: Option<floodgate::policy::TrustedProxies>,
    /// The forwarding header's name, lower case, and whether it is RFC 7239's.
    forwarded_header: String,
    forwarded: bool,
    method: Py<PyString>,
    path_info: Py<PyString>,
    remote_addr: Py<PyString>,
}

impl WsgiReader {
    pub(crate) fn new(
        py: Python<'_>,
        engine: std::sync::Arc<Engine>,
        blocking: bool,
        keys: Vec<(String, String)>,
        trusted: Option<floodgate::policy::TrustedProxies>,
        forwarded_header: &str,
    ) -> Self {
        let forwarded_header = forwarded_header.to_ascii_lowercase();
        Self {
            engine,
            blocking,
            keys: keys
                .into_iter()
                .map(|(key, name)| (PyString::intern(py, &key).unbind(), name))
                .collect(),
            trusted,
            forwarded: forwarded_header == "forwarded",
            forwarded_header,
            method: PyString::intern(py, "REQUEST_METHOD").unbind(),
            path_info: PyString::intern(py, "PATH_INFO").unbind(),
            remote_addr: PyString::intern(py, "REMOTE_ADDR").unbind(),
        }
    }
}

/// `%`, `?` and `#` in a decoded path, escaped so that the engine decodes
/// nothing twice and a `%3F` the client sent stays in the path.
const ROUTER_PATH: &percent_encoding::AsciiSet = &percent_encoding::AsciiSet::EMPTY
    .add(b'%')
    .add(b'?')
    .add(b'#');

/// A WSGI path as the app routes it, as a target the engine reads back to
/// exactly that path. PEP 3333 gives the path's bytes as Latin-1 characters;
/// Werkzeug routes their UTF-8 (invalid sequences replaced), so that is the
/// path; then `ROUTER_PATH` is escaped (and any non-ASCII byte, which the
/// engine decodes back to the same text). The query string is not passed:
/// the engine drops a target's query before matching and keying.
fn wsgi_path(raw: &str) -> Cow<'_, str> {
    let decoded: Cow<'_, str> = if raw.is_ascii() {
        Cow::Borrowed(raw)
    } else {
        let bytes: Option<Vec<u8>> = raw
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect();
        match bytes {
            Some(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
            // Not a WSGI string (a character past Latin-1): routed as it is.
            None => Cow::Borrowed(raw),
        }
    };
    match decoded {
        Cow::Borrowed("") => Cow::Borrowed("/"),
        Cow::Borrowed(d) => percent_encoding::utf8_percent_encode(d, ROUTER_PATH).into(),
        Cow::Owned(d) => percent_encoding::utf8_percent_encode(&d, ROUTER_PATH)
            .to_string()
            .into(),
    }
}

/// The method and the raw `PATH_INFO` of a request, from the environ's
/// `REQUEST_METHOD` and `PATH_INFO` objects (GET and empty when absent).
fn method_and_path<'a>(
    method: &'a Option<Bound<'_, PyAny>>,
    path: &'a Option<Bound<'_, PyAny>>,
) -> PyResult<(Cow<'a, str>, Cow<'a, str>)> {
    let method = match method {
        Some(m) => text(m, "REQUEST_METHOD")?,
        None => Cow::Borrowed("GET"),
    };
    let path = match path {
        Some(p) if !p.is_none() => text(p, "PATH_INFO")?,
        _ => Cow::Borrowed(""),
    };
    Ok((method, path))
}

#[pymethods]
impl WsgiReader {
    /// Whether a rule that the request `environ` describes meets keys on a
    /// field of its body (`Engine::reads_body`, on the path `check` decides).
    fn reads_body(
        &self,
        py: Python<'_>,
        environ: &Bound<'_, pyo3::types::PyDict>,
    ) -> PyResult<bool> {
        use pyo3::types::PyDictMethods;
        let (method_obj, path_obj) = (
            environ.get_item(self.method.bind(py))?,
            environ.get_item(self.path_info.bind(py))?,
        );
        let (method, raw_path) = method_and_path(&method_obj, &path_obj)?;
        Ok(self.engine.reads_body(&method, &wsgi_path(&raw_path)))
    }

    /// Decides the request `environ` describes: the headers to add (`(str,
    /// str)` pairs) for a plain allowed request, else the `Verdict`. Raises
    /// `InvalidRequestError` for a request the engine cannot use (answered 400).
    /// `body`: the whole request body, when `reads_body` asked for it.
    #[pyo3(signature = (environ, body=None))]
    fn check<'py>(
        &self,
        py: Python<'py>,
        environ: &Bound<'py, pyo3::types::PyDict>,
        body: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyAny>> {
        use pyo3::types::PyDictMethods;
        let get = |key: &Py<PyString>| environ.get_item(key.bind(py));
        let (method_obj, path_obj) = (get(&self.method)?, get(&self.path_info)?);
        let (method, raw_path) = method_and_path(&method_obj, &path_obj)?;
        let path = wsgi_path(&raw_path);
        // The headers among `keys` the request has (WSGI servers join
        // repeated headers with commas: one value each).
        let mut found: Vec<(&str, Bound<'py, PyAny>)> = Vec::new();
        for (key, name) in &self.keys {
            if let Some(v) = get(key)?.filter(|v| v.is_truthy().unwrap_or(false)) {
                found.push((name, v));
            }
        }
        let texts = found
            .iter()
            .map(|(name, v)| Ok((*name, text(v, "a header value")?)))
            .collect::<PyResult<Vec<_>>>()?;
        let headers: Vec<(&str, &str)> = texts.iter().map(|(n, v)| (*n, &**v)).collect();
        let peer_obj = get(&self.remote_addr)?;
        let peer = match &peer_obj {
            Some(p) if !p.is_none() => Some(text(p, "REMOTE_ADDR")?),
            _ => None,
        };
        let forwarded = || {
            headers
                .iter()
                .filter(|(n, _)| *n == self.forwarded_header)
                .map(|(_, v)| *v)
        };
        let client_ip = match peer.as_deref().filter(|p| !p.is_empty()) {
            // No address: a Unix-domain socket (gunicorn's REMOTE_ADDR is empty
            // there), whose proxy is believed only if `unix:` is trusted.
            None => self
                .trusted
                .as_ref()
                .and_then(|t| t.client_ip_of(None, forwarded(), self.forwarded)),
            Some(p) if self.trusted.is_none() && !p.contains('%') => {
                // The common case: the peer is the client. Only what is plainly
                // not an address (a test client's "testclient") is no client;
                // anything else the engine parses, and refuses if it must.
                if p.starts_with(|c: char| c.is_ascii_digit()) || p.contains(':') {
                    Some(parse_client_ip(p).map_err(crate::to_py)?)
                } else {
                    None
                }
            }
            Some(p) => parse_client_ip(p).ok().map(|peer| {
                self.trusted.as_ref().map_or(peer, |t| {
                    t.client_ip_from(peer, forwarded(), self.forwarded)
                })
            }),
        };
        let req = Request {
            method: &method,
            path: &path,
            client_ip,
            headers: &headers,
            body,
        };
        decide(py, &self.engine, self.blocking, &req, false)
    }
}
