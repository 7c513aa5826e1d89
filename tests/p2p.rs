//! Point-to-point receives from any source, over every transport.

use crate::util::{run_group, test_config, Fabric};

/// Ranks 1 and 2 send to rank 0; rank 1 first sends a message of another tag. The first
/// any-source receive must leave that one alone (it can only take rank 2's), the receive that
/// names rank 1 takes it, and the second any-source receive then takes rank 1's. Every
/// payload arrives where its sender says it should.
#[test]
fn recv_any_source_takes_whoever_sent_first() {
    // ShmCma: every message crosses by cross-memory attach (the sender publishes only an
    // address), which peeking must see as a message too.
    for f in [Fabric::Memory, Fabric::Tcp, Fabric::Shm, Fabric::ShmCma] {
        let got = run_group(f, 3, test_config(1 << 16, 4, 20), |comm| {
            let me = comm.rank();
            if me == 0 {
                let mut seen = Vec::new();
                for round in 0..2 {
                    if round == 1 {
                        let mut other = vec![0u32; 10];
                        // SAFETY: other outlives the wait.
                        let h =
                            unsafe { comm.post_recv(1, 9, other.as_mut_ptr().cast(), 40) }.unwrap();
                        comm.wait(&h).unwrap();
                        assert!(other.iter().all(|x| *x == 9));
                    }
                    let mut buf = vec![0u32; 1000];
                    // SAFETY: buf outlives the wait below.
                    let (src, h) =
                        unsafe { comm.post_recv_any(7, buf.as_mut_ptr().cast(), buf.len() * 4) }
                            .unwrap();
                    comm.wait(&h).unwrap();
                    assert!(buf.iter().all(|x| *x == src * 100), "{f:?}: from {src}");
                    seen.push(src);
                }
                seen
            } else {
                let data = vec![me * 100; 1000];
                let nine = [9u32; 10];
                let mut hs = Vec::new();
                // SAFETY: data and nine outlive the waits.
                unsafe {
                    if me == 1 {
                        hs.push(comm.post_send(0, 9, nine.as_ptr().cast(), 40).unwrap());
                    }
                    hs.push(comm.post_send(0, 7, data.as_ptr().cast(), 4000).unwrap());
                }
                hs.iter().for_each(|h| comm.wait(h).unwrap());
                Vec::new()
            }
        });
        assert_eq!(got[0], vec![2, 1], "{f:?}");
    }
}

/// Nobody sends: the receive ends at the timeout with an error that says what it waited for.
#[test]
fn recv_any_source_times_out_clearly() {
    let errs = run_group(Fabric::Tcp, 2, test_config(1 << 16, 4, 1), |comm| {
        if comm.rank() != 0 {
            // Stay connected past rank 0's timeout: a closed peer is another error.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            return String::new();
        }
        let mut buf = [0u8; 8];
        // SAFETY: buf outlives the call (nothing is posted on failure).
        match unsafe { comm.post_recv_any(3, buf.as_mut_ptr(), 8) } {
            Ok((src, _)) => panic!("received from {src}"),
            Err(e) => e.to_string(),
        }
    });
    assert!(
        errs[0].contains("any source") && errs[0].contains("tag 3"),
        "{}",
        errs[0]
    );
}

/// The only possible sender leaves: the receive fails soon, naming it, not at the timeout.
#[test]
fn recv_any_source_names_a_peer_that_left() {
    for f in [Fabric::Tcp, Fabric::Shm] {
        let res = run_group(f, 2, test_config(1 << 16, 4, 20), |comm| {
            if comm.rank() != 0 {
                return (String::new(), 0.0);
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            let t0 = std::time::Instant::now();
            let mut buf = [0u8; 8];
            // SAFETY: buf outlives the call.
            let e = match unsafe { comm.post_recv_any(0, buf.as_mut_ptr(), 8) } {
                Ok((src, _)) => panic!("received from {src}"),
                Err(e) => e.to_string(),
            };
            (e, t0.elapsed().as_secs_f64())
        });
        let (e, secs) = &res[0];
        assert!(e.contains("rank 1"), "{f:?}: {e}");
        assert!(*secs < 5.0, "{f:?}: {secs} s for: {e}");
    }
}

/// A rank that sent and then closed its communicator: its message is still delivered, the
/// receive goes on to take the message of a rank that is still there, and once every other
/// rank is gone the next receive fails at once, naming both.
#[test]
fn recv_any_source_outlives_a_rank_that_closed() {
    for f in [Fabric::Tcp, Fabric::Shm] {
        let res = run_group(f, 3, test_config(1 << 16, 4, 20), |comm| {
            let me = comm.rank();
            if me != 0 {
                if me == 1 {
                    std::thread::sleep(std::time::Duration::from_millis(600));
                }
                let data = [me; 4];
                // SAFETY: data outlives the wait.
                let h = unsafe { comm.post_send(0, 5, data.as_ptr().cast(), 16) }.unwrap();
                comm.wait(&h).unwrap();
                return (Vec::new(), String::new(), 0.0);
            }
            // Rank 2 has sent and closed by now; rank 1 sends later.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut buf = [0u32; 4];
                // SAFETY: buf outlives the wait.
                let (src, h) = unsafe { comm.post_recv_any(5, buf.as_mut_ptr().cast(), 16) }
                    .unwrap_or_else(|e| panic!("{f:?}: {e}"));
                comm.wait(&h).unwrap();
                assert_eq!(buf, [src; 4], "{f:?}");
                seen.push(src);
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            let t0 = std::time::Instant::now();
            let mut buf = [0u32; 4];
            // SAFETY: buf outlives the call.
            let e = match unsafe { comm.post_recv_any(5, buf.as_mut_ptr().cast(), 16) } {
                Ok((src, _)) => panic!("{f:?}: received from {src}"),
                Err(e) => e.to_string(),
            };
            (seen, e, t0.elapsed().as_secs_f64())
        });
        let (seen, e, secs) = &res[0];
        assert_eq!(seen, &vec![2, 1], "{f:?}");
        assert!(e.contains("rank 1") && e.contains("rank 2"), "{f:?}: {e}");
        assert!(*secs < 5.0, "{f:?}: {secs} s for: {e}");
    }
}
