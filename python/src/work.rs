//! Completion of one queued operation, visible from Python.
//!
//! `wait()` blocks with the GIL released and raises the operation's error. For async calls,
//! Python registers a `torch.futures.Future` with `complete_future`; the worker thread sets
//! its result (the tensors, or the exception object) under the GIL as soon as the operation
//! finishes — or at registration, if it already has. Raising is left to a `then()` callback
//! on the Python side, which is what makes the error reach DDP (see TORCH.md, pitfall 2).

use crate::to_py;
use pyo3::prelude::*;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    result: Option<Result<(), acspeed::Error>>,
    future: Option<(Py<PyAny>, Py<PyAny>)>,
    /// Python objects kept alive until the operation completes (tensors being read/written).
    keep: Option<Py<PyAny>>,
}

#[derive(Clone, Default)]
pub(crate) struct Completion {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Completion {
    pub(crate) fn new(keep: Option<Py<PyAny>>) -> Self {
        let c = Completion::default();
        c.inner.0.lock().unwrap_or_else(|e| e.into_inner()).keep = keep;
        c
    }

    /// Records the outcome (worker thread, GIL not held) and completes a registered future.
    pub(crate) fn finish(&self, r: Result<(), acspeed::Error>) {
        let (fut, keep) = {
            let mut s = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
            s.result = Some(r);
            self.inner.1.notify_all();
            (s.future.take(), s.keep.take())
        };
        if fut.is_some() || keep.is_some() {
            Python::attach(|py| {
                if let Some((f, value)) = fut {
                    let outcome = self.outcome_value(py, value);
                    let _ = f.call_method1(py, "set_result", (outcome,));
                }
                drop(keep);
            });
        }
    }

    fn outcome_value(&self, py: Python<'_>, value: Py<PyAny>) -> Py<PyAny> {
        let s = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        match &s.result {
            Some(Err(e)) => to_py(e).into_value(py).into_any(),
            _ => value,
        }
    }

    fn wait(&self) -> Result<(), acspeed::Error> {
        let (m, cv) = &*self.inner;
        let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = &s.result {
                return r.as_ref().map(|_| ()).map_err(|e| e.duplicate());
            }
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Python handle on a queued operation.
#[pyclass(module = "acspeed._acspeed")]
pub(crate) struct WorkHandle {
    pub(crate) c: Completion,
    /// The sender of a receive from any source, once known (-1 until then, and for every
    /// other operation).
    pub(crate) source: Arc<std::sync::atomic::AtomicI64>,
}

impl WorkHandle {
    pub(crate) fn new(c: Completion) -> WorkHandle {
        WorkHandle {
            c,
            source: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
        }
    }
}

#[pymethods]
impl WorkHandle {
    /// Blocks (GIL released) until done; raises the operation's error.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.c.clone();
        py.detach(move || c.wait()).map_err(|e| to_py(&e))
    }

    /// The rank a receive from any source took its message from (raises before that is
    /// known, and for other operations).
    fn source_rank(&self) -> PyResult<u32> {
        let s = self.source.load(std::sync::atomic::Ordering::Acquire);
        u32::try_from(s).map_err(|_| {
            crate::AcspeedError::new_err(
                "source_rank(): only a completed receive from any source has a source rank",
            )
        })
    }

    fn is_completed(&self) -> bool {
        self.c
            .inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .result
            .is_some()
    }

    /// Arranges for `future.set_result(value)` (or the exception) when the operation ends.
    fn complete_future(&self, py: Python<'_>, future: Py<PyAny>, value: Py<PyAny>) -> PyResult<()> {
        let done = {
            let mut s = self.c.inner.0.lock().unwrap_or_else(|e| e.into_inner());
            if s.result.is_none() {
                s.future = Some((future.clone_ref(py), value.clone_ref(py)));
                false
            } else {
                true
            }
        };
        if done {
            let outcome = self.c.outcome_value(py, value);
            future.call_method1(py, "set_result", (outcome,))?;
        }
        Ok(())
    }
}
