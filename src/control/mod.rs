//! The control plane: every rank sends a heartbeat (which collective it is in, since when) to
//! a coordinator on rank 0, which reports stalled collectives with the ranks that have not
//! joined them (Horovod's "missing ranks" report) to the ranks that wait, and logs it itself.
//!
//! It is advisory: it never fails a collective (the data path names dead ranks on its own),
//! and losing it only ends the reports. It runs on a single-threaded tokio runtime of its
//! own, one thread per communicator, so it costs the data path nothing but a mutex per
//! collective; docs/CONTROL_PLANE.md says why the data path does not use tokio.

mod report;
mod wire;

use crate::store::Store;
use acspeed_core::{Error, Result};
use bytes::Bytes;
use report::{stalls, RankView};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use wire::{read_frame, Beat, Frame};

/// Where reports go (the communicator's log).
pub(crate) type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// Reports kept for [`Control::reports`].
const KEPT: usize = 32;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What this rank is doing (read by the heartbeat).
struct Progress {
    entered: u64,
    done: u64,
    kind: &'static str,
    algo: &'static str,
    bytes: u64,
    since: Instant,
}

/// Heartbeat period for a stall threshold: a quarter of it, within 50 ms..5 s.
pub(crate) fn beat_every(warn: Duration) -> Duration {
    (warn / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// A rank whose heartbeats stopped this long ago (connection still open) is "silent".
fn silent_after(every: Duration) -> Duration {
    every * 3 + Duration::from_secs(1)
}

/// This rank's end of the control plane.
pub(crate) struct Control {
    progress: Arc<Mutex<Progress>>,
    reports: Arc<Mutex<VecDeque<String>>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// Everything the control thread needs.
struct Setup {
    rank: u32,
    nranks: u32,
    secret: [u8; 16],
    warn: Duration,
    coordinator: SocketAddr,
    listener: Option<std::net::TcpListener>,
    probe: Arc<acspeed_core::executor::WaitProbe>,
    sink: Sink,
    /// Where the control plane's own troubles go (info: it is advisory, and at the end of a
    /// job a rank may find the coordinator already gone).
    note: Sink,
}

impl Control {
    /// Rendezvous through `store` under `key` (rank 0 listens on `ip` and publishes its
    /// address) and start the heartbeat; rank 0 also runs the coordinator. `warn` is the
    /// stall threshold (`ACSPEED_STALL_WARN_SECS`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        store: &dyn Store,
        key: &str,
        rank: u32,
        nranks: u32,
        ip: IpAddr,
        secret: [u8; 16],
        warn: Duration,
        timeout: Duration,
        probe: Arc<acspeed_core::executor::WaitProbe>,
        sink: Sink,
        note: Sink,
    ) -> Result<Control> {
        let listener = if rank == 0 {
            let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .map_err(|e| Error::io(format!("binding the control port on {ip}"), e))?;
            l.set_nonblocking(true)
                .map_err(|e| Error::io("configuring the control port", e))?;
            let a = l
                .local_addr()
                .map_err(|e| Error::io("reading the control port address", e))?;
            store.set(key, a.to_string().as_bytes())?;
            Some(l)
        } else {
            None
        };
        let a = store.get(key, timeout)?;
        let a = String::from_utf8_lossy(&a);
        let coordinator = a.parse::<SocketAddr>().map_err(|_| Error::Remote {
            rank: 0,
            detail: format!("published a bad control address '{a}'"),
        })?;
        let progress = Arc::new(Mutex::new(Progress {
            entered: 0,
            done: 0,
            kind: "",
            algo: "",
            bytes: 0,
            since: Instant::now(),
        }));
        let reports = Arc::new(Mutex::new(VecDeque::new()));
        let (stop, stopped) = watch::channel(false);
        let setup = Setup {
            rank,
            nranks,
            secret,
            warn,
            coordinator,
            listener,
            probe,
            sink,
            note,
        };
        let (p, r) = (progress.clone(), reports.clone());
        let thread = std::thread::Builder::new()
            .name(format!("acspeed-ctl{rank}"))
            .spawn(move || run(setup, p, r, stopped))
            .map_err(|e| Error::io("starting the control thread", e))?;
        Ok(Control {
            progress,
            reports,
            stop,
            thread: Some(thread),
        })
    }

    /// This rank entered collective `seq`.
    pub(crate) fn enter(&self, seq: u64, kind: &'static str, algo: &'static str, bytes: u64) {
        let mut p = lock(&self.progress);
        (p.entered, p.kind, p.algo, p.bytes, p.since) = (seq, kind, algo, bytes, Instant::now());
    }

    /// This rank finished (or failed) collective `seq`.
    pub(crate) fn leave(&self, seq: u64) {
        let mut p = lock(&self.progress);
        (p.done, p.since) = (seq, Instant::now());
    }

    /// The stall reports this rank received, oldest first (the last few).
    pub(crate) fn reports(&self) -> Vec<String> {
        lock(&self.reports).iter().cloned().collect()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    s: Setup,
    progress: Arc<Mutex<Progress>>,
    reports: Arc<Mutex<VecDeque<String>>>,
    stopped: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (s.note)(&format!("control plane off: no runtime: {e}")),
    };
    rt.block_on(async move {
        if let Some(l) = s.listener {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    let c = Coordinator {
                        nranks: s.nranks,
                        secret: s.secret,
                        warn: s.warn,
                        sink: s.sink.clone(),
                        table: Arc::new(Mutex::new(Table::new(s.nranks))),
                    };
                    tokio::spawn(c.serve(l, stopped.clone()));
                }
                Err(e) => (s.note)(&format!("control plane off: {e}")),
            }
        }
        let hello = Frame::Hello {
            secret: s.secret,
            rank: s.rank,
        };
        let me = Me {
            progress,
            probe: s.probe,
            reports,
        };
        if let Err(e) = heartbeat(s.coordinator, hello, s.warn, me, &s.sink, stopped).await {
            // Advisory: the job goes on without stall reports.
            if e.kind() != std::io::ErrorKind::Interrupted {
                (s.note)(&format!(
                    "control plane: lost the coordinator at {} ({e}); no stall reports from now on",
                    s.coordinator
                ));
            }
        }
    });
}

