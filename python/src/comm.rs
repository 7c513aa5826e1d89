//! `PyComm`: two acspeed communicators (collectives, point-to-point) and their threads.
//!
//! Collectives go through one ordered queue and one worker thread, so they run in issue order
//! on every rank whatever Python threads do. Point-to-point operations use a communicator of
//! their own (its own connections), so sends and receives never interleave with collective
//! traffic; they are posted at once (an `irecv` before the matching `isend` cannot deadlock)
//! and a waiter thread completes their handles.

use crate::pystore::PyStore;
use crate::to_py;
use crate::work::{Completion, WorkHandle};
use acspeed::{Communicator, Config, DType, ReduceOp};
use crossbeam_channel::{unbounded, Sender};
use pyo3::prelude::*;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Run = Box<dyn FnOnce(&Communicator) -> acspeed::Result<()> + Send>;

struct Job {
    run: Run,
    done: Completion,
}

struct P2pWait {
    handles: Vec<acspeed_core::OpHandle>,
    done: Completion,
}

/// A raw address that crosses into the worker thread; Python keeps the tensor alive.
#[derive(Clone, Copy)]
struct Ptr(usize);

impl Ptr {
    /// # Safety
    /// The caller (Python) keeps `len` bytes at this address alive and untouched by anyone
    /// else until the operation completes.
    unsafe fn bytes_mut<'a>(self, len: usize) -> &'a mut [u8] {
        // SAFETY: per the function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0 as *mut u8, len) }
    }

    /// # Safety
    /// As [`Ptr::bytes_mut`], for reading.
    unsafe fn bytes<'a>(self, len: usize) -> &'a [u8] {
        // SAFETY: per the function's contract.
        unsafe { std::slice::from_raw_parts(self.0 as *const u8, len) }
    }
}

#[pyclass(module = "acspeed._acspeed")]
pub(crate) struct PyComm {
    rank: u32,
    size: u32,
    coll: Arc<Communicator>,
    p2p: Arc<Communicator>,
    jobs: Mutex<Option<Sender<Job>>>,
    waits: Mutex<Option<Sender<P2pWait>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    #[cfg(feature = "cuda")]
    cuda: Mutex<Option<CudaSide>>,
    /// The device executor, decided by all ranks together at the first CUDA collective
    /// (`None` inside: staging only, e.g. a GPU without stream memory operations).
    #[cfg(feature = "cuda")]
    device: Arc<Mutex<Option<DeviceSide>>>,
}

#[cfg(feature = "cuda")]
type DeviceSide = (
    usize,
    Option<Arc<acspeed_core::device::DeviceExecutor<acspeed::cuda_device::CudaDevice>>>,
);

/// The device this group stages CUDA tensors from, and its pinned slots (kept between calls,
/// freed with the group).
#[cfg(feature = "cuda")]
type CudaSide = (
    usize,
    Arc<acspeed::cuda::CudaStaging>,
    Arc<acspeed::staging::SlotPool>,
);

/// The group's device executor for `ordinal`, decided once by every rank together (an
/// allreduce of "mine works"), so that all ranks take the device path or none does.
#[cfg(feature = "cuda")]
fn device_executor(
    c: &Communicator,
    device: &Mutex<Option<DeviceSide>>,
    coll: &Arc<Communicator>,
    ordinal: usize,
) -> acspeed::Result<
    Option<Arc<acspeed_core::device::DeviceExecutor<acspeed::cuda_device::CudaDevice>>>,
