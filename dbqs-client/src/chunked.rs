//! Files larger than one chunk: content objects plus a manifest (PROTOCOL.md's
//! objects do not change; this is a client-side format).
//!
//! A manifest is
//! `"dbqs.v1.manifest" ‖ 0x00 ‖ u64be(total bytes) ‖ u32be(chunk bytes) ‖
//! u32be(n) ‖ n × chunk id (32) ‖ SHA-256(whole file)`.
//! A value that is not a manifest is the file itself; a small file that happens
//! to start with the manifest tag is stored as a one-chunk manifest, so reading
//! is never ambiguous.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use dbqs_common::codec::{Reader, Writer, sha256};
use dbqs_common::object::MAX_VALUE_BYTES;
use dbqs_common::{ObjectId, PublicKey};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError, PutReceipt};

/// Bytes per chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight at once (bounds memory to about this many chunks).
pub const CHUNKS_IN_FLIGHT: usize = 4;
const MANIFEST_TAG: &[u8] = b"dbqs.v1.manifest\0";
const MAX_CHUNKS: usize = (MAX_VALUE_BYTES - 64) / 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub total_bytes: u64,
    pub chunk_bytes: u32,
    pub chunks: Vec<ObjectId>,
    pub file_hash: [u8; 32],
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::tagged("manifest");
        w.u64(self.total_bytes)
            .u32(self.chunk_bytes)
            .u32(self.chunks.len() as u32);
        for c in &self.chunks {
            w.fixed(&c.0);
        }
        w.fixed(&self.file_hash);
        w.finish()
    }

    /// `None` if `b` is not a manifest; an error if it claims to be one but is
    /// malformed.
    pub fn decode(b: &[u8]) -> Result<Option<Manifest>, ClientError> {
        if !b.starts_with(MANIFEST_TAG) {
            return Ok(None);
        }
        let err =
            |e: dbqs_common::codec::DecodeError| ClientError::Format(format!("manifest: {e}"));
        let mut r = Reader::new(b);
        r.expect_tag("manifest").map_err(err)?;
        let total_bytes = r.u64("total").map_err(err)?;
        let chunk_bytes = r.u32("chunk").map_err(err)?;
        let n = r.count("chunks", MAX_CHUNKS, 32).map_err(err)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(ObjectId(r.array("chunk id").map_err(err)?));
        }
        let file_hash = r.array("file hash").map_err(err)?;
        r.finish().map_err(err)?;
        if chunk_bytes == 0
            || chunk_bytes as usize > MAX_VALUE_BYTES
            || total_bytes.div_ceil(chunk_bytes as u64) != n as u64
        {
            return Err(ClientError::Format(
                "manifest sizes are inconsistent".into(),
            ));
        }
        Ok(Some(Manifest {
            total_bytes,
            chunk_bytes,
            chunks,
            file_hash,
        }))
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if std::io::stderr().is_terminal() && len > CHUNK_BYTES as u64 {
        let pb = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        pb
    } else {
        ProgressBar::hidden()
    }
}

/// Stores the file's chunks as content objects; returns the manifest, or the
/// whole file when it fits one chunk and cannot be mistaken for a manifest.
async fn store_chunks(
    client: &Client,
    path: &Path,
) -> Result<Result<Manifest, Vec<u8>>, ClientError> {
    let file = File::open(path)?;
    let total = file.metadata()?.len();
    if total <= CHUNK_BYTES as u64 {
        let mut b = vec![0u8; total as usize];
        file.read_exact_at(&mut b, 0)?;
        if !b.starts_with(MANIFEST_TAG) {
            return Ok(Err(b));
        }
    }
    let n = total.div_ceil(CHUNK_BYTES as u64).max(1) as usize;
    if n > MAX_CHUNKS {
        return Err(ClientError::Invalid(format!(
            "file of {total} bytes is too large"
        )));
    }
    let pb = progress(total, "put");
    let file = &file;
    let pb_ref = &pb;
    let results: Vec<Result<(ObjectId, [u8; 32]), ClientError>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let off = i as u64 * CHUNK_BYTES as u64;
            let len = (total - off).min(CHUNK_BYTES as u64) as usize;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, off)?;
            let h = sha256(&[&buf]);
            let id = client.put_blob(buf).await?;
            pb_ref.inc(len as u64);
            Ok((id, h))
        })
        .buffered(CHUNKS_IN_FLIGHT)
        .collect()
        .await;
    pb.finish_and_clear();
    let mut chunks = Vec::with_capacity(n);
    let mut file_hash = Sha256::new();
    // The whole-file hash is recomputed from the file so a chunk changed while we
    // read it shows up on get.
    let mut buf = vec![0u8; CHUNK_BYTES];
    for (i, r) in results.into_iter().enumerate() {
        let (id, _) = r?;
        chunks.push(id);
        let off = i as u64 * CHUNK_BYTES as u64;
        let len = (total - off).min(CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut buf[..len], off)?;
        file_hash.update(&buf[..len]);
    }
    Ok(Ok(Manifest {
        total_bytes: total,
        chunk_bytes: CHUNK_BYTES as u32,
        chunks,
        file_hash: file_hash.finalize().into(),
    }))
}

