//! Control frames: `len:u32 kind:u8 payload` (little-endian), `len` counting kind and
//! payload. Lengths are checked before anything is allocated: the control port is reachable by
//! anyone on the network, so a stranger's bytes must cost nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest frame (a report names every rank of a large job, briefly).
pub(crate) const MAX_FRAME: u32 = 256 << 10;
const HELLO: u8 = 1;
const BEAT: u8 = 2;
const REPORT: u8 = 3;

/// What a rank is doing, as of one heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Beat {
    /// Sequence number of the last collective this rank entered (0: none yet).
    pub(crate) entered: u64,
    /// Sequence number of the last collective this rank finished.
    pub(crate) done: u64,
    /// Kind, algorithm and size of collective `entered`.
    pub(crate) kind: String,
    pub(crate) algo: String,
    pub(crate) bytes: u64,
    /// Milliseconds since this rank entered `entered` (inside it) or finished `done` (idle).
    pub(crate) for_ms: u64,
    /// What it is blocked on right now (`exec_stats::encode`d peer and direction; 0:
    /// nothing), and what it has waited on longest in collective `entered`, for how long.
    pub(crate) now_on: u64,
    pub(crate) longest_on: u64,
    pub(crate) longest_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// First frame of a connection: the job secret proves it belongs to the job.
    Hello {
        secret: [u8; 16],
        rank: u32,
    },
    Beat(Beat),
    /// A stall report from the coordinator, for the rank's log.
    Report(String),
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16_le(s.len() as u16);
    b.put_slice(s);
}

fn get_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16_le() as usize;
    if b.remaining() < n {
        return None;
    }
    Some(String::from_utf8_lossy(&b.split_to(n)).into_owned())
}

impl Frame {
    /// The frame with its length prefix.
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u32_le(0);
        match self {
            Frame::Hello { secret, rank } => {
                b.put_u8(HELLO);
                b.put_slice(secret);
                b.put_u32_le(*rank);
            }
            Frame::Beat(x) => {
                b.put_u8(BEAT);
                b.put_u64_le(x.entered);
                b.put_u64_le(x.done);
                b.put_u64_le(x.bytes);
                b.put_u64_le(x.for_ms);
                b.put_u64_le(x.now_on);
                b.put_u64_le(x.longest_on);
                b.put_u64_le(x.longest_ms);
                put_str(&mut b, &x.kind);
                put_str(&mut b, &x.algo);
            }
            Frame::Report(text) => {
                b.put_u8(REPORT);
                let t = &text.as_bytes()[..text.len().min(MAX_FRAME as usize - 1)];
                b.put_slice(t);
            }
        }
        let n = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&n.to_le_bytes());
        b.freeze()
    }

    /// Decodes a frame body (kind and payload, without the length); `None` if malformed.
    pub(crate) fn decode(mut b: Bytes) -> Option<Frame> {
        if !b.has_remaining() {
            return None;
        }
        match b.get_u8() {
            HELLO if b.remaining() == 20 => {
                let mut secret = [0u8; 16];
                b.copy_to_slice(&mut secret);
                Some(Frame::Hello {
                    secret,
                    rank: b.get_u32_le(),
                })
            }
            BEAT if b.remaining() >= 56 => {
                let (entered, done, bytes, for_ms, now_on, longest_on, longest_ms) = (
                    b.get_u64_le(),
                    b.get_u64_le(),
                    b.get_u64_le(),
                    b.get_u64_le(),
                    b.get_u64_le(),
                    b.get_u64_le(),
                    b.get_u64_le(),
                );
                let kind = get_str(&mut b)?;
                let algo = get_str(&mut b)?;
                Some(Frame::Beat(Beat {
                    entered,
                    done,
                    kind,
                    algo,
                    bytes,
                    for_ms,
                    now_on,
                    longest_on,
                    longest_ms,
                }))
            }
            REPORT => Some(Frame::Report(String::from_utf8_lossy(&b).into_owned())),
            _ => None,
        }
    }
}

/// Reads one frame body; `Ok(None)` on a clean close, an error on a bad length or I/O error.
pub(crate) async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Bytes>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len);
    if n == 0 || n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("control frame of {n} bytes (at most {MAX_FRAME})"),
        ));
    }
    let mut body = BytesMut::zeroed(n as usize);
    r.read_exact(&mut body).await?;
    Ok(Some(body.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let frames = [
            Frame::Hello {
                secret: [7; 16],
                rank: 3,
            },
            Frame::Beat(Beat {
                entered: 9,
                done: 8,
                kind: "allreduce".into(),
                algo: "ring".into(),
                bytes: 1 << 22,
                for_ms: 1234,
                now_on: 3 | (1 << 32),
                longest_on: 2,
                longest_ms: 77,
            }),
            Frame::Report("stall: allreduce #9".into()),
        ];
        for f in frames {
            let b = f.encode();
            let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
            assert_eq!(n + 4, b.len());
            assert_eq!(Frame::decode(b.slice(4..)), Some(f));
        }
        assert_eq!(Frame::decode(Bytes::from_static(&[0xde; 21])), None);
        assert_eq!(Frame::decode(Bytes::from_static(&[HELLO, 1, 2])), None);
        assert_eq!(Frame::decode(Bytes::from_static(&[BEAT; 56])), None);
        assert_eq!(Frame::decode(Bytes::new()), None);
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3];
        let e = rt.block_on(read_frame(&mut input)).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        let mut empty: &[u8] = &[];
        assert_eq!(rt.block_on(read_frame(&mut empty)).unwrap(), None);
    }
}
