//! A device engine whose "device memory" is host memory and whose queues are threads: the
//! device executor's programs run on it in tests, ranks as threads of one process.
//!
//! It keeps the CUDA engine's contract: a connection's slots live with the receiver and its
//! `ready` counter too (the sender writes both), its `taken` counter with the sender (the
//! receiver writes it); a queue runs its operations in order and a wait blocks only its own
//! queue; counters run on across calls. Writes are published with release stores and waits
//! read with acquire loads, as the stream memory operations' fences do on a GPU.

use acspeed_core::device::{
    Conn, DevBuffers, DevCall, DevOp, DeviceEngine, Halt, Loc, SlotShape, READY_TAG_BITS,
};
use acspeed_core::plan::{Buf, Rank};
use acspeed_core::{kernels, DType, Error, Result};
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One connection (sender, receiver, channel).
struct Link {
    shape: SlotShape,
    slots: Box<[UnsafeCell<u64>]>,
    ready: AtomicU64,
    taken: AtomicU64,
}

// SAFETY: a slot is written only by the sender between `taken` and `ready` and read only by the
// receiver between `ready` and `taken`; the counters' release/acquire order the two.
unsafe impl Sync for Link {}

impl Link {
    fn slot(&self, msg: u64) -> *mut u8 {
        let words = self.shape.slot_bytes.div_ceil(8);
        let at = (msg as usize % self.shape.depth) * words;
        self.slots[at].get() as *mut u8
    }
}

struct Fabric {
    links: Mutex<HashMap<(u32, u32, u32), Arc<Link>>>,
    /// Which rank aborted, and why.
    aborted: Mutex<Option<(u32, String)>>,
    /// Bumped on every counter change, so waiters sleep instead of spinning.
    signal: (Mutex<u64>, Condvar),
}

impl Fabric {
    fn notify(&self) {
        let (m, cv) = &self.signal;
        *m.lock().unwrap() += 1;
        cv.notify_all();
    }
}

/// One rank's stand-in device, connected to the others of its fabric.
pub struct HostDevice {
    fabric: Arc<Fabric>,
    rank: Rank,
}

impl HostDevice {
    /// `n` ranks' devices sharing one fabric.
    pub fn fabric(n: u32) -> Vec<HostDevice> {
        let fabric = Arc::new(Fabric {
            links: Mutex::new(HashMap::new()),
            aborted: Mutex::new(None),
            signal: (Mutex::new(0), Condvar::new()),
        });
        (0..n)
            .map(|r| HostDevice {
                fabric: fabric.clone(),
                rank: Rank(r),
            })
            .collect()
    }

    fn link(&self, from: u32, to: u32, channel: u32) -> Result<Arc<Link>> {
        self.fabric
            .links
            .lock()
            .unwrap()
            .get(&(from, to, channel))
            .cloned()
            .ok_or_else(|| {
                Error::invalid(format!(
                    "no device connection from rank {from} to rank {to} on channel {channel}"
                ))
            })
    }
}

/// One queue's view of the call: its links resolved once.
struct Run<'a> {
    dev: &'a HostDevice,
    bufs: DevBuffers,
    scratch: *mut u8,
    call: DevCall,
    deadline: Instant,
    marks: &'a [AtomicU64],
    /// Set when a sibling queue failed: the call is over.
    stop: &'a AtomicBool,
    links: HashMap<(u32, u32, u32), Arc<Link>>,
}

