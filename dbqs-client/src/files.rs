//! Files on disk: key files (mode 0600, refused when others can read them), the
//! client and node TOML configurations, and the cluster directory that `genesis`
//! writes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dbqs_common::genesis::Genesis;
use dbqs_common::threshold::MsPublicKey;
use dbqs_common::{ActiveConfig, ConfigCert, KeyPair};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FileError {
    // The I/O error is part of the message, not a `source`, so that error chains
    // print it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: readable by group or others (mode {mode:o}); run chmod 600 on it")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |error| FileError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn invalid(path: &Path, reason: impl ToString) -> FileError {
    FileError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes a secret with mode 0600 (created that way, never world-readable).
pub fn write_secret(path: &Path, data: &[u8]) -> Result<(), FileError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Reads a secret, refusing one that group or others may read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, FileError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(io(path))
}

pub fn write_public(path: &Path, data: &[u8]) -> Result<(), FileError> {
    fs::write(path, data).map_err(io(path))
}

/// An ed25519 key file: the 32-byte seed in hex.
pub fn read_keypair(path: &Path) -> Result<KeyPair, FileError> {
    let b = read_secret(path)?;
    let s = std::str::from_utf8(&b).map_err(|_| invalid(path, "not hex"))?;
    let v = hex::decode(s.trim()).map_err(|_| invalid(path, "not hex"))?;
    let seed: [u8; 32] = v
        .try_into()
        .map_err(|_| invalid(path, "ed25519 key must be 32 bytes"))?;
    Ok(KeyPair::from_seed(seed))
}

pub fn write_keypair(path: &Path, k: &KeyPair) -> Result<(), FileError> {
    write_secret(path, format!("{}\n", hex::encode(k.seed())).as_bytes())
}

pub fn read_text(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(io(path))
}

pub fn read_config_cert(path: &Path) -> Result<ConfigCert, FileError> {
    let b = fs::read(path).map_err(io(path))?;
    ConfigCert::decode(&b).map_err(|e| invalid(path, e))
}

pub fn parse_ms_key(path: &Path, hex_key: &str) -> Result<MsPublicKey, FileError> {
    let b = hex::decode(hex_key.trim()).map_err(|_| invalid(path, "ms_public_key is not hex"))?;
    MsPublicKey::from_bytes(&b).map_err(|e| invalid(path, e))
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `client.toml`: what a client needs to reach and trust a cluster. Relative
/// paths are relative to the file's directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The MS public key (hex of 48 bytes): verifies every configuration.
    pub ms_public_key: String,
    /// A configuration certificate to start from (genesis or newer).
    pub config_cert: String,
    /// The cluster CA certificate (PEM).
    pub ca_cert: String,
    pub tls_cert: String,
    pub tls_key: String,
    /// The owner key (ed25519 seed, hex) that signs owned objects.
    pub owner_key: String,
    /// Per-operation timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Addresses of some members ("host:port"), for clients that start without
    /// decoding `config_cert` (other languages): ask any of them `GetConfig`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl ClientFile {
    /// The file as written, paths unresolved.
    pub fn load(path: &Path) -> Result<ClientFile, FileError> {
        toml::from_str(&read_text(path)?).map_err(|e| invalid(path, e))
    }

    /// The path a field of a file loaded from `path` names (relative to its directory).
    pub fn resolve(path: &Path, field: &str) -> PathBuf {
        resolve(path.parent().unwrap_or(Path::new(".")), field)
    }
}

/// A loaded client configuration.
#[derive(Clone)]
pub struct ClientSettings {
    pub ms_public_key: MsPublicKey,
    pub config: ActiveConfig,
    pub ca_pem: String,
    pub tls_cert_pem: String,
    pub tls_key_pem: String,
    pub owner: KeyPair,
    pub timeout_ms: u64,
}

impl ClientSettings {
    pub fn load(path: &Path) -> Result<ClientSettings, FileError> {
        let text = read_text(path)?;
        let f: ClientFile = toml::from_str(&text).map_err(|e| invalid(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ms_public_key = parse_ms_key(path, &f.ms_public_key)?;
        let cert_path = resolve(base, &f.config_cert);
        let cert = read_config_cert(&cert_path)?;
        let config =
            ActiveConfig::verify(cert, &ms_public_key).map_err(|e| invalid(&cert_path, e))?;
        let key_path = resolve(base, &f.tls_key);
        Ok(ClientSettings {
            ms_public_key,
            config,
            ca_pem: read_text(&resolve(base, &f.ca_cert))?,
            tls_cert_pem: read_text(&resolve(base, &f.tls_cert))?,
            tls_key_pem: String::from_utf8(read_secret(&key_path)?)
                .map_err(|_| invalid(&key_path, "not PEM"))?,
            owner: read_keypair(&resolve(base, &f.owner_key))?,
            timeout_ms: f.timeout_ms,
        })
    }
}

/// `node.toml`: what one node needs. Relative paths are relative to its directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Address to bind, e.g. "0.0.0.0:7100".
    pub listen: String,
    /// Directory of the node's store.
    pub data_dir: String,
    pub node_key: String,
    pub x25519_key: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub ca_cert: String,
    pub config_cert: String,
    pub ms_public_key: String,
    /// Address of the read-only status port (status page, /status.json,
    /// /metrics), plain HTTP; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_listen: Option<String>,
    /// Serve the status port over TLS (HTTPS, with the node's own TLS certificate;
    /// no client certificate asked) instead of plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub status_tls: bool,
    /// The node's genesis MS key share, if it is a genesis MS member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms_share: Option<String>,
}

impl NodeFile {
    pub fn load(path: &Path) -> Result<NodeFile, FileError> {
        toml::from_str(&read_text(path)?).map_err(|e| invalid(path, e))
    }

