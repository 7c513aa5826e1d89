//! The single-producer single-consumer slot ring at the heart of the shared-memory transport.
//!
//! Two counters in shared memory: `head` (slots published, written only by the producer)
//! and `tail` (slots consumed, written only by the consumer). Slot `i` lives at `i % slots`.
//!
//! * Producer: `tail.load(Acquire)` — the consumer has finished reading every slot below it,
//!   so slot `head % slots` may be overwritten when `head - tail < slots`; write the slot,
//!   then `head.store(head + 1, Release)` to publish it.
//! * Consumer: `head.load(Acquire)` — every slot below it is fully written; read slot
//!   `tail % slots`, then `tail.store(tail + 1, Release)` to hand it back.
//!
//! Each side only ever reads its own counter with `Relaxed`. The `loom` test below checks
//! that these orderings make every slot access race-free and deliver values in order.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// The two counters of one ring, wherever they live.
pub(crate) struct RingIndex<'a> {
    pub(crate) head: &'a AtomicU64,
    pub(crate) tail: &'a AtomicU64,
    pub(crate) slots: u64,
}

impl RingIndex<'_> {
    /// Producer: the next slot to fill, if the consumer has freed one.
    pub(crate) fn producer_acquire(&self) -> Option<u64> {
        let h = self.head.load(Ordering::Relaxed);
        let t = self.tail.load(Ordering::Acquire);
        (h - t < self.slots).then_some(h)
    }

    /// Producer: makes slot `i` (from `producer_acquire`) visible to the consumer.
    pub(crate) fn producer_publish(&self, i: u64) {
        self.head.store(i + 1, Ordering::Release);
    }

    /// Consumer: the next filled slot, if any.
    pub(crate) fn consumer_acquire(&self) -> Option<u64> {
        let t = self.tail.load(Ordering::Relaxed);
        let h = self.head.load(Ordering::Acquire);
        (t < h).then_some(t)
    }

    /// Consumer: gives slot `i` back to the producer.
    pub(crate) fn consumer_release(&self, i: u64) {
        self.tail.store(i + 1, Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    struct Shared {
        head: AtomicU64,
        tail: AtomicU64,
        data: Vec<UnsafeCell<u64>>,
    }

    /// Every interleaving: the consumer sees 0..N in order and no slot is read while written.
    #[test]
    fn ring_protocol_is_race_free_and_ordered() {
        loom::model(|| {
            const SLOTS: u64 = 2;
            const N: u64 = 4;
            let s = Arc::new(Shared {
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                data: (0..SLOTS).map(|_| UnsafeCell::new(0)).collect(),
            });
            let p = s.clone();
            let producer = loom::thread::spawn(move || {
                let r = RingIndex {
                    head: &p.head,
                    tail: &p.tail,
                    slots: SLOTS,
                };
                let mut sent = 0;
                while sent < N {
                    if let Some(i) = r.producer_acquire() {
                        p.data[(i % SLOTS) as usize].with_mut(|v| unsafe { *v = sent + 100 });
                        r.producer_publish(i);
                        sent += 1;
                    } else {
                        loom::thread::yield_now();
                    }
                }
            });
            let r = RingIndex {
                head: &s.head,
                tail: &s.tail,
                slots: SLOTS,
            };
            let mut got = 0;
            while got < N {
                if let Some(i) = r.consumer_acquire() {
                    let v = s.data[(i % SLOTS) as usize].with(|v| unsafe { *v });
                    assert_eq!(v, got + 100);
                    r.consumer_release(i);
                    got += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
            producer.join().unwrap();
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counters_wrap_the_ring() {
        let (h, t) = (AtomicU64::new(0), AtomicU64::new(0));
        let r = RingIndex {
            head: &h,
            tail: &t,
            slots: 2,
        };
        assert_eq!(r.consumer_acquire(), None);
        let a = r.producer_acquire().unwrap();
        r.producer_publish(a);
        let b = r.producer_acquire().unwrap();
        r.producer_publish(b);
        assert_eq!(r.producer_acquire(), None, "full after two");
        assert_eq!(r.consumer_acquire(), Some(0));
        r.consumer_release(0);
        assert_eq!(r.producer_acquire(), Some(2));
    }
}
