//! What the executor measures about its peers: per-collective traffic for the timeline
//! ([`PeerStats`]) and a live view of what it waits for, for the control plane's heartbeat
//! ([`WaitProbe`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// What one collective exchanged with each peer (indexed by rank): bytes sent and received,
/// and how long this rank waited for that peer's sends and receives to complete. Collected
/// when asked for (the timeline), summed over lanes; with the phases each lane went through.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    pub sent: Vec<u64>,
    pub recv: Vec<u64>,
    pub wait: Vec<Duration>,
    pub phases: Vec<Phase>,
    /// Start of leading sends not yet in a phase (a lane's sends join the phase around them).
    lead: Option<Instant>,
}

/// A run of consecutive steps of one lane that do the same kind of work: `reduce` (steps that
/// reduce what they receive: a ring's reduce-scatter, a tree's way up, a host reduce) or
/// `distribute` (steps that only move data: a ring's all-gather, a tree's broadcast).
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub lane: u32,
    pub name: &'static str,
    pub steps: u32,
    pub start: Instant,
    pub end: Instant,
}

impl PeerStats {
    /// Adds a step of `lane` that ran from `start` to `end`: it extends the lane's last phase
    /// when it is of the same kind. A plain send (`name` None) belongs to the phase in
    /// progress, or to the next one when it comes first (a ring's opening send).
    pub(crate) fn step(
        &mut self,
        lane: u32,
        name: Option<&'static str>,
        start: Instant,
        end: Instant,
    ) {
        let Some(name) = name else {
            match self.phases.last_mut() {
                Some(p) if p.lane == lane => p.end = end,
                _ => {
                    self.lead.get_or_insert(start);
                }
            }
            return;
        };
        let start = self.lead.take().unwrap_or(start);
        match self.phases.last_mut() {
            Some(p) if p.lane == lane && p.name == name => {
                p.end = end;
                p.steps += 1;
            }
            _ => self.phases.push(Phase {
                lane,
                name,
                steps: 1,
                start,
                end,
            }),
        }
    }
}

impl PeerStats {
    pub fn new(nranks: u32) -> Self {
        let n = nranks as usize;
        PeerStats {
            sent: vec![0; n],
            recv: vec![0; n],
            wait: vec![Duration::ZERO; n],
            phases: Vec::new(),
            lead: None,
        }
    }

    pub(crate) fn add(&mut self, o: &PeerStats) {
        for (i, x) in o.sent.iter().enumerate() {
            self.sent[i] += x;
            self.recv[i] += o.recv[i];
            self.wait[i] += o.wait[i];
        }
        self.phases.extend(o.phases.iter().cloned());
    }
}

/// What the executor is blocked on right now and how long it has waited on each peer in the
/// current collective, read by the control plane's heartbeat from another thread. Relaxed
/// atomics: a heartbeat may see a slightly stale mix, which a stall report tolerates.
#[derive(Debug, Default)]
pub struct WaitProbe {
    /// 0 when not waiting, else [`encode`] of (peer, send).
    now: AtomicU64,
    /// Nanoseconds waited per peer in the current collective: [receives, sends].
    waited: Vec<[AtomicU64; 2]>,
}

/// `peer + 1`, with bit 32 set for a send; 0 means nothing.
pub fn encode(peer: u32, send: bool) -> u64 {
    (peer as u64 + 1) | (u64::from(send) << 32)
}

/// An [`encode`]d value as (peer, is_send); `None` for 0.
pub fn decode(v: u64) -> Option<(u32, bool)> {
    let peer = (v & 0xffff_ffff) as u32;
    (peer > 0).then(|| (peer - 1, (v >> 32) & 1 == 1))
}

impl WaitProbe {
    pub fn new(nranks: u32) -> Self {
        WaitProbe {
            now: AtomicU64::new(0),
            waited: (0..nranks).map(|_| Default::default()).collect(),
        }
    }

    /// A new collective starts: forget the last one's waits.
    pub fn reset(&self) {
        for w in self.waited.iter().flatten() {
            w.store(0, Relaxed);
        }
    }

    pub(crate) fn begin(&self, peer: u32, send: bool) {
        self.now.store(encode(peer, send), Relaxed);
    }

    pub(crate) fn end(&self, peer: u32, send: bool, waited: Duration) {
        self.now.store(0, Relaxed);
        if let Some(w) = self.waited.get(peer as usize) {
            w[usize::from(send)].fetch_add(waited.as_nanos() as u64, Relaxed);
        }
    }

    /// What it waits for at this instant ([`encode`]d; 0 = nothing).
    pub fn now(&self) -> u64 {
        self.now.load(Relaxed)
    }

    /// The peer and direction waited on longest in the current collective ([`encode`]d),
    /// with how long; `(0, 0)` when nothing was waited for.
    pub fn longest(&self) -> (u64, Duration) {
        let mut best = (0, 0);
        for (p, w) in self.waited.iter().enumerate() {
            for (d, ns) in w.iter().enumerate() {
                let ns = ns.load(Relaxed);
                if ns > best.1 {
                    best = (encode(p as u32, d == 1), ns);
                }
            }
        }
        (best.0, Duration::from_nanos(best.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_wait_is_kept_per_peer_and_direction() {
        let p = WaitProbe::new(3);
        assert_eq!(p.longest(), (0, Duration::ZERO));
        p.begin(2, true);
        assert_eq!(decode(p.now()), Some((2, true)));
        p.end(2, true, Duration::from_millis(5));
        p.end(1, false, Duration::from_millis(3));
        p.end(1, false, Duration::from_millis(3));
        assert_eq!(p.now(), 0);
        assert_eq!(p.longest(), (encode(1, false), Duration::from_millis(6)));
        p.reset();
        assert_eq!(p.longest(), (0, Duration::ZERO));
        assert_eq!(decode(encode(0, false)), Some((0, false)));
        assert_eq!(decode(0), None);
    }
}