    pub fn path(base: &Path, p: &str) -> PathBuf {
        resolve(base, p)
    }
}

/// The status port of a node listening on `listen`: the gRPC port + 1000.
fn status_listen(listen: &str) -> Option<String> {
    let (host, port) = listen.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{}", port.checked_add(1000)?))
}

/// Writes a cluster directory from a genesis (see docs/operations.md for the
/// layout) and returns the path of each node's TOML, in genesis order.
pub fn write_cluster_dir(
    dir: &Path,
    g: &Genesis,
    listen: &[String],
) -> Result<Vec<PathBuf>, FileError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    write_keypair(&dir.join("authority.key"), &g.authority)?;
    write_public(
        &dir.join("authority.pub"),
        format!("{}\n", g.authority.public().to_hex()).as_bytes(),
    )?;
    write_public(&dir.join("ca.pem"), g.ca.cert_pem.as_bytes())?;
    write_secret(&dir.join("ca.key"), g.ca.key_pem().as_bytes())?;
    let ms_hex = hex::encode(g.ms_public_key.to_bytes());
    write_public(&dir.join("ms.pub"), format!("{ms_hex}\n").as_bytes())?;
    write_public(&dir.join("genesis.cert"), &g.cert.encode())?;
    let adds: Vec<_> = g.nodes.iter().map(|n| n.add_cert.clone()).collect();
    write_public(
        &dir.join("genesis.adds"),
        &dbqs_common::genesis::encode_adds(&adds),
    )?;

    let cdir = dir.join("client");
    fs::create_dir_all(&cdir).map_err(io(&cdir))?;
    write_keypair(&cdir.join("owner.key"), &g.client.owner)?;
    write_public(&cdir.join("tls.pem"), g.client.tls.cert_pem.as_bytes())?;
    write_secret(&cdir.join("tls.key"), g.client.tls.key_pem.as_bytes())?;
    write_public(&cdir.join("client.cert"), &g.client.client_cert.encode())?;
    let client = ClientFile {
        ms_public_key: ms_hex.clone(),
        config_cert: "genesis.cert".into(),
        ca_cert: "ca.pem".into(),
        tls_cert: "client/tls.pem".into(),
        tls_key: "client/tls.key".into(),
        owner_key: "client/owner.key".into(),
        timeout_ms: default_timeout_ms(),
        bootstrap: g.nodes.iter().map(|n| n.address.clone()).collect(),
    };
    write_public(
        &dir.join("client.toml"),
        toml::to_string(&client)
            .map_err(|e| invalid(dir, e))?
            .as_bytes(),
    )?;

    let mut paths = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let ndir = dir.join("nodes").join(format!("n{:02}", i + 1));
        fs::create_dir_all(ndir.join("data")).map_err(io(&ndir))?;
        write_keypair(&ndir.join("node.key"), &n.key)?;
        write_secret(
            &ndir.join("x25519.key"),
            format!("{}\n", hex::encode(n.x25519_secret)).as_bytes(),
        )?;
        write_public(&ndir.join("tls.pem"), n.tls.cert_pem.as_bytes())?;
        write_secret(&ndir.join("tls.key"), n.tls.key_pem.as_bytes())?;
        write_public(&ndir.join("add.cert"), &n.add_cert.encode())?;
        let ms_share = match &n.ms_share {
            Some((idx, share)) => {
                write_secret(
                    &ndir.join("ms-share.key"),
                    format!("{idx} {}\n", hex::encode(share.to_bytes())).as_bytes(),
                )?;
                Some("ms-share.key".to_string())
            }
            None => None,
        };
        let nf = NodeFile {
            listen: listen[i].clone(),
            data_dir: "data".into(),
            node_key: "node.key".into(),
            x25519_key: "x25519.key".into(),
            tls_cert: "tls.pem".into(),
            tls_key: "tls.key".into(),
            ca_cert: "../../ca.pem".into(),
            config_cert: "../../genesis.cert".into(),
            ms_public_key: ms_hex.clone(),
            status_listen: status_listen(&listen[i]),
            status_tls: false,
            ms_share,
        };
        let p = ndir.join("node.toml");
        write_public(
            &p,
            toml::to_string(&nf).map_err(|e| invalid(&p, e))?.as_bytes(),
        )?;
        paths.push(p);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_open_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let k = KeyPair::generate();
        write_keypair(&p, &k).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_keypair(&p).unwrap().public(), k.public());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_keypair(&p), Err(FileError::TooOpen { .. })));
    }
}
