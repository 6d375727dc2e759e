//! The one deterministic binary encoding of everything that is signed or hashed.
//!
//! Fixed-size fields are written raw, integers big-endian, variable-size fields as
//! a u32 big-endian length followed by the bytes. Every signed or hashed payload
//! starts with a domain tag (`"dbqs.v1.<kind>" ‖ 0x00`), so a signature over one
//! kind of message can never be replayed as another.
//!
//! The [`Reader`] never panics: every read is bounds-checked and reports
//! [`DecodeError`].

use thiserror::Error;

/// Why bytes from the network or disk could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated input: needed {needed} more bytes for {field}")]
    Truncated { field: &'static str, needed: usize },
    #[error("{field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("wrong domain tag: expected {expected}")]
    WrongTag { expected: &'static str },
    #[error("{0} trailing bytes after the end of the message")]
    Trailing(usize),
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Appends fields in the canonical encoding.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer whose output starts with the domain tag of `kind`.
    pub fn tagged(kind: &str) -> Self {
        let mut w = Writer::default();
        w.tag(kind);
        w
    }

    /// The domain tag `"dbqs.v1." ‖ kind ‖ 0x00`.
    pub fn tag(&mut self, kind: &str) -> &mut Self {
        self.buf.extend_from_slice(b"dbqs.v1.");
        self.buf.extend_from_slice(kind.as_bytes());
        self.buf.push(0);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Fixed-size bytes, written raw (the reader knows the size).
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Variable-size bytes: u32 length, then the bytes.
    ///
    /// # Panics
    /// If `v` is 4 GiB or more; every caller bounds its fields far below that.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("field below 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields of the canonical encoding, with a bound on every variable field.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Checks and consumes the domain tag of `kind`.
    pub fn expect_tag(&mut self, kind: &'static str) -> Result<(), DecodeError> {
        let mut want = Vec::with_capacity(9 + kind.len());
        want.extend_from_slice(b"dbqs.v1.");
        want.extend_from_slice(kind.as_bytes());
        want.push(0);
        if self.buf.starts_with(&want) {
            self.buf = &self.buf[want.len()..];
            Ok(())
        } else {
            Err(DecodeError::WrongTag { expected: kind })
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    /// Variable bytes of at most `max` bytes.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// Variable UTF-8 text of at most `max` bytes.
    pub fn text(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| DecodeError::Invalid {
                field,
                reason: "not UTF-8",
            })
    }

    /// A count of items of at most `max`, each of at least `min_item_bytes`, checked
    /// against the bytes left so a forged count cannot make the caller allocate.
    pub fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(field)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { field, len: n, max });
        }
        if n.saturating_mul(min_item_bytes) > self.buf.len() {
            return Err(DecodeError::Truncated {
                field,
                needed: n * min_item_bytes - self.buf.len(),
            });
        }
        Ok(n)
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_length() {
        let mut w = Writer::tagged("test");
        w.u8(7).u32(9).u64(11).fixed(&[1, 2]).bytes(b"abc");
        let buf = w.finish();
        let mut r = Reader::new(&buf);
        r.expect_tag("test").unwrap();
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 9);
        assert_eq!(r.u64("c").unwrap(), 11);
        assert_eq!(r.array::<2>("d").unwrap(), [1, 2]);
        assert_eq!(r.bytes("e", 3).unwrap(), b"abc");
        r.finish().unwrap();
    }

    #[test]
    fn tags_of_different_kinds_never_prefix_each_other() {
        let a = Writer::tagged("owned").finish();
        let b = Reader::new(&a).expect_tag("owned-write");
        assert!(b.is_err());
    }

    #[test]
    fn oversized_field_and_forged_count_are_errors() {
        let mut w = Writer::default();
        w.bytes(&[0u8; 10]);
        let buf = w.finish();
        assert!(matches!(
            Reader::new(&buf).bytes("f", 9),
            Err(DecodeError::TooLong { .. })
        ));
        let mut w = Writer::default();
        w.u32(1_000_000);
        let buf = w.finish();
        assert!(Reader::new(&buf).count("n", 10_000_000, 32).is_err());
    }

    proptest::proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut r = Reader::new(&data);
            let _ = r.expect_tag("x");
            let _ = r.bytes("a", 64);
            let _ = r.count("n", 100, 4);
            let _ = r.u64("b");
            let _ = r.array::<32>("c");
        }
    }
}
