//! The rendezvous key-value store. Rank 0 hosts a [`TcpStoreServer`] at
//! `MASTER_ADDR:MASTER_PORT`; every rank talks to it through a [`TcpStoreClient`]. The
//! communicator only needs the [`Store`] trait, so the PyTorch backend can hand it torch's own
//! Store instead, and thread-based tests use [`MemStore`].
//!
//! Protocol (one request, one reply, on a persistent connection):
//! `op:u8 key_len:u32 key value_len:u32 value [timeout_ms:u64 for GET]` ->
//! `status:u8 value_len:u32 value`. Lengths are bounded before anything is allocated.

use acspeed_core::{Error, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const MAX_KEY: u32 = 4096;
const MAX_VALUE: u32 = 16 << 20;
const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_ADD: u8 = 3;
const OK: u8 = 0;
const MISSING: u8 = 1;
const BAD: u8 = 2;

/// A key-value store shared by all ranks of a job.
pub trait Store: Send + Sync {
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Waits up to `timeout` for `key` to be set.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>>;
    /// Atomically adds `delta` to an integer key (missing = 0) and returns the new value.
    fn add(&self, key: &str, delta: i64) -> Result<i64>;
}

/// Map + condvar; the server's state and the in-process store for tests.
#[derive(Default)]
pub struct MemStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
    cv: Condvar,
}

impl MemStore {
    pub fn new() -> Arc<MemStore> {
        Arc::new(MemStore::default())
    }
}

impl Store for MemStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), value.to_vec());
        self.cv.notify_all();
        Ok(())
    }
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = m.get(key) {
                return Ok(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    rank: 0,
                    what: format!("rendezvous: waiting for key '{key}' in the store"),
                    after: timeout,
                });
            }
            m = self
                .cv
                .wait_timeout(m, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let cur = m
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        let new = cur + delta;
        m.insert(key.to_string(), new.to_string().into_bytes());
        self.cv.notify_all();
        Ok(new)
    }
}

/// Rank 0's store server; serves each client connection on its own thread.
pub struct TcpStoreServer {
    addr: SocketAddr,
}

impl TcpStoreServer {
    /// Binds `addr` (fails clearly when the port is taken) and starts serving in the background.
    pub fn start(addr: SocketAddr) -> Result<TcpStoreServer> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (the port is in use: another job or a stale process? pick another MASTER_PORT)"
            } else {
                ""
            };
            Error::io(format!("rank 0 cannot host the rendezvous store on MASTER_ADDR:MASTER_PORT = {addr}{hint}"), e)
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the store address", e))?;
        let state = MemStore::new();
        std::thread::Builder::new()
            .name("acspeed-store".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let st = state.clone();
                    let _ = std::thread::Builder::new()
                        .name("acspeed-store-conn".into())
                        .spawn(move || serve(conn, &st));
                }
            })
            .map_err(|e| Error::io("starting the store thread", e))?;
        Ok(TcpStoreServer { addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_bytes(s: &mut impl Read, max: u32) -> std::io::Result<Vec<u8>> {
    let n = read_u32(s)?;
    if n > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("length {n} exceeds {max}"),
        ));
    }
    let mut v = vec![0u8; n as usize];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn reply(s: &mut TcpStream, status: u8, v: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(5 + v.len());
    out.push(status);
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v);
    s.write_all(&out)
}

