//! Wire formats: the frame header that precedes every message and the connection hello.
//! Fixed-size little-endian records; lengths are checked against the posted receive before a
//! single payload byte is read, so a corrupt or hostile peer cannot make us allocate.

use acspeed_core::FrameHeader;

pub(crate) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"ACSP");
pub(crate) const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"ACSH");
pub(crate) const ACK_MAGIC: u32 = u32::from_le_bytes(*b"ACSA");
pub(crate) const PROTOCOL_VERSION: u32 = 1;
pub(crate) const FRAME_LEN: usize = 32;
pub(crate) const HELLO_LEN: usize = 16 + 16;
/// Longest abort reason we accept.
pub(crate) const MAX_ABORT_LEN: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Data = 1,
    Abort = 2,
}

pub(crate) fn encode(kind: Kind, h: &FrameHeader) -> [u8; FRAME_LEN] {
    let mut b = [0u8; FRAME_LEN];
    b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    b[4] = kind as u8;
    b[5] = h.coll;
    b[6] = h.dtype;
    b[7] = h.op;
    b[8..16].copy_from_slice(&h.seq.to_le_bytes());
    b[16..24].copy_from_slice(&h.count.to_le_bytes());
    b[24..32].copy_from_slice(&h.len.to_le_bytes());
    b
}

/// Decodes a frame header; `None` when the magic or kind is wrong (stream corrupt).
pub(crate) fn decode(b: &[u8; FRAME_LEN]) -> Option<(Kind, FrameHeader)> {
    let u64at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    if u32::from_le_bytes(b[0..4].try_into().unwrap()) != FRAME_MAGIC {
        return None;
    }
    let kind = match b[4] {
        1 => Kind::Data,
        2 => Kind::Abort,
        _ => return None,
    };
    Some((
        kind,
        FrameHeader {
            coll: b[5],
            dtype: b[6],
            op: b[7],
            seq: u64at(8),
            count: u64at(16),
            len: u64at(24),
        },
    ))
}

/// Connection hello: magic, version, rank, nranks, then the 16-byte job secret.
pub(crate) fn hello(rank: u32, nranks: u32, secret: &[u8; 16]) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b[8..12].copy_from_slice(&rank.to_le_bytes());
    b[12..16].copy_from_slice(&nranks.to_le_bytes());
    b[16..32].copy_from_slice(secret);
    b
}

pub(crate) struct Hello {
    pub(crate) rank: u32,
    pub(crate) nranks: u32,
    pub(crate) version: u32,
    pub(crate) secret: [u8; 16],
}

pub(crate) fn parse_hello(b: &[u8; HELLO_LEN]) -> Option<Hello> {
    let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    (u32at(0) == HELLO_MAGIC).then(|| Hello {
        version: u32at(4),
        rank: u32at(8),
        nranks: u32at(12),
        secret: b[16..32].try_into().unwrap(),
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
            count: 1 << 40,
            len: 12345,
        };
        assert_eq!(decode(&encode(Kind::Data, &h)), Some((Kind::Data, h)));
        assert!(decode(&[0xAB; FRAME_LEN]).is_none());
        let mut b = encode(Kind::Abort, &h);
        b[4] = 9;
        assert!(decode(&b).is_none());
    }

    #[test]
    fn hello_and_secret() {
        let s = [5u8; 16];
        let h = parse_hello(&hello(3, 8, &s)).unwrap();
        assert_eq!((h.rank, h.nranks, h.version), (3, 8, PROTOCOL_VERSION));
        assert!(secrets_equal(&h.secret, &s));
        let mut t = s;
        t[15] ^= 1;
        assert!(!secrets_equal(&t, &s));
        assert!(parse_hello(&[0; HELLO_LEN]).is_none());
    }
}
