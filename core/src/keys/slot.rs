//! Redis Cluster's key → slot function: CRC16 (XMODEM) of the key, or of its
//! first non-empty `{hashtag}`, mod 16384.

pub const SLOT_COUNT: u16 = 16384;

/// CRC16-CCITT (XMODEM: poly 0x1021, init 0), as Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of a key, honouring `{hashtag}` exactly as Redis does.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&c| c == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOT_COUNT
}

/// The slot of every key that starts with `prefix`, when the prefix decides it:
/// it holds a whole, non-empty `{hashtag}` (the first `{` and the first `}` after it).
pub fn prefix_slot(prefix: &[u8]) -> Option<u16> {
    let open = prefix.iter().position(|&c| c == b'{')?;
    let len = prefix[open + 1..].iter().position(|&c| c == b'}')?;
    (len > 0).then(|| key_slot(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_redis_reference_values() {
        // From the Redis Cluster specification: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOT_COUNT);
        assert_eq!(key_slot(b"foo{{bar}}zap"), crc16(b"{bar") % SLOT_COUNT);
    }
}