> {
    let mut g = device.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((o, de)) = g.as_ref() {
        if *o == ordinal {
            return Ok(de.clone());
        }
    }
    // ACSPEED_CUDA_PATH=staging: no engine, and this rank's 0 keeps every rank off the path.
    let made = c.cuda_device_path().then(|| {
        acspeed::cuda_device::CudaDevice::new(
            ordinal,
            acspeed_core::Rank(c.rank()),
            Arc::new(acspeed::CommExchange(coll.clone())),
        )
    });
    let mut ok = [matches!(made, Some(Ok(_))) as i32];
    c.allreduce(&mut ok, ReduceOp::Min)?;
    let de = match made {
        Some(Ok(d)) if ok[0] == 1 => Some(Arc::new(c.device_executor(d))),
        Some(Ok(_)) => {
            c.warn("CUDA collectives go through host memory: another rank cannot run the device executor (or has ACSPEED_CUDA_PATH=staging)");
            None
        }
        Some(Err(e)) => {
            c.warn(&format!("CUDA collectives go through host memory: {e}"));
            None
        }
        None => None,
    };
    *g = Some((ordinal, de.clone()));
    Ok(de)
}

fn dtype(code: u8) -> PyResult<DType> {
    DType::from_code(code).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("unknown dtype code {code}"))
    })
}

fn op(code: u8) -> PyResult<ReduceOp> {
    ReduceOp::from_code(code).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("unknown reduce op code {code}"))
    })
}

/// The local address that routes to the master (so peers on other hosts can reach us).
fn advertise_ip(host: Option<&str>, port: Option<u16>) -> IpAddr {
    let fallback = IpAddr::from([127, 0, 0, 1]);
    let Some(host) = host else { return fallback };
    let target: Option<SocketAddr> = (host, port.unwrap_or(29500))
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|x| x.is_ipv4()));
    target
        .and_then(|t| acspeed::init::route_ip(t).ok())
        .unwrap_or(fallback)
}

impl PyComm {
    fn enqueue(&self, keep: Option<Py<PyAny>>, run: Run) -> PyResult<WorkHandle> {
        let done = Completion::new(keep);
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let tx = tx
            .as_ref()
            .ok_or_else(|| crate::AcspeedError::new_err("acspeed process group was shut down"))?;
        tx.send(Job {
            run,
            done: done.clone(),
        })
        .map_err(|_| crate::AcspeedError::new_err("acspeed worker thread is gone"))?;
        Ok(WorkHandle::new(done))
    }
}

#[pymethods]
impl PyComm {
    /// Rendezvous through `store` (torch's per-group store), then connect.
    #[new]
    #[pyo3(signature = (store, rank, size, timeout_s, master_host=None, master_port=None))]
    fn new(
        py: Python<'_>,
        store: Py<PyAny>,
        rank: u32,
        size: u32,
        timeout_s: f64,
        master_host: Option<String>,
        master_port: Option<u16>,
    ) -> PyResult<Self> {
        let mut cfg = Config::from_env().map_err(|e| to_py(&e))?;
        if timeout_s.is_finite() && timeout_s > 0.0 {
            cfg.job.timeout = Duration::from_secs_f64(timeout_s);
        }
        let ip = advertise_ip(master_host.as_deref(), master_port);
        let st = PyStore::new(store);
        let (coll, p2p) = py
            .detach(|| -> acspeed::Result<_> {
                let c = acspeed::init_with_store(&st, "acspeed/coll", rank, size, ip, cfg.clone())?;
                // Point-to-point traffic is not collectives: no trace file of its own (it would
                // also overwrite the collective communicator's).
                // Nor stall reports: the control plane follows collectives.
                let cfg = Config {
                    job: acspeed_core::config::JobSettings {
                        timeline: None,
                        stall_warn: Duration::ZERO,
                        ..cfg.job
                    },
                    ..cfg
                };
                let p = acspeed::init_with_store(&st, "acspeed/p2p", rank, size, ip, cfg)?;
                Ok((c, p))
            })
            .map_err(|e| to_py(&e))?;
        let (coll, p2p) = (Arc::new(coll), Arc::new(p2p));
        let (jtx, jrx) = unbounded::<Job>();
        let (wtx, wrx) = unbounded::<P2pWait>();
        let c2 = coll.clone();
        let worker = std::thread::Builder::new()
            .name(format!("acspeed-worker{rank}"))
            .spawn(move || {
                for job in jrx {
                    let r = (job.run)(&c2);
                    job.done.finish(r);
                }
            })
            .map_err(|e| {
                crate::AcspeedError::new_err(format!("cannot start the worker thread: {e}"))
            })?;
        let p2 = p2p.clone();
        let waiter = std::thread::Builder::new()
            .name(format!("acspeed-p2p{rank}"))
            .spawn(move || {
                for w in wrx {
                    let r = w.handles.iter().try_for_each(|h| p2.wait(h));
                    w.done.finish(r);
                }
            })
            .map_err(|e| {
                crate::AcspeedError::new_err(format!("cannot start the p2p thread: {e}"))
            })?;
        Ok(PyComm {
            rank,
            size,
            coll,
            p2p,
            jobs: Mutex::new(Some(jtx)),
            waits: Mutex::new(Some(wtx)),
            threads: Mutex::new(vec![worker, waiter]),
            #[cfg(feature = "cuda")]
            cuda: Mutex::new(None),
            #[cfg(feature = "cuda")]
            device: Arc::new(Mutex::new(None)),
        })
    }

