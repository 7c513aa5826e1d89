//! CUDA device buffers through the staging pipeline (feature `cuda`). The driver library is
//! loaded at run time (cudarc `dynamic-loading`), so this builds and links on machines
//! without CUDA; there, [`CudaStaging::new`] returns a clear error instead of crashing.

use crate::staging::{HostSlot, StagingDevice};
use acspeed_core::{Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaStream};
use std::sync::Arc;

/// A recorded CUDA event, owned by the pipeline until waited for.
pub struct CudaEvent(sys::CUevent);

// SAFETY: a CUevent handle may be used from any thread bound to its context.
unsafe impl Send for CudaEvent {}

/// Download and upload streams on one device, with pinned staging memory.
pub struct CudaStaging {
    ctx: Arc<CudaContext>,
    down: Arc<CudaStream>,
    up: Arc<CudaStream>,
}

pub(crate) fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("CUDA {what}: {e}"))
}

/// Device `ordinal`'s primary context (the one torch uses), bound to this thread; a clear error
/// where the driver library is missing.
pub(crate) fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_present() {
        return Err(Error::Device(
            "a CUDA tensor was given, but the CUDA driver library (libcuda.so) is not available on this machine".into(),
        ));
    }
    let ctx =
        CudaContext::new(ordinal).map_err(|e| cuda_err(&format!("opening device {ordinal}"), e))?;
    ctx.bind_to_thread()
        .map_err(|e| cuda_err("binding the context", e))?;
    Ok(ctx)
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { sys::is_culib_present() }
}

impl CudaStaging {
    /// Binds to device `ordinal` (the primary context torch uses).
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = open_context(ordinal)?;
        let down = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a stream", e))?;
        let up = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a stream", e))?;
        Ok(CudaStaging { ctx, down, up })
    }

    fn record(&self, stream: &CudaStream) -> Result<CudaEvent> {
        let ev = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| cuda_err("creating an event", e))?;
        // SAFETY: the event and stream are live.
        unsafe { result::event::record(ev, stream.cu_stream()) }
            .map_err(|e| cuda_err("recording an event", e))?;
        Ok(CudaEvent(ev))
    }
}

impl StagingDevice for CudaStaging {
    type Event = CudaEvent;

    unsafe fn download(&self, dst: *mut u8, src: u64, len: usize) -> Result<CudaEvent> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: caller guarantees both ranges. dst is pinned memory from alloc_host, or the
        // CPU-Reduce staging area, registered (register_host) unless that failed, in which
        // case the driver makes the copy synchronous.
        let host = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        unsafe { result::memcpy_dtoh_async(host, src, self.down.cu_stream()) }
            .map_err(|e| cuda_err("device-to-host copy", e))?;
        self.record(&self.down)
    }

    unsafe fn upload(&self, dst: u64, src: *const u8, len: usize) -> Result<CudaEvent> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: as above.
        let host = unsafe { std::slice::from_raw_parts(src, len) };
        unsafe { result::memcpy_htod_async(dst, host, self.up.cu_stream()) }
            .map_err(|e| cuda_err("host-to-device copy", e))?;
        self.record(&self.up)
    }

    fn wait(&self, ev: CudaEvent) -> Result<()> {
        let ev = ev.0;
        // SAFETY: the event was created and recorded by us and is destroyed once, here.
        let r = unsafe { result::event::synchronize(ev) }
            .map_err(|e| cuda_err("waiting for a copy", e));
        let _ = unsafe { result::event::destroy(ev) };
        r
    }

    fn after_event(&self, event: u64) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: the caller (the Python backend) keeps the torch Event that owns `event`
        // alive until the operation completes; the stream is ours.
        unsafe {
            result::stream::wait_event(
                self.down.cu_stream(),
                event as sys::CUevent,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| cuda_err("ordering the download after the producer's stream", e))
    }

    unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<acspeed_core::PinGuard> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // PORTABLE: pinned for every context, as the staging area is per host, not per device.
        // SAFETY: the caller keeps the range mapped while the guard lives.
        unsafe {
            sys::cuMemHostRegister_v2(
                ptr as *mut std::ffi::c_void,
                len,
                sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        }
        .result()
        .map_err(|e| {
            cuda_err(
                &format!("registering {len} bytes of host staging memory"),
                e,
            )
        })?;
        /// Unregisters the range when dropped, in the context it was registered in.
        struct Registered(Arc<CudaContext>, usize);
        impl Drop for Registered {
            fn drop(&mut self) {
                let _ = self.0.bind_to_thread();
                // SAFETY: registered above and unregistered once, here.
                let _ = unsafe { sys::cuMemHostUnregister(self.1 as *mut std::ffi::c_void) };
            }
        }
        Ok(Box::new(Registered(self.ctx.clone(), ptr as usize)))
    }

    fn alloc_host(&self, bytes: usize) -> Result<HostSlot> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))?;
        // SAFETY: allocation of pinned memory; freed by the slot's deallocator.
        let p = unsafe { result::malloc_host(bytes.max(1), 0) }
            .map_err(|e| cuda_err("allocating pinned memory", e))?;
        // The slot keeps the context alive: pinned memory must be freed before it goes.
        let ctx = self.ctx.clone();
        Ok(HostSlot::new(
            p as *mut u8,
            bytes,
            Box::new(move |p| {
                let _ = ctx.bind_to_thread();
                // SAFETY: p came from malloc_host in this context.
                let _ = unsafe { result::free_host(p as *mut std::ffi::c_void) };
            }),
        ))
    }
}