/// This rank's state, as the heartbeat reads it.
struct Me {
    progress: Arc<Mutex<Progress>>,
    probe: Arc<acspeed_core::executor::WaitProbe>,
    reports: Arc<Mutex<VecDeque<String>>>,
}

/// Connects to the coordinator and sends a heartbeat every period until stopped; logs the
/// reports it receives. Ends with `Interrupted` when stopped or when the coordinator closed
/// in an orderly way (its communicator was dropped: the job is ending).
async fn heartbeat(
    to: SocketAddr,
    hello: Frame,
    warn: Duration,
    me: Me,
    sink: &Sink,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let conn = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = conn.set_nodelay(true);
    let (mut rd, mut wr) = conn.into_split();
    wr.write_all(&hello.encode()).await?;
    let mut tick = tokio::time::interval(beat_every(warn));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupted = || std::io::Error::from(std::io::ErrorKind::Interrupted);
    loop {
        tokio::select! {
            _ = stopped.changed() => return Err(interrupted()),
            _ = tick.tick() => {
                let beat = {
                    let p = lock(&me.progress);
                    Beat {
                        entered: p.entered,
                        done: p.done,
                        kind: p.kind.to_string(),
                        algo: p.algo.to_string(),
                        bytes: p.bytes,
                        for_ms: p.since.elapsed().as_millis() as u64,
                        now_on: me.probe.now(),
                        longest_on: me.probe.longest().0,
                        longest_ms: me.probe.longest().1.as_millis() as u64,
                    }
                };
                wr.write_all(&Frame::Beat(beat).encode()).await?;
            }
            f = read_frame(&mut rd) => match f? {
                None => return Err(interrupted()),
                Some(b) => {
                    if let Some(Frame::Report(text)) = Frame::decode(b) {
                        sink(&text);
                        let mut r = lock(&me.reports);
                        if r.len() == KEPT {
                            r.pop_front();
                        }
                        r.push_back(text);
                    }
                }
            },
        }
    }
}

