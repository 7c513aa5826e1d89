//! # acspeed-python
//!
//! The PyO3 extension behind the `acspeed` Python package. It exposes a communicator whose
//! collectives run on a Rust worker thread in issue order, with the GIL released while bytes
//! move; completions reach Python as `torch.futures.Future` results set from that thread.
//! The torch-facing `Backend` subclass lives in `acspeed/_torch.py`.

mod comm;
mod pystore;
mod work;

use pyo3::prelude::*;

pyo3::create_exception!(
    _acspeed,
    AcspeedError,
    pyo3::exceptions::PyRuntimeError,
    "Any acspeed failure."
);
pyo3::create_exception!(
    _acspeed,
    AcspeedTimeoutError,
    AcspeedError,
    "A peer did not answer within the timeout."
);
pyo3::create_exception!(
    _acspeed,
    AcspeedRemoteError,
    AcspeedError,
    "A peer failed, aborted or went away."
);
pyo3::create_exception!(
    _acspeed,
    AcspeedMismatchError,
    AcspeedError,
    "Ranks disagree on the collective (op, count, dtype)."
);

pyo3::create_exception!(
    _acspeed,
    AcspeedDeviceError,
    AcspeedError,
    "The GPU failed on this rank (driver, copy or allocation); the group is aborted."
);

/// Converts an acspeed error into the matching Python exception.
pub(crate) fn to_py(e: &acspeed::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        acspeed::Error::Timeout { .. } => AcspeedTimeoutError::new_err(msg),
        acspeed::Error::Remote { .. } => AcspeedRemoteError::new_err(msg),
        acspeed::Error::Mismatch { .. } => AcspeedMismatchError::new_err(msg),
        acspeed::Error::InvalidArgument(_) => pyo3::exceptions::PyValueError::new_err(msg),
        acspeed::Error::Device(_) => AcspeedDeviceError::new_err(msg),
        _ => AcspeedError::new_err(msg),
    }
}

/// Whether this build handles CUDA tensors (feature `cuda`).
#[pyfunction]
fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// Whether the CUDA driver library can be loaded here (always false without the feature).
#[pyfunction]
fn cuda_driver_present() -> bool {
    #[cfg(feature = "cuda")]
    {
        acspeed::cuda::driver_present()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// The verdict `acspeed linearity` gives (one source of truth for the Python entry).
#[pyfunction]
#[pyo3(signature = (linearity, exposed_frac=None, straggler=None, recommendation=None))]
fn linearity_verdict(
    linearity: f64,
    exposed_frac: Option<f64>,
    straggler: Option<(u32, f64)>,
    recommendation: Option<&str>,
) -> String {
    acspeed::linearity::verdict(linearity, exposed_frac, straggler, recommendation)
}

#[pymodule]
fn _acspeed(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linearity_verdict, m)?)?;
    m.add_class::<comm::PyComm>()?;
    m.add_class::<work::WorkHandle>()?;
    m.add_function(wrap_pyfunction!(cuda_built, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_driver_present, m)?)?;
    m.add("AcspeedError", m.py().get_type::<AcspeedError>())?;
    m.add(
        "AcspeedTimeoutError",
        m.py().get_type::<AcspeedTimeoutError>(),
    )?;
    m.add(
        "AcspeedRemoteError",
        m.py().get_type::<AcspeedRemoteError>(),
    )?;
    m.add(
        "AcspeedMismatchError",
        m.py().get_type::<AcspeedMismatchError>(),
    )?;
    m.add(
        "AcspeedDeviceError",
        m.py().get_type::<AcspeedDeviceError>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
