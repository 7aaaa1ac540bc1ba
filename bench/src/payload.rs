//! The bytes every benchmark message carries: sequence number then send time, both
//! little-endian u64, padded with zeros to the requested payload size.

/// Bytes the sequence number and timestamp take; smaller payloads are refused.
pub const PAYLOAD_MIN_BYTES: usize = 16;

/// Writes `seq` and `sent_ns` at the front of `payload`.
pub fn stamp(payload: &mut [u8], seq: u64, sent_ns: u64) {
    assert!(payload.len() >= PAYLOAD_MIN_BYTES);
    payload[..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&sent_ns.to_le_bytes());
}

/// The sequence number and send time of a payload, `None` if it is too short to be ours.
pub fn read(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = payload.get(..8)?.try_into().ok()?;
    let sent = payload.get(8..16)?.try_into().ok()?;
    Some((u64::from_le_bytes(seq), u64::from_le_bytes(sent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut p = [0u8; 20];
        stamp(&mut p, 7, 123_456);
        assert_eq!(read(&p), Some((7, 123_456)));
        assert_eq!(read(&p[..15]), None);
    }
}
