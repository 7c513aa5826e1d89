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
/// Connections whose hello is still being read, at most.
const MAX_PENDING_HELLOS: usize = 256;

/// Opens the listening socket a rank publishes through the rendezvous.
/// `buffer` sets SO_SNDBUF/SO_RCVBUF (accepted connections inherit them); `None` leaves the
/// kernel's autotuning alone, which is usually best on loopback and LANs.
pub fn listen(addr: SocketAddr, buffer: Option<usize>) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| Error::io("creating a socket", e))?;
    set_buffers(&s, buffer)?;
    s.set_reuse_address(true)
        .map_err(|e| Error::io("setting SO_REUSEADDR", e))?;
    s.bind(&addr.into())
        .map_err(|e| Error::io(format!("binding {addr}"), e))?;
    s.listen(1024)
        .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    Ok(s.into())
}

fn set_buffers(s: &Socket, buffer: Option<usize>) -> Result<()> {
    if let Some(b) = buffer {
        // Before connect/listen, so the TCP window scale can use them.
        s.set_send_buffer_size(b)
            .map_err(|e| Error::io(format!("setting SO_SNDBUF to {b}"), e))?;
        s.set_recv_buffer_size(b)
            .map_err(|e| Error::io(format!("setting SO_RCVBUF to {b}"), e))?;
    }
    Ok(())
}

fn tune(s: &TcpStream) {
    let sr = SockRef::from(s);
    let _ = sr.set_nodelay(true);
    // Keep at most one stripe of not-yet-sent bytes in the kernel per socket. Stripes of a
    // message go to whichever socket's writer is free; without this, a write "completes" as
    // soon as the kernel buffers it (up to MiBs), one flow-capped socket soaks up most stripes
    // and every message waits for it: 4-16 MiB allreduces across netsim hosts reached 40-60%
    // of the link, 85-95% with it (docs/PERFORMANCE.md). Only unsent bytes count, so the
    // in-flight window (cwnd) is not limited. Best effort: older kernels lack the option.
    let _ = set_notsent_lowat(s, crate::tcp::MIN_STRIPE);
    let _ = sr.set_keepalive(true);
    let _ = sr.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10)),
    );
}

