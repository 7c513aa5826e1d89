//! Shared-memory regions without names: each rank creates an anonymous `memfd`, maps it, and
//! hands the descriptor to the ranks on its host over an abstract Unix socket (`SCM_RIGHTS`).
//! Nothing ever appears in `/dev/shm`, so nothing is left behind when a rank crashes: the
//! kernel frees the memory when the last mapping goes away. Abstract sockets live in the
//! network namespace, so ranks of different (emulated) hosts cannot reach each other's.

use acspeed_core::{Error, Result};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// A shared mapping; unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; access is coordinated by the ring protocol.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

fn map(fd: &OwnedFd, len: usize) -> Result<Mapping> {
    let n = NonZeroUsize::new(len).ok_or_else(|| Error::invalid("empty shared-memory region"))?;
    // Populated at once: every slot's pages are allocated and mapped now, in each process that
    // maps the region, instead of faulting in during a job's first calls (docs/PERFORMANCE.md,
    // "The first calls of a size").
    // SAFETY: mapping a memfd we own (or received) with its full length.
    let p = unsafe {
        mmap(
            None,
            n,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
            fd,
            0,
        )
    }
    .map_err(|e| Error::io("mmap of the shared-memory region", e.into()))?;
    Ok(Mapping { ptr: p.cast(), len })
}

/// Creates and maps an anonymous shared region of `len` bytes (zero-filled).
pub(crate) fn create(name: &str, len: usize) -> Result<(OwnedFd, Mapping)> {
    let cname = std::ffi::CString::new(name).map_err(|_| Error::invalid("bad memfd name"))?;
    let fd = nix::sys::memfd::memfd_create(&cname, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| Error::io("memfd_create", e.into()))?;
    nix::unistd::ftruncate(&fd, len as i64)
        .map_err(|e| Error::io(format!("sizing the shared region to {len} bytes"), e.into()))?;
    let m = map(&fd, len)?;
    Ok((fd, m))
}

/// Abstract socket name for `rank` of the job identified by `secret`.
fn sock_name(secret: &[u8; 16], rank: u32) -> Vec<u8> {
    let hex: String = secret[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("acspeed-{hex}-{rank}").into_bytes()
}

/// Serves our region's descriptor to `expected` local peers (each proves the job secret).
pub(crate) fn serve(
    secret: [u8; 16],
    rank: u32,
    fd: OwnedFd,
    expected: usize,
    deadline: Instant,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let addr = SocketAddr::from_abstract_name(sock_name(&secret, rank))
        .map_err(|e| Error::io("abstract socket name", e))?;
    let l = UnixListener::bind_addr(&addr).map_err(|e| {
        Error::io(
            format!("binding the shared-memory rendezvous socket of rank {rank}"),
            e,
        )
    })?;
    l.set_nonblocking(true)
        .map_err(|e| Error::io("configuring the shm socket", e))?;
    std::thread::Builder::new()
        .name("acspeed-shm-serve".into())
        .spawn(move || {
            let mut served = 0;
            while served < expected {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut hello = [0u8; 20];
                        if s.read_exact(&mut hello).is_err() || hello[..16] != secret[..] {
                            continue; // not one of ours
                        }
                        let tag = [1u8];
                        let iov = [IoSlice::new(&tag)];
                        let fds = [fd.as_raw_fd()];
                        if sendmsg::<()>(s.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None).is_ok() {
                            served += 1;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(Error::Timeout {
                                rank,
                                what: format!("shared-memory set-up: only {served} of {expected} local ranks fetched rank {rank}'s region"),
                                after: Duration::ZERO,
                            });
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(Error::io("accepting on the shm socket", e)),
                }
            }
            Ok(())
        })
        .map_err(|e| Error::io("spawning the shm server thread", e))
}

/// Fetches and maps `peer`'s region of `len` bytes.
pub(crate) fn fetch(
    secret: &[u8; 16],
    me: u32,
    peer: u32,
    len: usize,
    deadline: Instant,
) -> Result<Mapping> {
    let addr = SocketAddr::from_abstract_name(sock_name(secret, peer))
        .map_err(|e| Error::io("abstract socket name", e))?;
    let mut last = None;
    let mut s = loop {
        match UnixStream::connect_addr(&addr) {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        rank: peer,
                        what: format!("shared-memory set-up: rank {peer} never offered its region ({e}); same host id but another machine or network namespace?"),
                        after: Duration::ZERO,
                    });
                }
                last = Some(e);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    drop(last);
    let _ = s.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100)),
    ));
    let mut hello = [0u8; 20];
    hello[..16].copy_from_slice(secret);
    hello[16..].copy_from_slice(&me.to_le_bytes());
    s.write_all(&hello)
        .map_err(|e| Error::io(format!("asking rank {peer} for its shared region"), e))?;
    let mut tag = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut tag)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        s.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::io(format!("receiving rank {peer}'s shared region"), e.into()))?;
    let mut fd: Option<OwnedFd> = None;
    for c in msg
        .cmsgs()
        .map_err(|e| Error::io("reading control messages", e.into()))?
    {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel just gave us ownership of these descriptors.
            for raw in v {
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    let fd = fd.ok_or_else(|| Error::Remote {
        rank: peer,
        detail: "sent no shared-memory descriptor".into(),
    })?;
    let size = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| Error::io("fstat of a shared region", e.into()))?
        .st_size as usize;
    if size != len {
        return Err(Error::Remote {
            rank: peer,
            detail: format!(
                "shared region is {size} bytes, expected {len} (different ACSPEED_SHM_* settings?)"
            ),
        });
    }
    map(&fd, len)
}
