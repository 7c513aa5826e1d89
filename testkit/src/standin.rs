//! The stand-in device: host memory and copy queues served by threads behind the same
//! [`StagingDevice`] interface as CUDA, so the staging pipeline runs and is tested on machines
//! without a GPU. Not a mock: every byte moves, asynchronously, and failures can be injected.

use acspeed::staging::{HostSlot, StagingDevice};
use acspeed_core::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A "device" whose memory is host memory and whose copy queues are threads: the pipeline's
/// stand-in for tests on machines without a GPU. `delay` slows every copy down so tests see
/// copies overlap with reductions and finish out of step with them.
pub struct HostStandIn {
    down: Queue,
    up: Queue,
    /// Slots allocated and freed so far (what the pool saves is visible in tests).
    allocs: Arc<AtomicUsize>,
    frees: Arc<AtomicUsize>,
    /// Fail the n-th copy (counting from 1) with a device error; 0 = never.
    fail_copy: usize,
    copies: AtomicUsize,
    /// Events the pipeline was told to wait for, with the number of copies queued before.
    events: Mutex<Vec<(u64, usize)>>,
    /// Host ranges copies may use asynchronously, as on a real device: the slots it
    /// allocated and the ranges registered with it, (start, len, registered?).
    pinned: Arc<Mutex<Vec<(usize, usize, bool)>>>,
    /// Copies whose host side was none of those (a real device makes them synchronous).
    pageable: AtomicUsize,
    /// Downloads into allocated slots (a fed CPU-Reduce makes none).
    slot_downloads: AtomicUsize,
    registrations: AtomicUsize,
}

/// Completion of a stand-in copy.
pub struct StandInEvent(Arc<(Mutex<bool>, Condvar)>);

