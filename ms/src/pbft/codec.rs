//! Hand-written deterministic binary codec primitives.
//!
//! Every signed payload is hashed over exactly these bytes, so the encoding must be
//! canonical: fixed-width big-endian integers, `u32` length prefixes, booleans as 0/1 only,
//! and no trailing bytes. Decoding never panics and checks every length against both an
//! explicit limit and the bytes actually left, so a hostile length prefix cannot make us
//! allocate more than the message itself.

use thiserror::Error;

/// Why a byte string was not a valid message. Every variant is counted by the replica.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message is {len_bytes} bytes, above the limit of {max_bytes}")]
    Oversized { len_bytes: usize, max_bytes: usize },
    #[error("message ended early")]
    Truncated,
    #[error("{trailing_bytes} trailing bytes after the message")]
    TrailingBytes { trailing_bytes: usize },
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("invalid boolean byte {0}")]
    InvalidBool(u8),
    #[error("{what}: {count} items, above the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

/// Explicit upper bounds on everything that arrives from the network or from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message accepted at all (checked before decoding starts).
    pub max_message_bytes: usize,
    /// Most requests in one pre-prepared batch.
    pub max_batch_requests: usize,
    /// Most operation bytes summed over one batch.
    pub max_batch_bytes: usize,
    /// Largest single client operation.
    pub max_op_bytes: usize,
    /// Largest single reply produced by the application.
    pub max_reply_bytes: usize,
    /// Most signatures in one certificate (at most the group size).
    pub max_signatures: usize,
    /// Most prepared certificates in a view-change, and pre-prepares in a new-view.
    pub max_proofs: usize,
    /// Largest checkpoint state (client table plus application snapshot).
    pub max_state_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_batch_requests: 256,
            max_batch_bytes: 1 << 20,
            max_op_bytes: 64 << 10,
            max_reply_bytes: 64 << 10,
            max_signatures: 64,
            max_proofs: 256,
            max_state_bytes: 8 << 20,
        }
    }
}

/// Appends fixed-width fields to a buffer.
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { bytes: Vec::new() }
    }
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.bytes.push(u8::from(v));
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }
    pub fn fixed(&mut self, v: &[u8]) {
        self.bytes.extend_from_slice(v);
    }
    /// Length-prefixed bytes.
    pub fn var_bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.bytes.extend_from_slice(v);
    }
    /// A collection length. Every collection we encode is bounded far below `u32::MAX` by
    /// `Limits`, so the conversion cannot fail for anything we would also accept on decode.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Reads fixed-width fields, failing (never panicking) on short or hostile input.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::InvalidBool(other)),
        }
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A collection length, checked against `max` and against the bytes left (each item is at
    /// least `min_item_bytes` long), so `Vec::with_capacity(len)` is always safe.
    pub fn len(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        if count.saturating_mul(min_item_bytes.max(1)) > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(count)
    }
    pub fn var_bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let n = self.len(what, max, 1)?;
        Ok(self.take(n)?.to_vec())
    }
    /// Fails unless every byte was consumed: the encoding is canonical.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                trailing_bytes: self.bytes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_length_prefix_is_rejected_before_allocation() {
        let mut w = Writer::new();
        w.u32(u32::MAX);
        let mut r = Reader::new(&w.bytes);
        assert!(matches!(
            r.var_bytes("op", usize::MAX),
            Err(DecodeError::Truncated)
        ));
        let mut r = Reader::new(&w.bytes);
        assert!(matches!(
            r.var_bytes("op", 10),
            Err(DecodeError::TooMany { .. })
        ));
    }

    #[test]
    fn non_canonical_bool_is_rejected() {
        let mut r = Reader::new(&[2]);
        assert_eq!(r.bool(), Err(DecodeError::InvalidBool(2)));
    }
}