    #[getter]
    fn rank(&self) -> u32 {
        self.rank
    }

    /// Which algorithm a collective of `nbytes` runs on this group, and why.
    #[pyo3(signature = (nbytes, collective="allreduce"))]
    fn explain(&self, nbytes: usize, collective: &str) -> PyResult<String> {
        let c = acspeed_core::plan::collective_named(collective).map_err(|e| to_py(&e))?;
        Ok(self.coll.explain(c, nbytes))
    }

    /// Forces an algorithm for this group's later collectives (`None`: back to the automatic
    /// choice). Every rank must call it at the same point.
    #[pyo3(signature = (name=None))]
    fn set_algorithm(&self, name: Option<&str>) -> PyResult<()> {
        let a = name
            .map(acspeed::Algorithm::from_name)
            .transpose()
            .map_err(|e| to_py(&e))?;
        self.coll.set_algorithm(a);
        Ok(())
    }

    /// Start (or stop) recording when each collective of this group runs.
    fn record_busy(&self, on: bool) {
        self.coll.record_busy(on)
    }

    /// (start, end) of each collective run since the last call, in seconds since the epoch.
    fn take_busy(&self) -> Vec<(f64, f64)> {
        self.coll.take_busy()
    }

    /// The last stall reports from the coordinator (which collective waited past
    /// ACSPEED_STALL_WARN_SECS, and which ranks had not joined it), oldest first.
    fn stall_reports(&self) -> Vec<String> {
        self.coll.stall_reports()
    }

    #[getter]
    fn size(&self) -> u32 {
        self.size
    }

    /// Transport towards each peer, e.g. ["self", "shm", "tcp/4"].
    fn transports(&self) -> Vec<String> {
        (0..self.size)
            .map(|p| {
                if p == self.rank {
                    "self".into()
                } else {
                    self.coll.transport_name(p)
                }
            })
            .collect()
    }

    #[pyo3(signature = (ptr, numel, dtype_code, op_code, keep=None))]
    fn allreduce(
        &self,
        ptr: usize,
        numel: usize,
        dtype_code: u8,
        op_code: u8,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let (d, o, p) = (dtype(dtype_code)?, op(op_code)?, Ptr(ptr));
        // SAFETY: Python keeps the tensor (keep) alive and untouched until completion.
        self.enqueue(
            keep,
            Box::new(move |c| c.allreduce_bytes(unsafe { p.bytes_mut(numel * d.size()) }, d, o)),
        )
    }