struct Queue {
    tx: Option<std::sync::mpsc::Sender<(usize, usize, usize, StandInEvent)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Queue {
    fn new(delay: std::time::Duration) -> Queue {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, usize, usize, StandInEvent)>();
        let thread = std::thread::spawn(move || {
            for (dst, src, len, ev) in rx {
                std::thread::sleep(delay);
                // SAFETY: the pipeline keeps both ranges valid until the event completes.
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
                let (m, cv) = &*ev.0;
                *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
                cv.notify_all();
            }
        });
        Queue {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn push(&self, dst: usize, src: usize, len: usize) -> Result<StandInEvent> {
        let ev = Arc::new((Mutex::new(false), Condvar::new()));
        self.tx
            .as_ref()
            .and_then(|t| t.send((dst, src, len, StandInEvent(ev.clone()))).ok())
            .ok_or_else(|| Error::Aborted("stand-in copy queue closed".into()))?;
        Ok(StandInEvent(ev))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl HostStandIn {
    pub fn new(delay: std::time::Duration) -> Self {
        HostStandIn {
            down: Queue::new(delay),
            up: Queue::new(delay),
            allocs: Arc::default(),
            frees: Arc::default(),
            fail_copy: 0,
            copies: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
            pinned: Arc::default(),
            pageable: AtomicUsize::new(0),
            slot_downloads: AtomicUsize::new(0),
            registrations: AtomicUsize::new(0),
        }
    }

    /// Downloads whose destination was an allocated slot.
    pub fn slot_downloads(&self) -> usize {
        self.slot_downloads.load(Ordering::Relaxed)
    }

    /// Copies whose host memory was neither an allocated slot nor registered (on CUDA those
    /// are synchronous and slower), and host registrations made so far.
    pub fn pageable_copies(&self) -> (usize, usize) {
        (
            self.pageable.load(Ordering::Relaxed),
            self.registrations.load(Ordering::Relaxed),
        )
    }

    /// Registered host ranges still held.
    pub fn registered(&self) -> Vec<(usize, usize)> {
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.2)
            .map(|r| (r.0, r.1))
            .collect()
    }

    fn note_host_side(&self, p: usize, len: usize, download: bool) {
        let pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        match pinned.iter().find(|&&(a, n, _)| p >= a && p + len <= a + n) {
            None => {
                self.pageable.fetch_add(1, Ordering::Relaxed);
            }
            Some(&(_, _, false)) if download => {
                self.slot_downloads.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
        }
    }

    /// The same, with the `n`-th copy (from 1) failing as a device error would.
    pub fn failing_copy(delay: std::time::Duration, n: usize) -> Self {
        HostStandIn {
            fail_copy: n,
            ..HostStandIn::new(delay)
        }
    }

    /// The events passed to `after_event`, each with the number of copies queued before it.
    pub fn events(&self) -> Vec<(u64, usize)> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Host slots allocated so far, and freed so far.
    pub fn slot_counts(&self) -> (usize, usize) {
        (
            self.allocs.load(Ordering::Relaxed),
            self.frees.load(Ordering::Relaxed),
        )
    }

    fn copy_fault(&self) -> Result<()> {
        let n = self.copies.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.fail_copy {
            return Err(Error::Device(format!(
                "stand-in copy {n} failed (injected, as an illegal address would)"
            )));
        }
        Ok(())
    }
}

impl StagingDevice for HostStandIn {
    type Event = StandInEvent;

    unsafe fn download(&self, dst: *mut u8, src: u64, len: usize) -> Result<StandInEvent> {
        self.copy_fault()?;
        self.note_host_side(dst as usize, len, true);
        self.down.push(dst as usize, src as usize, len)
    }

    unsafe fn upload(&self, dst: u64, src: *const u8, len: usize) -> Result<StandInEvent> {
        self.copy_fault()?;
        self.note_host_side(src as usize, len, false);
        self.up.push(dst as usize, src as usize, len)
    }

    unsafe fn register_host(&self, ptr: *mut u8, len: usize) -> Result<acspeed_core::PinGuard> {
        let range = (ptr as usize, len, true);
        let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        // As cuMemHostRegister: registering a range twice is an error.
        if pinned
            .iter()
            .any(|r| r.2 && r.0 < range.0 + len && range.0 < r.0 + r.1)
        {
            return Err(Error::Device(
                "stand-in: host memory already registered".into(),
            ));
        }
        pinned.push(range);
        self.registrations.fetch_add(1, Ordering::Relaxed);
        struct Unpin(Arc<Mutex<Vec<(usize, usize, bool)>>>, (usize, usize, bool));
        impl Drop for Unpin {
            fn drop(&mut self) {
                let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = v.iter().position(|r| *r == self.1) {
                    v.swap_remove(i);
                }
            }
        }
        Ok(Box::new(Unpin(self.pinned.clone(), range)))
    }

    fn wait(&self, ev: StandInEvent) -> Result<()> {
        let (m, cv) = &*ev.0;
        let mut done = m.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = cv.wait(done).unwrap_or_else(|e| e.into_inner());
        }
        Ok(())
    }

    /// Copies run in queue order, so "after" an event is recorded, not awaited: tests check the
    /// pipeline asks before its first download.
    fn after_event(&self, event: u64) -> Result<()> {
        let copies = self.copies.load(Ordering::Relaxed);
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((event, copies));
        Ok(())
    }

    fn alloc_host(&self, bytes: usize) -> Result<HostSlot> {
        let words = bytes.div_ceil(8).max(1);
        let v: Box<[u64]> = vec![0u64; words].into_boxed_slice();
        let ptr = Box::into_raw(v) as *mut u64 as *mut u8;
        self.allocs.fetch_add(1, Ordering::Relaxed);
        let frees = self.frees.clone();
        let slot = (ptr as usize, bytes, false);
        let pinned = self.pinned.clone();
        pinned.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        Ok(HostSlot::new(
            ptr,
            bytes,
            Box::new(move |p| {
                frees.fetch_add(1, Ordering::Relaxed);
                let mut v = pinned.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = v.iter().position(|r| *r == slot) {
                    v.swap_remove(i);
                }
                drop(v);
                // SAFETY: p came from Box::into_raw of a [u64] of `words` elements above.
                drop(unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(p as *mut u64, words))
                })
            }),
        ))
    }
}