impl Run<'_> {
    fn link(&mut self, from: u32, to: u32, ch: u32) -> Result<Arc<Link>> {
        if let Some(l) = self.links.get(&(from, to, ch)) {
            return Ok(l.clone());
        }
        let l = self.dev.link(from, to, ch)?;
        self.links.insert((from, to, ch), l.clone());
        Ok(l)
    }

    fn ptr(&mut self, loc: Loc) -> Result<*mut u8> {
        let me = self.dev.rank.0;
        Ok(match loc {
            Loc::Buf { buf, at } => match buf {
                Buf::Input => (self.bufs.input as usize + at) as *mut u8,
                Buf::Output => (self.bufs.output as usize + at) as *mut u8,
                Buf::Scratch => self.scratch.wrapping_add(at),
            },
            Loc::Inbox { from, channel, msg } => self.link(from.0, me, channel)?.slot(msg),
            Loc::Outbox { to, channel, msg } => self.link(me, to.0, channel)?.slot(msg),
        })
    }

    /// Waits until `ok` holds; `None` past the deadline.
    fn wait(&self, ok: impl Fn() -> bool) -> std::result::Result<(), Option<Error>> {
        let (m, cv) = &self.dev.fabric.signal;
        let mut g = m.lock().unwrap();
        loop {
            if ok() {
                return Ok(());
            }
            if let Some((rank, why)) = &*self.dev.fabric.aborted.lock().unwrap() {
                return Err(Some(Error::Remote {
                    rank: *rank,
                    detail: why.clone(),
                }));
            }
            let now = Instant::now();
            if now >= self.deadline || self.stop.load(Ordering::Acquire) {
                return Err(None);
            }
            let nap = (self.deadline - now).min(Duration::from_millis(5));
            g = cv.wait_timeout(g, nap).unwrap().0;
        }
    }

    /// Runs queue `q`'s operations, counting completed ones in `done`.
    fn queue(
        &mut self,
        q: usize,
        ops: &[DevOp],
        done: &AtomicUsize,
    ) -> std::result::Result<(), Option<Error>> {
        let me = self.dev.rank.0;
        for op in ops {
            match op {
                DevOp::WaitReady { from, channel, msg } => {
                    let l = self.link(from.0, me, *channel)?;
                    let want = (msg + 1) << READY_TAG_BITS;
                    self.wait(|| l.ready.load(Ordering::Acquire) >= want)?;
                }
                DevOp::WaitSlot { to, channel, msg } => {
                    let l = self.link(me, to.0, *channel)?;
                    let depth = l.shape.depth as u64;
                    self.wait(|| l.taken.load(Ordering::Acquire) + depth > *msg)?;
                }
                DevOp::WaitQueue { queue, mark } => {
                    let m = self.marks.get(*queue).ok_or_else(|| {
                        Some(Error::Plan(format!(
                            "a wait on queue {queue}, which does not exist"
                        )))
                    })?;
                    self.wait(|| m.load(Ordering::Acquire) >= *mark)?;
                }
                DevOp::Copy { dst, src, len } => {
                    let (d, s) = (self.ptr(*dst)?, self.ptr(*src)?);
                    // SAFETY: the program keeps both ranges inside the call's buffers or a
                    // slot the protocol hands to this queue now.
                    unsafe { std::ptr::copy(s, d, *len) };
                }
                DevOp::Reduce { dst, srcs, len } => {
                    let op = self.call.op.ok_or_else(|| {
                        Some(Error::Plan(
                            "a reduction in a call without a reduce op".into(),
                        ))
                    })?;
                    let d = self.ptr(*dst)?;
                    for s in srcs {
                        let s = self.ptr(*s)?;
                        // SAFETY: as for the copy; source and destination never overlap.
                        unsafe {
                            kernels::reduce(
                                self.call.dtype,
                                op,
                                std::slice::from_raw_parts_mut(d, *len),
                                std::slice::from_raw_parts(s, *len),
                            )
                        };
                    }
                }
                DevOp::Ready { to, channel, msg } => {
                    self.link(me, to.0, *channel)?
                        .ready
                        .store(self.call.ready_word(*msg), Ordering::Release);
                    self.dev.fabric.notify();
                }
                DevOp::Taken { from, channel, msg } => {
                    self.link(from.0, me, *channel)?
                        .taken
                        .store(msg + 1, Ordering::Release);
                    self.dev.fabric.notify();
                }
                DevOp::Mark => {
                    self.marks[q].fetch_add(1, Ordering::Release);
                    self.dev.fabric.notify();
                }
            }
            done.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }
}

