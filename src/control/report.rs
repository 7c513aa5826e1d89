//! The coordinator's stall report: from every rank's last heartbeat, which collective is
//! stalled, which ranks wait in it and which have not joined it (Horovod's "missing ranks"),
//! each with what it was last seen doing. Pure, so every case is a unit test.

use super::wire::Beat;
use acspeed_core::exec_stats::decode;
use std::time::{Duration, Instant};

/// What the coordinator knows of one rank.
#[derive(Clone, Debug, Default)]
pub(crate) struct RankView {
    pub(crate) beat: Option<Beat>,
    /// When the last heartbeat arrived.
    pub(crate) heard: Option<Instant>,
    /// Why the rank's control connection ended, and when.
    pub(crate) gone: Option<(String, Instant)>,
}

impl RankView {
    /// How long the rank has been in its current state (inside a collective, or idle), as of
    /// `now`.
    fn for_now(&self, now: Instant) -> Duration {
        match (&self.beat, self.heard) {
            (Some(b), Some(h)) => {
                Duration::from_millis(b.for_ms) + now.saturating_duration_since(h)
            }
            _ => Duration::ZERO,
        }
    }
}

/// One stalled collective.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stall {
    pub(crate) seq: u64,
    /// Ranks inside it that have not finished (they get the report).
    pub(crate) waiting: Vec<u32>,
    pub(crate) text: String,
}

/// `0-3,5,7-8`.
pub(crate) fn rank_list(ranks: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", ranks[i], ranks[j])
        } else {
            ranks[i].to_string()
        });
        i = j + 1;
    }
    out.join(",")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// What a rank that has not joined collective `seq` was last seen doing.
fn describe_missing(r: u32, v: &RankView, now: Instant, silent_after: Duration) -> String {
    let Some(b) = &v.beat else {
        return match &v.gone {
            Some((why, _)) => format!("rank {r} (never reported; control connection: {why})"),
            None => format!("rank {r} (never reported: not started, or its host unreachable?)"),
        };
    };
    if let Some((why, at)) = &v.gone {
        return format!(
            "rank {r} (control connection lost {} ago: {why}; exited or crashed?)",
            secs(now.saturating_duration_since(*at))
        );
    }
    let heard = v.heard.map(|h| now.saturating_duration_since(h));
    if let Some(h) = heard.filter(|h| *h > silent_after) {
        return format!(
            "rank {r} (silent for {}: process stopped or host unreachable?)",
            secs(h)
        );
    }
    let t = secs(v.for_now(now));
    if b.entered > b.done {
        format!("rank {r} (still in {} #{} for {t})", b.kind, b.entered)
    } else if b.done == 0 {
        format!("rank {r} (has run no collective yet; up for {t})")
    } else {
        format!(
            "rank {r} (busy outside acspeed for {t} since it finished #{})",
            b.done
        )
    }
}

/// What each rank inside a stalled collective has waited on longest in it, and the links
/// whose sender and receiver both waited on them longest (the slow ones).
fn describe_transfers(views: &[RankView], waiting: &[u32]) -> String {
    let beat = |r: u32| views[r as usize].beat.as_ref();
    // Longest wait in this collective, else what it is blocked on right now.
    let on = |r: u32| beat(r).and_then(|b| decode(b.longest_on).or_else(|| decode(b.now_on)));
    let each: Vec<String> = waiting
        .iter()
        .map(|&r| {
            let ms = beat(r).map(|b| b.longest_ms).unwrap_or(0);
            let t = if ms > 0 {
                format!(" for {}", secs(Duration::from_millis(ms)))
            } else {
                String::new()
            };
            match on(r) {
                Some((p, true)) => format!("rank {r} waited{t} sending to rank {p}"),
                Some((p, false)) => format!("rank {r} waited{t} receiving from rank {p}"),
                None => format!("rank {r} busy (copying or reducing)"),
            }
        })
        .collect();
    let slow: Vec<String> = waiting
        .iter()
        .filter_map(|&r| match on(r) {
            Some((p, true)) if on(p) == Some((r, false)) => Some(format!("rank {r} -> rank {p}")),
            _ => None,
        })
        .collect();
    let mut t = each.join(", ");
    if slow.is_empty() {
        t.push_str(" (a slow link or a rank stuck inside a transport)");
    } else {
        t.push_str(&format!(
            "; slow link(s), their sender and receiver both waiting on them most: {}",
            slow.join(", ")
        ));
    }
    t
}

