//! Building the TCP mesh: every rank listens; rank `b` connects to each lower rank `a` and
//! introduces itself with a hello carrying the job secret. Anything that is not a valid hello
//! from this job (a port scanner, garbage, another job's rank) is dropped and the accept loop
//! goes on, so strangers cannot disturb the job. Every wait is bounded by the deadline.

use crate::tcp::TcpTransport;
use crate::wire::{self, HELLO_LEN, PROTOCOL_VERSION};
use acspeed_core::{Error, Rank, Result};
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long a new connection may take to introduce itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the listening socket a rank publishes through the rendezvous.
pub fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| Error::io("creating a socket", e))?;
    s.set_reuse_address(true)
        .map_err(|e| Error::io("setting SO_REUSEADDR", e))?;
    s.bind(&addr.into())
        .map_err(|e| Error::io(format!("binding {addr}"), e))?;
    s.listen(1024)
        .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    Ok(s.into())
}

fn tune(s: &TcpStream) {
    let sr = SockRef::from(s);
    let _ = sr.set_nodelay(true);
    let _ = sr.set_keepalive(true);
    let _ = sr.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10)),
    );
}

/// Connects rank `rank` to every other rank. `addrs[q]` is rank q's listening address.
pub fn establish(
    rank: Rank,
    listener: TcpListener,
    addrs: &[SocketAddr],
    secret: &[u8; 16],
    timeout: Duration,
) -> Result<TcpTransport> {
    let n = addrs.len() as u32;
    let deadline = Instant::now() + timeout;
    let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();

    for q in 0..rank.0 {
        let s = connect_to(rank, Rank(q), n, addrs[q as usize], secret, deadline)?;
        streams[q as usize] = Some(s);
    }

    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configuring the listener", e))?;
    let mut missing: Vec<u32> = (rank.0 + 1..n).collect();
    while !missing.is_empty() {
        match listener.accept() {
            Ok((s, _from)) => {
                // Strangers (no valid hello) are dropped silently; the loop goes on.
                if let Some((q, s)) = accept_hello(s, rank, n, secret) {
                    if missing.contains(&q) {
                        missing.retain(|m| *m != q);
                        streams[q as usize] = Some(s);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let list: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
                    return Err(Error::Timeout {
                        rank: missing[0],
                        what: format!(
                            "connection set-up: rank(s) {} never connected to rank {rank}",
                            list.join(", ")
                        ),
                        after: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(Error::io("accepting connections", e)),
        }
    }
    TcpTransport::from_streams(rank, streams)
}

fn connect_to(
    rank: Rank,
    q: Rank,
    n: u32,
    addr: SocketAddr,
    secret: &[u8; 16],
    deadline: Instant,
) -> Result<TcpStream> {
    let mut last: Option<std::io::Error> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let why = last
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no answer".into());
            return Err(Error::Timeout {
                rank: q.0,
                what: format!("connecting to rank {q} at {addr} ({why})"),
                after: Duration::ZERO,
            });
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
            Ok(mut s) => {
                tune(&s);
                let _ = s.set_read_timeout(Some(HELLO_TIMEOUT));
                s.write_all(&wire::hello(rank.0, n, secret))
                    .map_err(|e| Error::io(format!("greeting rank {q} at {addr}"), e))?;
                let mut ack = [0u8; 8];
                s.read_exact(&mut ack).map_err(|e| Error::Remote {
                    rank: q.0,
                    detail: format!("refused our hello at {addr} ({e}): wrong job secret, world size or stale address?"),
                })?;
                let magic = u32::from_le_bytes(ack[0..4].try_into().unwrap());
                let their = u32::from_le_bytes(ack[4..8].try_into().unwrap());
                if magic != wire::ACK_MAGIC || their != q.0 {
                    return Err(Error::Remote {
                        rank: q.0,
                        detail: format!("{addr} answered as rank {their}, not rank {q}"),
                    });
                }
                let _ = s.set_read_timeout(None);
                return Ok(s);
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Reads and checks a hello; `None` drops the connection.
fn accept_hello(mut s: TcpStream, me: Rank, n: u32, secret: &[u8; 16]) -> Option<(u32, TcpStream)> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(HELLO_TIMEOUT)).ok()?;
    let mut b = [0u8; HELLO_LEN];
    s.read_exact(&mut b).ok()?;
    let h = wire::parse_hello(&b)?;
    let ok = wire::secrets_equal(&h.secret, secret)
        && h.version == PROTOCOL_VERSION
        && h.nranks == n
        && h.rank > me.0
        && h.rank < n;
    if !ok {
        return None;
    }
    let mut ack = [0u8; 8];
    ack[0..4].copy_from_slice(&wire::ACK_MAGIC.to_le_bytes());
    ack[4..8].copy_from_slice(&me.0.to_le_bytes());
    s.write_all(&ack).ok()?;
    s.set_read_timeout(None).ok()?;
    tune(&s);
    Some((h.rank, s))
}