    #[pyo3(signature = (ptr, numel, dtype_code, root, keep=None))]
    fn broadcast(
        &self,
        ptr: usize,
        numel: usize,
        dtype_code: u8,
        root: u32,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let (d, p) = (dtype(dtype_code)?, Ptr(ptr));
        // SAFETY: as in allreduce.
        self.enqueue(
            keep,
            Box::new(move |c| c.broadcast_bytes(unsafe { p.bytes_mut(numel * d.size()) }, d, root)),
        )
    }

    #[pyo3(signature = (ptr, numel, dtype_code, op_code, root, keep=None))]
    fn reduce(
        &self,
        ptr: usize,
        numel: usize,
        dtype_code: u8,
        op_code: u8,
        root: u32,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let (d, o, p) = (dtype(dtype_code)?, op(op_code)?, Ptr(ptr));
        // SAFETY: as in allreduce.
        self.enqueue(
            keep,
            Box::new(move |c| c.reduce_bytes(unsafe { p.bytes_mut(numel * d.size()) }, d, o, root)),
        )
    }

    /// `out` holds size x numel elements.
    #[pyo3(signature = (inp, out, numel, dtype_code, keep=None))]
    fn allgather(
        &self,
        inp: usize,
        out: usize,
        numel: usize,
        dtype_code: u8,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let (d, i, o, n) = (dtype(dtype_code)?, Ptr(inp), Ptr(out), self.size as usize);
        // SAFETY: as in allreduce; input and output are distinct tensors.
        self.enqueue(
            keep,
            Box::new(move |c| unsafe {
                c.allgather_bytes(
                    i.bytes(numel * d.size()),
                    o.bytes_mut(n * numel * d.size()),
                    d,
                )
            }),
        )
    }

    /// `inp` holds size x numel elements, `out` numel.
    #[pyo3(signature = (inp, out, numel, dtype_code, op_code, keep=None))]
    fn reduce_scatter(
        &self,
        inp: usize,
        out: usize,
        numel: usize,
        dtype_code: u8,
        op_code: u8,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let (d, r, i, o, n) = (
            dtype(dtype_code)?,
            op(op_code)?,
            Ptr(inp),
            Ptr(out),
            self.size as usize,
        );
        // SAFETY: as in allgather.
        self.enqueue(
            keep,
            Box::new(move |c| unsafe {
                c.reduce_scatter_bytes(
                    i.bytes(n * numel * d.size()),
                    o.bytes_mut(numel * d.size()),
                    d,
                    r,
                )
            }),
        )
    }