/// Collectives some rank has waited in for at least `warn`, oldest first.
pub(crate) fn stalls(
    views: &[RankView],
    now: Instant,
    warn: Duration,
    silent_after: Duration,
) -> Vec<Stall> {
    // Only ranks that still report count as waiting: a silent one's wait is unknown (it is
    // named, as silent, in the reports of the ranks that wait for it).
    let live = |v: &RankView| {
        v.gone.is_none()
            && v.heard
                .is_some_and(|h| now.saturating_duration_since(h) <= silent_after)
    };
    let mut seqs: Vec<u64> = views
        .iter()
        .filter_map(|v| {
            let b = v.beat.as_ref()?;
            (live(v) && b.entered > b.done && v.for_now(now) >= warn).then_some(b.entered)
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut out = Vec::new();
    for s in seqs {
        let mut waiting = Vec::new();
        let mut missing = Vec::new();
        let mut longest = (Duration::ZERO, None::<&Beat>);
        for (r, v) in views.iter().enumerate() {
            let r = r as u32;
            match &v.beat {
                Some(b) if b.entered >= s => {
                    if b.entered == s && b.done < s && live(v) {
                        waiting.push(r);
                        let t = v.for_now(now);
                        if t >= longest.0 {
                            longest = (t, Some(b));
                        }
                    }
                }
                _ => missing.push(r),
            }
        }
        let Some(b) = longest.1 else { continue };
        let mut text = format!(
            "stall: {} #{s} ({} bytes, {}) has waited {} on rank(s) {}; ",
            b.kind,
            b.bytes,
            b.algo,
            secs(longest.0),
            rank_list(&waiting)
        );
        if missing.is_empty() {
            text.push_str(&format!(
                "every rank has joined it, so the time goes in the transfers: {}",
                describe_transfers(views, &waiting)
            ));
        } else {
            let each: Vec<String> = missing
                .iter()
                .map(|r| describe_missing(*r, &views[*r as usize], now, silent_after))
                .collect();
            text.push_str(&format!(
                "missing rank(s) {}: {}",
                rank_list(&missing),
                each.join(", ")
            ));
        }
        out.push(Stall {
            seq: s,
            waiting,
            text,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entered: u64, done: u64, for_ms: u64, heard: Instant) -> RankView {
        waiting_view(entered, done, for_ms, heard, 0)
    }

    fn waiting_view(entered: u64, done: u64, for_ms: u64, heard: Instant, on: u64) -> RankView {
        // `on` is both the longest wait (1.5 s) and the current one.
        RankView {
            beat: Some(Beat {
                entered,
                done,
                kind: "allreduce".into(),
                algo: "ring".into(),
                bytes: 4096,
                for_ms,
                now_on: on,
                longest_on: on,
                longest_ms: if on == 0 { 0 } else { 1500 },
            }),
            heard: Some(heard),
            gone: None,
        }
    }

    #[test]
    fn rank_lists_are_compact() {
        assert_eq!(rank_list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(rank_list(&[4]), "4");
        assert_eq!(rank_list(&[]), "");
    }

    #[test]
    fn names_the_ranks_that_have_not_joined_and_what_they_do() {
        let now = Instant::now();
        let warn = Duration::from_secs(60);
        let silent = Duration::from_secs(20);
        let views = vec![
            view(5, 4, 61_000, now),
            view(5, 4, 70_000, now),
            view(4, 4, 65_000, now),
            view(4, 3, 62_000, now - Duration::from_secs(30)),
            RankView {
                gone: Some(("connection reset".into(), now - Duration::from_secs(2))),
                ..view(4, 4, 1, now)
            },
            RankView::default(),
        ];
        let s = stalls(&views, now, warn, silent);
        assert_eq!(s.len(), 1, "{s:?}");
        let s = &s[0];
        assert_eq!((s.seq, s.waiting.clone()), (5, vec![0, 1]));
        let t = &s.text;
        assert!(
            t.contains("allreduce #5 (4096 bytes, ring) has waited 70.0s on rank(s) 0-1"),
            "{t}"
        );
        assert!(t.contains("missing rank(s) 2-5"), "{t}");
        assert!(
            t.contains("rank 2 (busy outside acspeed for 65.0s since it finished #4)"),
            "{t}"
        );
        assert!(t.contains("rank 3 (silent for 30.0s"), "{t}");
        assert!(
            t.contains("rank 4 (control connection lost 2.0s ago: connection reset"),
            "{t}"
        );
        assert!(t.contains("rank 5 (never reported"), "{t}");
    }

    #[test]
    fn below_the_threshold_or_all_joined_says_so() {
        let now = Instant::now();
        let warn = Duration::from_secs(60);
        let views = vec![view(3, 2, 10_000, now), view(2, 2, 10_000, now)];
        assert!(stalls(&views, now, warn, warn).is_empty());
        // Rank 1 finished #3 (a broadcast root may finish first), rank 0 is still in it.
        let views = vec![view(3, 2, 61_000, now), view(4, 3, 61_000, now)];
        let s = stalls(&views, now, warn, warn);
        assert_eq!(s[0].waiting, vec![0]);
        assert!(
            s[0].text.contains("every rank has joined it"),
            "{}",
            s[0].text
        );
        assert!(s[0].text.contains("rank 0 busy"), "{}", s[0].text);
        // A ring whose link 2 -> 0 is slow: 2 waits to send to 0, 0 to receive from 2, 1 to
        // receive from 0.
        let send = |p: u64| (p + 1) | (1 << 32);
        let recv = |p: u64| p + 1;
        let views = vec![
            waiting_view(3, 2, 61_000, now, recv(2)),
            waiting_view(3, 2, 61_000, now, recv(0)),
            waiting_view(3, 2, 61_000, now, send(0)),
        ];
        let t = &stalls(&views, now, warn, warn)[0].text;
        assert!(
            t.contains("rank 0 waited for 1.5s receiving from rank 2, rank 1 waited for 1.5s receiving from rank 0, rank 2 waited for 1.5s sending to rank 0; slow link(s), their sender and receiver both waiting on them most: rank 2 -> rank 0"),
            "{t}"
        );
        // Time since the last beat counts: 50 s reported + 15 s since is over 60 s.
        let views = vec![
            view(3, 2, 50_000, now - Duration::from_secs(15)),
            view(2, 2, 0, now),
        ];
        assert_eq!(stalls(&views, now, warn, warn)[0].seq, 3);
    }
}
