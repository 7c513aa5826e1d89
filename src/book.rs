//! The address book: one record per rank, gathered through the store in a tree so that the
//! store serves about three requests per rank instead of one per pair of ranks.
//!
//! Each rank publishes its record under `{key}/rec/{rank}`. The first rank of every block of
//! [`BLOCK`] ranks reads its block's records and publishes them as one value
//! (`{key}/blk/{b}`); rank 0 reads the blocks and publishes the book (`{key}/book`), which
//! every rank reads once. A rank that never publishes is written into the book as missing
//! once its block leader's wait ends, so every rank fails with an error naming the ranks that
//! never arrived, within about twice the timeout, instead of each waiting on each.

use crate::store::Store;
use acspeed_core::{Error, Result};
use std::time::{Duration, Instant};

/// Ranks per block: a leader reads this many records, rank 0 `n / BLOCK` blocks.
pub(crate) const BLOCK: u32 = 32;

/// Every rank's record, in rank order (see the module docs). `t` bounds each rank's wait for
/// the others to arrive. Rank 0 passes every other rank's record through `compact` before it
/// publishes the book (to leave out what repeats its own record).
pub(crate) fn gather(
    store: &dyn Store,
    key: &str,
    rank: u32,
    nranks: u32,
    mine: &str,
    t: Duration,
    compact: &dyn Fn(&str) -> String,
) -> Result<Vec<String>> {
    let k = |s: String| format!("{key}/{s}");
    store.set(&k(format!("rec/{rank}")), mine.as_bytes())?;
    let start = Instant::now();
    let block = |b: u32| b * BLOCK..((b + 1) * BLOCK).min(nranks);
    // Reads the records of `ranks` until `deadline`; those not there by then are missing.
    let records = |ranks: std::ops::Range<u32>, deadline: Instant| -> Result<Vec<Option<String>>> {
        ranks
            .map(|q| {
                let left = deadline.saturating_duration_since(Instant::now());
                match store.get(&k(format!("rec/{q}")), left) {
                    Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
                    Err(Error::Timeout { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .collect()
    };
    let encode = |v: &[Option<String>]| serde_json::to_vec(v).expect("strings serialise");
    let decode = |what: &str, v: &[u8]| -> Result<Vec<Option<String>>> {
        serde_json::from_slice(v).map_err(|e| Error::Remote {
            rank: 0,
            detail: format!("published a malformed {what}: {e}"),
        })
    };
    if rank % BLOCK == 0 && rank != 0 {
        let mine = records(block(rank / BLOCK), start + t)?;
        store.set(&k(format!("blk/{}", rank / BLOCK)), &encode(&mine))?;
    }
    let book = if rank == 0 {
        let mut all = records(block(0), start + t)?;
        for b in 1..nranks.div_ceil(BLOCK) {
            // A leader publishes its block once its own wait (t) ends; one that never came
            // leaves its block to be read here, at once.
            let v = match store.get(
                &k(format!("blk/{b}")),
                (start + 2 * t).saturating_duration_since(Instant::now()),
            ) {
                Ok(v) => decode("block of records", &v)?,
                Err(Error::Timeout { .. }) => records(block(b), Instant::now())?,
                Err(e) => return Err(e),
            };
            all.extend(v);
        }
        let book: Vec<Option<String>> = all
            .iter()
            .enumerate()
            .map(|(q, r)| match q {
                0 => r.clone(),
                _ => r.as_deref().map(compact),
            })
            .collect();
        store.set(&k("book".into()), &encode(&book))?;
        book
    } else {
        let v = store
            .get(&k("book".into()), 3 * t)
            .map_err(|_| Error::Timeout {
                rank: 0,
                what: format!("rendezvous ({key}): rank 0 never published the address book (did rank 0 start?)"),
                after: 3 * t,
            })?;
        decode("address book", &v)?
    };
    if book.len() != nranks as usize {
        return Err(Error::Remote {
            rank: 0,
            detail: format!(
                "published an address book of {} ranks for a world of {nranks} (WORLD_SIZE differs?)",
                book.len()
            ),
        });
    }
    let missing: Vec<u32> = (0..nranks)
        .filter(|q| book[*q as usize].is_none())
        .collect();
    if let Some(&first) = missing.first() {
        let shown: Vec<String> = missing.iter().take(16).map(|q| q.to_string()).collect();
        return Err(Error::Timeout {
            rank: first,
            what: format!(
                "rendezvous ({key}): {} of {nranks} ranks never arrived: {}{} (did they start? is WORLD_SIZE={nranks} right?)",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() { ", ..." } else { "" }
            ),
            after: t,
        });
    }
    Ok(book.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A store that counts the requests it serves.
    struct Counting(Arc<MemStore>, AtomicUsize);

    impl Store for Counting {
        fn set(&self, key: &str, value: &[u8]) -> Result<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.set(key, value)
        }
        fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.get(key, timeout)
        }
        fn add(&self, key: &str, delta: i64) -> Result<i64> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.add(key, delta)
        }
    }

    /// `n` ranks gather, those in `absent` never start; each rank's outcome.
    fn run(n: u32, absent: &[u32], t: Duration) -> (Vec<Result<Vec<String>>>, usize) {
        let store = Counting(MemStore::new(), AtomicUsize::new(0));
        let out = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .filter(|r| !absent.contains(r))
                .map(|r| {
                    let store = &store;
                    s.spawn(move || {
                        let compact = |x: &str| x.replace("same", "");
                        gather(store, "k", r, n, &format!("r{r} same"), t, &compact)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        (out, store.1.load(Ordering::Relaxed))
    }

    /// 100 ranks (four blocks) read the same book in rank order, rank 0's compaction applied
    /// to the others, for about three store requests per rank (a full exchange: 10,000).
    #[test]
    fn a_hundred_ranks_share_one_book_in_linear_requests() {
        let (out, requests) = run(100, &[], Duration::from_secs(20));
        let want: Vec<String> = (0..100)
            .map(|r| {
                if r == 0 {
                    "r0 same".into()
                } else {
                    format!("r{r} ")
                }
            })
            .collect();
        for o in out {
            assert_eq!(o.unwrap(), want);
        }
        // One set and one get per rank and per leader's block, the book once each.
        assert!(requests <= 3 * 100 + 2 * 4, "{requests} requests");
    }

    /// Ranks that never start (one a block leader) are named by every rank, within about
    /// twice the timeout.
    #[test]
    fn ranks_that_never_arrive_are_named_by_everyone() {
        let t0 = Instant::now();
        let (out, _) = run(70, &[5, 32, 69], Duration::from_millis(400));
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(out.len(), 67);
        for o in out {
            let e = o.unwrap_err().to_string();
            assert!(e.contains("3 of 70 ranks never arrived: 5, 32, 69"), "{e}");
        }
        // Without rank 0 nobody publishes the book: each rank says so.
        let (out, _) = run(3, &[0], Duration::from_millis(200));
        for o in out {
            assert!(o
                .unwrap_err()
                .to_string()
                .contains("rank 0 never published the address book"));
        }
    }
}