    /// Uneven all-to-all: `send[j]` / `recv[j]` are (byte offset, byte length) of the block
    /// for / from rank j. Runs in collective order on the collective connections.
    #[pyo3(signature = (inp, out, send, recv, keep=None))]
    fn alltoallv(
        &self,
        inp: usize,
        out: usize,
        send: Vec<(usize, usize)>,
        recv: Vec<(usize, usize)>,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let n = self.size as usize;
        if send.len() != n || recv.len() != n {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "alltoall: need {n} send and recv splits, got {} and {}",
                send.len(),
                recv.len()
            )));
        }
        let (i, o, me) = (Ptr(inp), Ptr(out), self.rank as usize);
        self.enqueue(
            keep,
            Box::new(move |c| {
                // SAFETY: Python keeps both tensors alive; blocks are inside them (checked in Python).
                unsafe {
                    acspeed_core::kernels::copy::copy(
                        (i.0 as *const u8).add(send[me].0),
                        (o.0 as *mut u8).add(recv[me].0),
                        send[me].1.min(recv[me].1),
                    );
                }
                let mut hs = Vec::new();
                for j in 1..n {
                    let (to, from) = ((me + j) % n, (me + n - j) % n);
                    // SAFETY: as above; waited for below before returning.
                    unsafe {
                        hs.push(c.post_send(
                            to as u32,
                            u64::MAX - 1,
                            (i.0 as *const u8).add(send[to].0),
                            send[to].1,
                        )?);
                        hs.push(c.post_recv(
                            from as u32,
                            u64::MAX - 1,
                            (o.0 as *mut u8).add(recv[from].0),
                            recv[from].1,
                        )?);
                    }
                }
                hs.iter().try_for_each(|h| c.wait(h))
            }),
        )
    }

    #[pyo3(signature = (inp, out, numel_total, dtype_code, keep=None))]
    fn alltoall(
        &self,
        inp: usize,
        out: usize,
        numel_total: usize,
        dtype_code: u8,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let (d, i, o) = (dtype(dtype_code)?, Ptr(inp), Ptr(out));
        // SAFETY: as in allgather.
        self.enqueue(
            keep,
            Box::new(move |c| unsafe {
                c.alltoall_bytes(
                    i.bytes(numel_total * d.size()),
                    o.bytes_mut(numel_total * d.size()),
                    d,
                )
            }),
        )
    }

    /// In-place allreduce of a CUDA buffer (device address `ptr` on device `ordinal`), staged
    /// through pinned host memory in a pipeline. `ready_event` (a `CUevent` the caller recorded
    /// on the producing stream and keeps alive in `keep`; 0 = none) orders the downloads after
    /// the producer's work without blocking the caller; without one the caller synchronises
    /// its stream first.
    #[pyo3(signature = (ptr, numel, dtype_code, op_code, ordinal, keep=None, ready_event=0))]
    #[allow(clippy::too_many_arguments)]
    fn allreduce_cuda(
        &self,
        ptr: u64,
        numel: usize,
        dtype_code: u8,
        op_code: u8,
        ordinal: usize,
        keep: Option<Py<PyAny>>,
        ready_event: u64,
    ) -> PyResult<WorkHandle> {
        let (d, o) = (dtype(dtype_code)?, op(op_code)?);
        #[cfg(feature = "cuda")]
        {
            let (dev, pool) = self.cuda_device(ordinal).map_err(|e| to_py(&e))?;
            let (device, coll) = (self.device.clone(), self.coll.clone());
            self.enqueue(
                keep,
                Box::new(move |c| {
                    let ready = (ready_event != 0).then_some(ready_event);
                    if let Some(de) = device_executor(c, &device, &coll, ordinal)? {
                        let bufs = acspeed_core::device::DevBuffers {
                            input: 0,
                            input_len: 0,
                            output: ptr,
                            output_len: numel * d.size(),
                            ready,
                        };
                        let coll = acspeed_core::Collective::AllReduce;
                        if c.run_device(&de, coll, d, Some(o), numel, bufs)?
                            == acspeed::DeviceRun::Ran
                        {
                            return Ok(());
                        }
                    }
                    acspeed::staging::staged_allreduce(
                        c,
                        &*dev,
                        &pool,
                        acspeed::staging::DeviceBuf {
                            addr: ptr,
                            bytes: numel * d.size(),
                            ready,
                        },
                        d,
                        o,
                        acspeed::staging::StagingParams::default(),
                    )
                }),
            )
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (ptr, numel, d, o, ordinal, keep, ready_event);
            Err(crate::AcspeedError::new_err("this acspeed was built without the 'cuda' feature; rebuild with MATURIN_PEP517_ARGS='--features cuda' pip install ./python"))
        }
    }

    fn barrier(&self) -> PyResult<WorkHandle> {
        self.enqueue(None, Box::new(|c| c.barrier()))
    }

    /// Posts a send at once (independent of the collective queue).
    #[pyo3(signature = (ptr, nbytes, dst, tag, keep=None))]
    fn send(
        &self,
        ptr: usize,
        nbytes: usize,
        dst: u32,
        tag: u64,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        // SAFETY: Python keeps the tensor alive until the handle completes.
        let h = unsafe { self.p2p.post_send(dst, tag, ptr as *const u8, nbytes) }
            .map_err(|e| to_py(&e))?;
        self.track(vec![h], keep)
    }

    #[pyo3(signature = (ptr, nbytes, src, tag, keep=None))]
    fn recv(
        &self,
        ptr: usize,
        nbytes: usize,
        src: u32,
        tag: u64,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        // SAFETY: as in send.
        let h = unsafe { self.p2p.post_recv(src, tag, ptr as *mut u8, nbytes) }
            .map_err(|e| to_py(&e))?;
        self.track(vec![h], keep)
    }

    /// Receive from whichever rank sends a message of this tag and size first. Returns at
    /// once: a thread of its own waits for a sender (any-source receives are rare; they must
    /// not hold up the point-to-point thread's other waits), then for the bytes. The
    /// handle's `source_rank()` names the sender once it is complete.
    #[pyo3(signature = (ptr, nbytes, tag, keep=None))]
    fn recv_any(
        &self,
        ptr: usize,
        nbytes: usize,
        tag: u64,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let w = WorkHandle::new(Completion::new(keep));
        let (c, done, src) = (self.p2p.clone(), w.c.clone(), w.source.clone());
        std::thread::Builder::new()
            .name(format!("acspeed-recv-any{}", self.rank))
            .spawn(move || {
                // SAFETY: Python keeps the tensor alive (`keep`) until the handle completes.
                let r =
                    unsafe { c.post_recv_any(tag, ptr as *mut u8, nbytes) }.and_then(|(q, h)| {
                        let r = c.wait(&h);
                        src.store(i64::from(q), std::sync::atomic::Ordering::Release);
                        r
                    });
                done.finish(r);
            })
            .map_err(|e| {
                crate::AcspeedError::new_err(format!("cannot start a receive thread: {e}"))
            })?;
        Ok(w)
    }

    /// Stops the threads (pending work finishes first). Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.waits.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads: Vec<JoinHandle<()>> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        py.detach(|| {
            for t in threads {
                let _ = t.join();
            }
        });
        // The Python objects may outlive this call, or never be collected at all (a
        // multiprocessing child leaves with os._exit): the trace file is complete and the call
        // statistics are logged now.
        self.coll.finish_reports();
    }

    /// Fails everything in flight; peers get an error naming this rank.
    fn abort(&self, reason: &str) {
        self.coll.abort(reason);
        self.p2p.abort(reason);
    }
}

