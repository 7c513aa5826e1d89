//! torch's `Store` as an acspeed [`Store`]: rendezvous goes through the store torch hands the
//! backend (a per-group `PrefixStore`), so acspeed needs no port or launcher of its own.

use acspeed::store::Store;
use acspeed::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::time::Duration;

pub(crate) struct PyStore {
    store: Py<PyAny>,
}

impl PyStore {
    pub(crate) fn new(store: Py<PyAny>) -> Self {
        PyStore { store }
    }
}

fn err(what: &str, e: PyErr) -> Error {
    Error::Remote {
        rank: 0,
        detail: format!("torch store {what} failed: {e}"),
    }
}

impl Store for PyStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        Python::attach(|py| {
            self.store
                .call_method1(py, "set", (key, PyBytes::new(py, value)))
                .map(|_| ())
                .map_err(|e| err("set", e))
        })
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        Python::attach(|py| {
            let td = py
                .import("datetime")
                .and_then(|m| m.getattr("timedelta"))
                .and_then(|t| t.call1((0, timeout.as_secs_f64())))
                .map_err(|e| err("timedelta", e))?;
            if let Err(e) = self.store.call_method1(py, "wait", (vec![key], td)) {
                return Err(Error::Timeout {
                    rank: 0,
                    what: format!("rendezvous: waiting for '{key}' in the torch store ({e})"),
                    after: timeout,
                });
            }
            let v = self
                .store
                .call_method1(py, "get", (key,))
                .map_err(|e| err("get", e))?;
            v.extract::<Vec<u8>>(py).map_err(|e| err("get (bytes)", e))
        })
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        Python::attach(|py| {
            self.store
                .call_method1(py, "add", (key, delta))
                .and_then(|v| v.extract::<i64>(py))
                .map_err(|e| err("add", e))
        })
    }
}
