//! The Rust half of `RedisLimiter.check_async`, `Engine.check_request_async`
//! and `Engine.settle_async` (the Python half is `_aio.py`).
//!
//! Checks run on one tokio worker, which also drives the multiplexed Redis
//! connection. A finished check goes into its event loop's `Inbox`, and the
//! first one after a drain writes a byte to a pipe that the loop watches
//! (`loop.add_reader`); the loop's thread then takes every finished check at
//! once and settles the futures. No tokio thread ever takes the GIL: handing the
//! GIL to another thread and back per completion cut throughput to a third.

use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use floodgate::Decision;
use floodgate::policy::Verdict;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::{PyDecision, to_py, verdict};

/// A finished call, converted to Python on the loop's thread.
#[derive(Debug)]
pub enum Done {
    Decision(floodgate::Result<Decision>),
    Verdict(floodgate::Result<Verdict>),
    Settled(floodgate::Result<()>),
}

/// Finished checks of one event loop, waiting for its thread.
#[derive(Debug)]
#[pyclass(frozen, module = "floodgate._floodgate", name = "_Inbox")]
pub struct Inbox {
    done: Mutex<Vec<(u64, Done)>>,
    /// Set when a byte is in the pipe and not yet drained.
    armed: AtomicBool,
    reader: Mutex<PipeReader>,
    writer: Mutex<PipeWriter>,
    fd: i32,
}

impl Inbox {
    /// Called by the tokio worker: queue the result, wake the loop if needed.
    pub fn push(&self, id: u64, result: Done) {
        self.done.lock().push((id, result));
        if !self.armed.swap(true, Ordering::AcqRel) {
            // A closed loop no longer reads: nothing to wake, nothing to do.
            let _ = self.writer.lock().write_all(&[1]);
        }
    }
}

#[pymethods]
impl Inbox {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = std::io::pipe()?;
        let fd = reader.as_raw_fd();
        Ok(Inbox {
            done: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            fd,
        })
    }

    /// The pipe's read end, for `loop.add_reader`.
    fn fileno(&self) -> i32 {
        self.fd
    }

    /// Every finished call as `(id, result, None)` (a `Decision`, a `Verdict`
    /// or `None` for a settlement) or `(id, None, exception)`.
    /// Called when the pipe is readable, so the read does not block.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut buf = [0u8; 64];
        let _ = self.reader.lock().read(&mut buf);
        self.armed.store(false, Ordering::Release);
        let done = std::mem::take(&mut *self.done.lock());
        let out = PyList::empty(py);
        for (id, result) in done {
            let ok = match result {
                Done::Decision(r) => {
                    r.map(|d| PyDecision::from(d).into_pyobject(py).map(Bound::into_any))
                }
                Done::Verdict(r) => r.map(|v| {
                    verdict(py, v)
                        .and_then(|v| v.into_pyobject(py))
                        .map(Bound::into_any)
                }),
                Done::Settled(r) => r.map(|()| Ok(py.None().into_bound(py))),
            };
            match ok {
                Ok(value) => out.append((id, value?, py.None()))?,
                Err(e) => out.append((id, py.None(), to_py(e).into_value(py)))?,
            }
        }
        Ok(out)
    }
}
