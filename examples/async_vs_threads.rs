//! Why the data path runs on OS threads and not on tokio (docs/CONTROL_PLANE.md): one rank's
//! side of loopback TCP exchanges with blocking sockets, and with tokio on a current-thread
//! and on a multi-thread runtime. The peer is always a blocking thread of its own (another
//! rank's process in real life), so neither model gets to run both ends on one thread.
//!
//! - ping-pong: 8-byte messages back and forth, round-trip time (what a small allreduce's
//!   steps cost);
//! - stream: 256 MiB in 64 KiB writes one way (a large allreduce's stripes).
//!
//! `cargo run --release --example async_vs_threads [-- runs]` prints min / median / max of
//! each over `runs` runs (default 5).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PINGS: usize = 20_000;
const STREAM: usize = 256 << 20;
const CHUNK: usize = 64 << 10;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// The peer (another rank's process in real life): a blocking thread that echoes.
fn echo_peer(mut b: TcpStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut m = [0u8; 8];
        for _ in 0..PINGS {
            b.read_exact(&mut m).unwrap();
            b.write_all(&m).unwrap();
        }
    })
}

/// The peer of a stream: a blocking thread that reads everything.
fn sink_peer(mut b: TcpStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < STREAM {
            got += b.read(&mut buf).unwrap();
        }
    })
}

/// Round trip in microseconds, blocking sockets.
fn threads_pingpong() -> f64 {
    let (mut a, b) = pair();
    let echo = echo_peer(b);
    let mut m = [1u8; 8];
    let t0 = Instant::now();
    for _ in 0..PINGS {
        a.write_all(&m).unwrap();
        a.read_exact(&mut m).unwrap();
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / PINGS as f64;
    echo.join().unwrap();
    us
}

/// GB/s streamed one way, blocking sockets.
fn threads_stream() -> f64 {
    let (mut a, b) = pair();
    let sink = sink_peer(b);
    let buf = vec![7u8; CHUNK];
    let t0 = Instant::now();
    for _ in 0..STREAM / CHUNK {
        a.write_all(&buf).unwrap();
    }
    sink.join().unwrap();
    STREAM as f64 / t0.elapsed().as_secs_f64() / 1e9
}

async fn tokio_pingpong() -> f64 {
    let (a, b) = pair();
    let echo = echo_peer(b);
    a.set_nonblocking(true).unwrap();
    let mut a = tokio::net::TcpStream::from_std(a).unwrap();
    let mut m = [1u8; 8];
    let t0 = Instant::now();
    for _ in 0..PINGS {
        a.write_all(&m).await.unwrap();
        a.read_exact(&mut m).await.unwrap();
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / PINGS as f64;
    echo.join().unwrap();
    us
}

async fn tokio_stream() -> f64 {
    let (a, b) = pair();
    let sink = sink_peer(b);
    a.set_nonblocking(true).unwrap();
    let mut a = tokio::net::TcpStream::from_std(a).unwrap();
    let buf = vec![7u8; CHUNK];
    let t0 = Instant::now();
    for _ in 0..STREAM / CHUNK {
        a.write_all(&buf).await.unwrap();
    }
    sink.join().unwrap();
    STREAM as f64 / t0.elapsed().as_secs_f64() / 1e9
}

fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!("{:8.2} {:8.2} {:8.2}", v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()
        .unwrap();
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("threads (blocking)", vec![], vec![]),
        ("tokio current-thread", vec![], vec![]),
        ("tokio multi-thread", vec![], vec![]),
    ];
    // Alternate the three in every run, so drift on a shared machine hits all alike.
    for _ in 0..runs {
        rows[0].1.push(threads_pingpong());
        rows[0].2.push(threads_stream());
        rows[1].1.push(current.block_on(tokio_pingpong()));
        rows[1].2.push(current.block_on(tokio_stream()));
        rows[2]
            .1
            .push(multi.block_on(async { tokio::spawn(tokio_pingpong()).await.unwrap() }));
        rows[2]
            .2
            .push(multi.block_on(async { tokio::spawn(tokio_stream()).await.unwrap() }));
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("# loopback TCP, {runs} runs: min median max");
    println!(
        "{:22} {:>26} {:>26}",
        "", "round trip (us)", "stream (GB/s)"
    );
    for (name, rtt, gbs) in rows {
        println!("{name:22} {} {}", spread(rtt), spread(gbs));
    }
}
