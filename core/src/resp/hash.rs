//! The stored form of a Redis hash: its fields and values in one value of
//! kind `REDIS_HASH` (`keys::mvcc::kind`), so that a hash lives, expires,
//! replicates and is read atomically as one key.
//!
//! Layout: the field count (u32 BE), then each field in byte order as its
//! length (u32 BE) and bytes followed by its value's length (u32 BE) and bytes.
//! Decoding is strict (sorted, no duplicates, nothing left over): the bytes
//! come from storage, and a corrupt record must be refused, not half read.

use bytes::Bytes;
use std::collections::BTreeMap;

/// A hash's fields and their values, in field order.
pub type Fields = BTreeMap<Bytes, Bytes>;

/// Bytes the encoding adds per field (two lengths).
const PER_FIELD: usize = 8;

/// The stored size of `fields`, without encoding them.
pub fn encoded_len(fields: &Fields) -> usize {
    4 + fields.iter().map(|(f, v)| PER_FIELD + f.len() + v.len()).sum::<usize>()
}

pub fn encode(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(fields));
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for (f, v) in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Why stored bytes are not a hash.
pub const CORRUPT: &str = "the stored hash is corrupt";

/// Reads stored bytes front to back, refusing to run past their end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err(CORRUPT);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn len(&mut self) -> Result<usize, &'static str> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| CORRUPT)?;
        Ok(u32::from_be_bytes(b) as usize)
    }

    fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let n = self.len()?;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
}

pub fn decode(stored: &[u8]) -> Result<Fields, &'static str> {
    let mut r = Reader { rest: stored };
    let count = r.len()?;
    let mut fields = Fields::new();
    for _ in 0..count {
        let field = r.bytes()?;
        let value = r.bytes()?;
        if fields.last_key_value().is_some_and(|(last, _)| *last >= field) {
            return Err(CORRUPT);
        }
        fields.insert(field, value);
    }
    if !r.rest.is_empty() {
        return Err(CORRUPT);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(f, v)| (Bytes::copy_from_slice(f.as_bytes()), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    #[test]
    fn round_trips_and_knows_its_size() {
        for h in [fields(&[]), fields(&[("a", "1")]), fields(&[("", ""), ("b\0", "x\r\n"), ("z", "")])] {
            let stored = encode(&h);
            assert_eq!(stored.len(), encoded_len(&h));
            assert_eq!(decode(&stored), Ok(h));
        }
    }

    #[test]
    fn refuses_corrupt_bytes() {
        let good = encode(&fields(&[("a", "1"), ("b", "2")]));
        for cut in 0..good.len() {
            assert_eq!(decode(&good[..cut]), Err(CORRUPT), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(CORRUPT));
        // Two fields out of order (b before a).
        let mut unsorted = vec![0, 0, 0, 2];
        for (f, v) in [("b", "2"), ("a", "1")] {
            unsorted.extend_from_slice(&[0, 0, 0, 1]);
            unsorted.extend_from_slice(f.as_bytes());
            unsorted.extend_from_slice(&[0, 0, 0, 1]);
            unsorted.extend_from_slice(v.as_bytes());
        }
        assert_eq!(decode(&unsorted), Err(CORRUPT));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(CORRUPT), "a huge count with nothing behind it");
    }
}