/// The coordinator's view of the job.
struct Table {
    views: Vec<RankView>,
    /// Where reports to each rank go (its connection's writer).
    to: Vec<Option<mpsc::UnboundedSender<Bytes>>>,
    /// When each stalled collective was last reported.
    reported: HashMap<u64, Instant>,
}

impl Table {
    fn new(n: u32) -> Table {
        Table {
            views: vec![RankView::default(); n as usize],
            to: vec![None; n as usize],
            reported: HashMap::new(),
        }
    }
}

#[derive(Clone)]
struct Coordinator {
    nranks: u32,
    secret: [u8; 16],
    warn: Duration,
    sink: Sink,
    table: Arc<Mutex<Table>>,
}

impl Coordinator {
    async fn serve(self, l: tokio::net::TcpListener, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(beat_every(self.warn));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                a = l.accept() => {
                    if let Ok((conn, _)) = a {
                        tokio::spawn(self.clone().rank_conn(conn));
                    }
                }
                _ = tick.tick() => self.inspect(),
            }
        }
    }

    /// One rank's connection: a hello with the job secret within 5 s (a stranger that does
    /// not send one is dropped), then heartbeats until it closes.
    async fn rank_conn(self, conn: tokio::net::TcpStream) {
        let _ = conn.set_nodelay(true);
        let (mut rd, mut wr) = conn.into_split();
        let hello = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut rd)).await;
        let rank = match hello {
            Ok(Ok(Some(b))) => match Frame::decode(b) {
                Some(Frame::Hello { secret, rank })
                    if secret == self.secret && rank < self.nranks =>
                {
                    rank
                }
                _ => return,
            },
            _ => return,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        lock(&self.table).to[rank as usize] = Some(tx);
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
            }
        });
        let why = loop {
            match read_frame(&mut rd).await {
                Ok(Some(b)) => {
                    if let Some(Frame::Beat(beat)) = Frame::decode(b) {
                        let mut t = lock(&self.table);
                        let v = &mut t.views[rank as usize];
                        (v.beat, v.heard, v.gone) = (Some(beat), Some(Instant::now()), None);
                    }
                }
                Ok(None) => break "closed".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        let mut t = lock(&self.table);
        t.views[rank as usize].gone = Some((why, Instant::now()));
        t.to[rank as usize] = None;
    }

    /// Reports each stalled collective once it passes the threshold, then every threshold,
    /// to the ranks waiting in it, and logs it here.
    fn inspect(&self) {
        let now = Instant::now();
        let every = beat_every(self.warn);
        let mut t = lock(&self.table);
        let found = stalls(&t.views, now, self.warn, silent_after(every));
        let mut logged = Vec::new();
        for s in &found {
            let due = t
                .reported
                .get(&s.seq)
                .is_none_or(|at| now.saturating_duration_since(*at) + every / 2 >= self.warn);
            if !due {
                continue;
            }
            t.reported.insert(s.seq, now);
            let frame = Frame::Report(s.text.clone()).encode();
            for r in &s.waiting {
                if let Some(tx) = &t.to[*r as usize] {
                    let _ = tx.send(frame.clone());
                }
            }
            // Rank 0 hears it through its own connection when it waits in it.
            if !s.waiting.contains(&0) {
                logged.push(s.text.clone());
            }
        }
        let live: Vec<u64> = found.iter().map(|s| s.seq).collect();
        t.reported.retain(|k, _| live.contains(k));
        drop(t);
        for text in logged {
            (self.sink)(&format!("(coordinator) {text}"));
        }
    }
}
