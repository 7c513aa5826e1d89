//! Wire formats: the frame header that precedes every message and the connection hello.
//! Fixed-size little-endian records; lengths are checked against the posted receive before a
//! single payload byte is read, so a corrupt or hostile peer cannot make us allocate.

use acspeed_core::FrameHeader;

pub(crate) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"ACSP");
pub(crate) const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"ACSH");
pub(crate) const ACK_MAGIC: u32 = u32::from_le_bytes(*b"ACSA");
/// 4: the frame header carries the plan lane's channel (byte 61).
pub(crate) const PROTOCOL_VERSION: u32 = 4;
pub(crate) const FRAME_LEN: usize = 64;
pub(crate) const HELLO_LEN: usize = 24 + 16;
/// Longest abort reason we accept.
pub(crate) const MAX_ABORT_LEN: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Data = 1,
    Abort = 2,
}

/// Where a frame's payload goes: message `msg_id` of this connection pair, bytes
/// `off..off+len` of it (a message may be striped over several sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stripe {
    pub(crate) msg_id: u64,
    pub(crate) off: u64,
    pub(crate) len: u64,
}

pub(crate) fn encode(kind: Kind, h: &FrameHeader, st: Stripe) -> [u8; FRAME_LEN] {
    let mut b = [0u8; FRAME_LEN];
    b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    b[4] = kind as u8;
    b[5] = h.coll;
    b[6] = h.dtype;
    b[7] = h.op;
    for (i, v) in [h.seq, h.count, h.len, st.msg_id, st.off, st.len]
        .into_iter()
        .enumerate()
    {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    b[56] = h.algo;
    b[57..61].copy_from_slice(&h.root.to_le_bytes());
    b[61] = h.channel;
    b
}

/// Decodes a frame header; `None` when the magic or kind is wrong (stream corrupt).
pub(crate) fn decode(b: &[u8; FRAME_LEN]) -> Option<(Kind, FrameHeader, Stripe)> {
    let u64at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    if u32::from_le_bytes(b[0..4].try_into().unwrap()) != FRAME_MAGIC {
        return None;
    }
    let kind = match b[4] {
        1 => Kind::Data,
        2 => Kind::Abort,
        _ => return None,
    };
    let h = FrameHeader {
        coll: b[5],
        dtype: b[6],
        op: b[7],
        algo: b[56],
        root: u32::from_le_bytes(b[57..61].try_into().unwrap()),
        channel: b[61],
        seq: u64at(8),
        count: u64at(16),
        len: u64at(24),
    };
    Some((
        kind,
        h,
        Stripe {
            msg_id: u64at(32),
            off: u64at(40),
            len: u64at(48),
        },
    ))
}

/// Connection hello: magic, version, rank, nranks, stream index, stream count, then the
/// 16-byte job secret.
pub(crate) fn hello(
    rank: u32,
    nranks: u32,
    stream: u32,
    streams: u32,
    secret: &[u8; 16],
) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    for (i, v) in [HELLO_MAGIC, PROTOCOL_VERSION, rank, nranks, stream, streams]
        .into_iter()
        .enumerate()
    {
        b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    b[24..40].copy_from_slice(secret);
    b
}

pub(crate) struct Hello {
    pub(crate) rank: u32,
    pub(crate) nranks: u32,
    pub(crate) version: u32,
    pub(crate) stream: u32,
    pub(crate) streams: u32,
    pub(crate) secret: [u8; 16],
}

pub(crate) fn parse_hello(b: &[u8; HELLO_LEN]) -> Option<Hello> {
    let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    (u32at(0) == HELLO_MAGIC).then(|| Hello {
        version: u32at(4),
        rank: u32at(8),
        nranks: u32at(12),
        stream: u32at(16),
        streams: u32at(20),
        secret: b[24..40].try_into().unwrap(),
    })
}

/// Compares secrets without an early exit, so timing does not leak how many bytes matched.
pub(crate) fn secrets_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_garbage() {
        let h = FrameHeader {
            seq: 7,
            coll: 1,
            dtype: 2,
            op: 3,
            algo: 4,
            channel: 5,
            root: 77,
            count: 1 << 40,
            len: 12345,
        };
        let st = Stripe {
            msg_id: 9,
            off: 4096,
            len: 8249,
        };
        assert_eq!(
            decode(&encode(Kind::Data, &h, st)),
            Some((Kind::Data, h, st))
        );
        assert!(decode(&[0xAB; FRAME_LEN]).is_none());
        let mut b = encode(Kind::Abort, &h, st);
        b[4] = 9;
        assert!(decode(&b).is_none());
    }

    #[test]
    fn hello_and_secret() {
        let s = [5u8; 16];
        let h = parse_hello(&hello(3, 8, 1, 4, &s)).unwrap();
        assert_eq!(
            (h.rank, h.nranks, h.version, h.stream, h.streams),
            (3, 8, PROTOCOL_VERSION, 1, 4)
        );
        assert!(secrets_equal(&h.secret, &s));
        let mut t = s;
        t[15] ^= 1;
        assert!(!secrets_equal(&t, &s));
        assert!(parse_hello(&[0; HELLO_LEN]).is_none());
    }
}