impl DeviceEngine for HostDevice {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn connect(&self, sends: &[Conn], recvs: &[Conn], shape: SlotShape) -> Result<()> {
        let mut links = self.fabric.links.lock().unwrap();
        let me = self.rank.0;
        let ends = sends
            .iter()
            .map(|(to, ch)| (me, to.0, *ch))
            .chain(recvs.iter().map(|(from, ch)| (from.0, me, *ch)));
        for key in ends {
            let l = links.entry(key).or_insert_with(|| {
                Arc::new(Link {
                    shape,
                    slots: (0..shape.depth * shape.slot_bytes.div_ceil(8))
                        .map(|_| UnsafeCell::new(0))
                        .collect(),
                    ready: AtomicU64::new(0),
                    taken: AtomicU64::new(0),
                })
            });
            if l.shape != shape {
                return Err(Error::invalid(format!(
                    "device connection {key:?} has {:?}, a rank asked for {shape:?}",
                    l.shape
                )));
            }
        }
        Ok(())
    }

    fn run(
        &self,
        queues: &[Vec<DevOp>],
        bufs: DevBuffers,
        scratch_bytes: usize,
        call: DevCall,
        deadline: Instant,
    ) -> std::result::Result<(), Halt> {
        let mut scratch = vec![0u64; scratch_bytes.div_ceil(8)];
        let scratch = scratch.as_mut_ptr() as usize;
        let marks: Vec<AtomicU64> = queues.iter().map(|_| AtomicU64::new(0)).collect();
        let done: Vec<AtomicUsize> = queues.iter().map(|_| AtomicUsize::new(0)).collect();
        let stop = AtomicBool::new(false);
        let results: Vec<std::result::Result<(), Option<Error>>> = std::thread::scope(|s| {
            let hs: Vec<_> = queues
                .iter()
                .enumerate()
                .map(|(q, ops)| {
                    let (marks, done, stop) = (&marks, &done, &stop);
                    s.spawn(move || {
                        let mut run = Run {
                            dev: self,
                            bufs,
                            scratch: scratch as *mut u8,
                            call,
                            deadline,
                            marks,
                            stop,
                            links: HashMap::new(),
                        };
                        let r = run.queue(q, ops, &done[q]);
                        if r.is_err() {
                            // Siblings waiting on this queue give up at once.
                            stop.store(true, Ordering::Release);
                            self.fabric.notify();
                        }
                        r
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Some(Error::Aborted("a queue panicked".into()))))
                })
                .collect()
        });
        let mut timed_out = false;
        for r in results {
            match r {
                Ok(()) => {}
                Err(Some(e)) => return Err(Halt::Failed(e)),
                Err(None) => timed_out = true,
            }
        }
        if timed_out {
            return Err(Halt::TimedOut {
                done: done.iter().map(|d| d.load(Ordering::Acquire)).collect(),
            });
        }
        Ok(())
    }

    fn ready_words(&self, recvs: &[Conn]) -> Result<Vec<u64>> {
        let me = self.rank.0;
        recvs
            .iter()
            .map(|(from, ch)| Ok(self.link(from.0, me, *ch)?.ready.load(Ordering::Acquire)))
            .collect()
    }

    fn scale_avg(&self, buf: u64, bytes: usize, dtype: DType, n: usize) -> Result<()> {
        // SAFETY: the caller's buffer of `bytes` bytes (host memory on this engine).
        let b = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, bytes) };
        kernels::scale_avg(dtype, b, n);
        Ok(())
    }

    fn abort(&self, why: &str) {
        let mut a = self.fabric.aborted.lock().unwrap();
        if a.is_none() {
            *a = Some((self.rank.0, why.to_string()));
        }
        drop(a);
        self.fabric.notify();
    }
}