impl PyComm {
    #[cfg(feature = "cuda")]
    /// The staging device for `ordinal` and its slot pool (a new device gets a new pool:
    /// pinned memory belongs to the context it was allocated in).
    fn cuda_device(
        &self,
        ordinal: usize,
    ) -> acspeed::Result<(
        Arc<acspeed::cuda::CudaStaging>,
        Arc<acspeed::staging::SlotPool>,
    )> {
        let mut devs = self.cuda.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((o, d, p)) = devs.as_ref() {
            if *o == ordinal {
                return Ok((d.clone(), p.clone()));
            }
        }
        let d = Arc::new(acspeed::cuda::CudaStaging::new(ordinal)?);
        let p = Arc::new(acspeed::staging::SlotPool::for_params(
            acspeed::staging::StagingParams::default(),
        ));
        *devs = Some((ordinal, d.clone(), p.clone()));
        Ok((d, p))
    }

    fn track(
        &self,
        handles: Vec<acspeed_core::OpHandle>,
        keep: Option<Py<PyAny>>,
    ) -> PyResult<WorkHandle> {
        let done = Completion::new(keep);
        let tx = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let tx = tx
            .as_ref()
            .ok_or_else(|| crate::AcspeedError::new_err("acspeed process group was shut down"))?;
        tx.send(P2pWait {
            handles,
            done: done.clone(),
        })
        .map_err(|_| crate::AcspeedError::new_err("acspeed p2p thread is gone"))?;
        Ok(WorkHandle::new(done))
    }
}

impl Drop for PyComm {
    /// Closing the queues ends the threads after their pending work. They are not joined
    /// here: this runs with the GIL held, and finishing work may need the GIL.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.waits.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