/// Sets TCP_NOTSENT_LOWAT (Linux >= 3.12; blocking writes honour it since 4.x).
fn set_notsent_lowat(s: &TcpStream, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = bytes as libc::c_int;
    // SAFETY: a valid socket descriptor and a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Connects rank `rank` to the other ranks: `addrs[q]` is rank q's listening address and
/// `streams[q]` how many sockets to open to it (0: no TCP path, e.g. shared memory instead).
/// Both sides of a pair must agree on the count; the hello checks it.
pub fn establish(
    rank: Rank,
    listener: TcpListener,
    addrs: &[SocketAddr],
    streams: &[u32],
    secret: &[u8; 16],
    timeout: Duration,
    buffer: Option<usize>,
) -> Result<TcpTransport> {
    let n = addrs.len() as u32;
    if streams.len() != addrs.len() {
        return Err(Error::invalid(
            "establish: one stream count per rank is required",
        ));
    }
    let deadline = Instant::now() + timeout;
    let mut socks: Vec<Vec<Option<TcpStream>>> = streams
        .iter()
        .map(|k| (0..*k).map(|_| None).collect())
        .collect();

    let dialer = Dialer {
        rank,
        n,
        secret,
        deadline,
        buffer,
    };
    for q in 0..rank.0 {
        let k = streams[q as usize];
        for i in 0..k {
            let s = connect_to(&dialer, Rank(q), (i, k), addrs[q as usize])?;
            socks[q as usize][i as usize] = Some(s);
        }
    }

    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("configuring the listener", e))?;
    let mut missing: usize = (rank.0 + 1..n).map(|q| streams[q as usize] as usize).sum();
    // Each connection's hello is read on a thread of its own: a stranger that connects and
    // says nothing (a port scanner) must not hold up the peers behind it for HELLO_TIMEOUT,
    // which is also how long they wait for our ack.
    let (tx, rx) = std::sync::mpsc::channel::<Option<(u32, u32, TcpStream)>>();
    let mut reading = 0usize;
    while missing > 0 {
        while let Ok(got) = rx.try_recv() {
            reading -= 1;
            // Strangers (no valid hello) are dropped silently; the loop goes on.
            if let Some((q, i, s)) = got {
                let slot = &mut socks[q as usize][i as usize];
                if slot.is_none() {
                    *slot = Some(s);
                    missing -= 1;
                }
            }
        }
        if missing == 0 {
            break;
        }
        match listener.accept() {
            // Bounded: beyond this many unfinished hellos, newcomers are dropped at once.
            Ok((s, _from)) if reading < MAX_PENDING_HELLOS => {
                reading += 1;
                let (tx, streams, secret) = (tx.clone(), streams.to_vec(), *secret);
                std::thread::spawn(move || {
                    let _ = tx.send(accept_hello(s, rank, n, &streams, &secret));
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let absent: Vec<u32> = (rank.0 + 1..n)
                        .filter(|q| socks[*q as usize].iter().any(|s| s.is_none()))
                        .collect();
                    let list: Vec<String> = absent.iter().map(|m| m.to_string()).collect();
                    return Err(Error::Timeout {
                        rank: absent.first().copied().unwrap_or(0),
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
    let socks = socks
        .into_iter()
        .map(|v| v.into_iter().flatten().collect())
        .collect();
    TcpTransport::from_streams(rank, socks)
}

/// What every outgoing connection of this rank shares.
struct Dialer<'a> {
    rank: Rank,
    n: u32,
    secret: &'a [u8; 16],
    deadline: Instant,
    buffer: Option<usize>,
}

fn connect_to(
    d: &Dialer<'_>,
    q: Rank,
    (stream, streams): (u32, u32),
    addr: SocketAddr,
) -> Result<TcpStream> {
    let Dialer {
        rank,
        n,
        secret,
        deadline,
        buffer,
    } = *d;
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
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .map_err(|e| Error::io("creating a socket", e))?;
        set_buffers(&sock, buffer)?;
        let attempt = sock
            .connect_timeout(&addr.into(), left.min(Duration::from_secs(2)))
            .map(|_| TcpStream::from(sock));
        match attempt {
            Ok(mut s) => {
                tune(&s);
                let _ = s.set_read_timeout(Some(HELLO_TIMEOUT));
                s.write_all(&wire::hello(rank.0, n, stream, streams, secret))
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
fn accept_hello(
    mut s: TcpStream,
    me: Rank,
    n: u32,
    streams: &[u32],
    secret: &[u8; 16],
) -> Option<(u32, u32, TcpStream)> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(HELLO_TIMEOUT)).ok()?;
    let mut b = [0u8; HELLO_LEN];
    s.read_exact(&mut b).ok()?;
    let h = wire::parse_hello(&b)?;
    let ok = wire::secrets_equal(&h.secret, secret)
        && h.version == PROTOCOL_VERSION
        && h.nranks == n
        && h.rank > me.0
        && h.rank < n
        && h.streams == streams[h.rank as usize]
        && h.stream < h.streams;
    if !ok {
        return None;
    }
    let mut ack = [0u8; 8];
    ack[0..4].copy_from_slice(&wire::ACK_MAGIC.to_le_bytes());
    ack[4..8].copy_from_slice(&me.0.to_le_bytes());
    s.write_all(&ack).ok()?;
    s.set_read_timeout(None).ok()?;
    tune(&s);
    Some((h.rank, h.stream, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_buffer_sizes_are_applied() {
        let l = listen("127.0.0.1:0".parse().unwrap(), Some(256 << 10)).unwrap();
        // Linux doubles the value for bookkeeping; at least what we asked for is there.
        assert!(SockRef::from(&l).recv_buffer_size().unwrap() >= 256 << 10);
        let d = listen("127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert!(SockRef::from(&d).recv_buffer_size().unwrap() > 0);
    }

    #[test]
    fn tuned_sockets_keep_at_most_one_stripe_unsent() {
        use std::os::fd::AsRawFd;
        let l = listen("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let get = |s: &TcpStream| {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid descriptor, output buffer of the size passed.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_NOTSENT_LOWAT,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0);
            v as usize
        };
        let before = get(&c);
        tune(&c);
        assert_ne!(
            before,
            crate::tcp::MIN_STRIPE,
            "the default must differ for this to test anything"
        );
        assert_eq!(get(&c), crate::tcp::MIN_STRIPE);
    }
}