/// `put NAME FILE`: the file under an owned name (chunked if large).
pub async fn put_file(
    client: &Client,
    name: &[u8],
    path: &Path,
) -> Result<PutReceipt, ClientError> {
    match store_chunks(client, path).await? {
        Err(whole) => client.put(name, whole).await,
        Ok(m) => client.put(name, m.encode()).await,
    }
}

/// `put-blob FILE`: the file as content objects; returns the id to fetch it by.
pub async fn put_blob_file(client: &Client, path: &Path) -> Result<ObjectId, ClientError> {
    match store_chunks(client, path).await? {
        Err(whole) => client.put_blob(whole).await,
        Ok(m) => client.put_blob(m.encode()).await,
    }
}

/// Writes `value` (a whole file or a manifest) to `out`, fetching chunks.
async fn materialize(
    client: &Client,
    value: Vec<u8>,
    out: &mut dyn Write,
) -> Result<u64, ClientError> {
    let Some(m) = Manifest::decode(&value)? else {
        out.write_all(&value)?;
        return Ok(value.len() as u64);
    };
    let pb = progress(m.total_bytes, "get");
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut stream = futures::stream::iter(m.chunks.iter().copied())
        .map(|id| async move {
            match client.get_blob(id).await? {
                Some(b) => Ok(b),
                None => Err(ClientError::Format(format!(
                    "chunk {} is missing",
                    id.to_hex()
                ))),
            }
        })
        .buffered(CHUNKS_IN_FLIGHT);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        written += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let h: [u8; 32] = hasher.finalize().into();
    if written != m.total_bytes || h != m.file_hash {
        return Err(ClientError::Format(
            "reassembled file does not match its manifest".into(),
        ));
    }
    Ok(written)
}

/// `get NAME`: returns false if the object does not exist.
pub async fn get_file(
    client: &Client,
    owner: &PublicKey,
    name: &[u8],
    out: &mut dyn Write,
) -> Result<Option<u64>, ClientError> {
    match client.get(owner, name).await? {
        None => Ok(None),
        Some(v) => materialize(client, v.value, out).await.map(Some),
    }
}

/// `get-blob ID`.
pub async fn get_blob_file(
    client: &Client,
    id: ObjectId,
    out: &mut dyn Write,
) -> Result<Option<u64>, ClientError> {
    match client.get_blob(id).await? {
        None => Ok(None),
        Some(v) => materialize(client, v, out).await.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_inconsistent_sizes() {
        let m = Manifest {
            total_bytes: 3 * CHUNK_BYTES as u64 - 1,
            chunk_bytes: CHUNK_BYTES as u32,
            chunks: vec![ObjectId([1; 32]), ObjectId([2; 32]), ObjectId([3; 32])],
            file_hash: [4; 32],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), Some(m.clone()));
        let mut bad = m.clone();
        bad.total_bytes = 10;
        assert!(Manifest::decode(&bad.encode()).is_err());
        assert_eq!(Manifest::decode(b"plain file").unwrap(), None);
        let enc = m.encode();
        assert!(Manifest::decode(&enc[..enc.len() - 1]).is_err());
    }
}