fn serve(mut s: TcpStream, st: &MemStore) {
    let _ = s.set_nodelay(true);
    loop {
        let mut op = [0u8; 1];
        if s.read_exact(&mut op).is_err() {
            return;
        }
        let (Ok(key), Ok(val)) = (read_bytes(&mut s, MAX_KEY), read_bytes(&mut s, MAX_VALUE))
        else {
            return;
        };
        let key = String::from_utf8_lossy(&key).into_owned();
        let r = match op[0] {
            OP_SET => st.set(&key, &val).map(|_| Vec::new()),
            OP_ADD => {
                let delta = std::str::from_utf8(&val)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                st.add(&key, delta).map(|v| v.to_string().into_bytes())
            }
            OP_GET => {
                let mut ms = [0u8; 8];
                if s.read_exact(&mut ms).is_err() {
                    return;
                }
                st.get(&key, Duration::from_millis(u64::from_le_bytes(ms)))
            }
            _ => {
                let _ = reply(&mut s, BAD, b"unknown op");
                return;
            }
        };
        let ok = match r {
            Ok(v) => reply(&mut s, OK, &v),
            Err(_) => reply(&mut s, MISSING, &[]),
        };
        if ok.is_err() {
            return;
        }
    }
}

/// A connection to the store server.
pub struct TcpStoreClient {
    conn: Mutex<TcpStream>,
    addr: SocketAddr,
}

impl TcpStoreClient {
    /// Connects to `host:port`, retrying until `timeout` (rank 0 may start later than us).
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStoreClient> {
        let deadline = Instant::now() + timeout;
        let addr = resolve(host, port)?;
        let mut last = None;
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(TcpStoreClient {
                        conn: Mutex::new(s),
                        addr,
                    });
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Err(Error::Timeout {
            rank: 0,
            what: format!(
                "rendezvous: cannot reach the store of rank 0 at MASTER_ADDR:MASTER_PORT = {addr} ({}); is rank 0 running and the address right?",
                last.map(|e| e.to_string()).unwrap_or_else(|| "no attempt".into())
            ),
            after: timeout,
        })
    }

    /// Our address as the store sees it: the interface that routes to rank 0.
    pub fn local_ip(&self) -> Result<std::net::IpAddr> {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        c.local_addr()
            .map(|a| a.ip())
            .map_err(|e| Error::io("reading the local address", e))
    }

    fn call(
        &self,
        op: u8,
        key: &str,
        val: &[u8],
        get_timeout: Option<Duration>,
    ) -> Result<(u8, Vec<u8>)> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut req = vec![op];
        req.extend_from_slice(&(key.len() as u32).to_le_bytes());
        req.extend_from_slice(key.as_bytes());
        req.extend_from_slice(&(val.len() as u32).to_le_bytes());
        req.extend_from_slice(val);
        if let Some(t) = get_timeout {
            req.extend_from_slice(&(t.as_millis() as u64).to_le_bytes());
        }
        let io = |e| Error::Remote {
            rank: 0,
            detail: format!("lost the rendezvous store at {} ({e})", self.addr),
        };
        // The server answers a GET within its timeout; allow slack, never wait forever.
        let _ = c.set_read_timeout(Some(
            get_timeout.unwrap_or(Duration::ZERO) + Duration::from_secs(30),
        ));
        c.write_all(&req).map_err(io)?;
        let mut st = [0u8; 1];
        c.read_exact(&mut st).map_err(io)?;
        let v = read_bytes(&mut *c, MAX_VALUE).map_err(io)?;
        Ok((st[0], v))
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::invalid(format!("MASTER_ADDR '{host}' cannot be resolved: {e}")))?
        .find(|a| a.is_ipv4())
        .or_else(|| (host, port).to_socket_addrs().ok()?.next())
        .ok_or_else(|| Error::invalid(format!("MASTER_ADDR '{host}' has no address")))
}

impl Store for TcpStoreClient {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.call(OP_SET, key, value, None).map(|_| ())
    }
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        match self.call(OP_GET, key, &[], Some(timeout))? {
            (OK, v) => Ok(v),
            _ => Err(Error::Timeout {
                rank: 0,
                what: format!("rendezvous: waiting for key '{key}' in the store"),
                after: timeout,
            }),
        }
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let (_, v) = self.call(OP_ADD, key, delta.to_string().as_bytes(), None)?;
        std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Remote {
                rank: 0,
                detail: "store returned a non-integer for add".into(),
            })
    }
}

pub(crate) fn resolve_master(host: &str, port: u16) -> Result<SocketAddr> {
    resolve(host, port)
}
