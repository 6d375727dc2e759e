//! `dbqs admin`: the authority's side of membership (PROTOCOL.md, "Identities, keys and
//! certificates" and "Membership service").
//!
//! Each command builds one authority-signed certificate (`dbqs_common::certs`) and, except
//! for client credentials (which involve no MS), submits it with `Membership.Submit` to
//! the MS members of the newest configuration the client can verify, one member at a
//! time, until one gives a definite answer ([`submit`]).
//!
//! Serials: one serial space covers every certificate kind, and the MS refuses a serial it
//! has seen. Every certificate made here takes the current Unix time in microseconds as
//! its serial ([`next_serial`]), raised to one above the last serial this process issued;
//! two `dbqs admin` runs by one authority would need to start within the same
//! microsecond, or the clock to step back, to collide, and the MS then refuses the second
//! as a replay (nothing is lost: issue it again).

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dbqs_common::certs::{
    AddCert, ClientCert, MAX_ADDRESS_BYTES, RemoveCert, RenewCert, RevokeClientCert,
    RotateAuthorityCert,
};
use dbqs_common::codec::sha256;
use dbqs_common::tls::{ClusterCa, TlsError};
use dbqs_common::{KeyPair, NodeId, PublicKey};
use dbqs_proto::v1 as pb;
use dbqs_proto::v1::submit_request::Cert;
use serde::Serialize;
use thiserror::Error;

use crate::client::Client;
use crate::files::{
    self, ClientFile, ClientSettings, FileError, read_keypair, read_secret, write_keypair,
    write_public, write_secret,
};

/// Default lifetime of node and client certificates issued here.
pub const DEFAULT_NOT_AFTER_DAYS: u64 = 365;
/// Longest lifetime accepted (about 100 years), so `now + days` cannot overflow.
pub const MAX_NOT_AFTER_DAYS: u64 = 36_500;
const DAY_MS: u64 = 86_400_000;
/// Longest client label (one DNS label).
pub const MAX_LABEL_BYTES: usize = 63;
/// Largest key or certificate file read here.
const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("TLS certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Invalid(String),
    /// The MS gave a definite "no": the certificate will not be queued as it is.
    #[error("the MS refused the certificate ({code:?} from {node}): {reason}")]
    Refused {
        node: NodeId,
        code: tonic::Code,
        reason: String,
    },
    /// No MS member gave a definite answer; `tried` says what each one did.
    #[error("no MS member gave a definite answer (tried {}): {tried}", .count)]
    NoAnswer { count: usize, tried: String },
    #[error("the configuration of epoch {0} names no MS member")]
    NoMsMembers(u64),
}

fn invalid(msg: impl Into<String>) -> AdminError {
    AdminError::Invalid(msg.into())
}

/// What the MS member that answered said about a submitted certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubmitOutcome {
    /// The MS member that answered (hex NodeId).
    pub answered_by: String,
    /// The MS epoch the certificate was ordered in; it takes effect in `epoch + 1`.
    pub epoch: u64,
    /// Configuration changes queued for `epoch + 1`, this one included.
    pub queued_changes: u32,
    /// True if this submission ended the epoch (the queue reached
    /// `max_changes_per_epoch`).
    pub epoch_ended: bool,
}

impl SubmitOutcome {
    /// One line for people.
    pub fn describe(&self) -> String {
        if self.epoch_ended {
            format!(
                "accepted; it ended epoch {} and takes effect in epoch {} (answered by {})",
                self.epoch,
                self.epoch + 1,
                &self.answered_by[..8.min(self.answered_by.len())]
            )
        } else {
            format!(
                "accepted in epoch {}; takes effect in epoch {} ({} change(s) queued; answered by {})",
                self.epoch,
                self.epoch + 1,
                self.queued_changes,
                &self.answered_by[..8.min(self.answered_by.len())]
            )
        }
    }
}

/// A serial for a new certificate: the current Unix time in microseconds, raised to one
/// above the last serial this process issued (see the module comment).
pub fn next_serial() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = unix_micros();
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(0);
    now.max(prev.saturating_add(1))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_micros() / 1000
}

/// The not-after of a certificate that should last `days` days from now.
pub fn not_after_in_days(days: u64) -> Result<u64, AdminError> {
    if days == 0 || days > MAX_NOT_AFTER_DAYS {
        return Err(invalid(format!(
            "--not-after-days must be 1..={MAX_NOT_AFTER_DAYS}, not {days}"
        )));
    }
    Ok(now_ms() + days * DAY_MS)
}

/// Submits `req` to the MS of the newest configuration `settings`' client can verify.
pub async fn submit(
    settings: &ClientSettings,
    req: pb::SubmitRequest,
) -> Result<SubmitOutcome, AdminError> {
    submit_with(&Client::new(settings), req).await
}

/// Rounds of [`submit_with`] when the MS it asked has handed over to a newer one.
pub const HANDOVER_REDIRECTS: u32 = 6;

/// Like [`submit`], with an existing client: first adopts the newest configuration the
/// known nodes can prove ([`Client::refresh_config`]), then asks its MS members one at a
/// time, in MS-list order, each call bounded by the client's timeout:
///
/// - OK: the outcome;
/// - INVALID_ARGUMENT or FAILED_PRECONDITION: [`AdminError::Refused`] with the MS's reason
///   (except "not an MS member", which a member of an older configuration says: next);
/// - "this MS handed over to the MS of configuration E" (an MS rotation, docs/resharing.md,
///   finished after this client last refreshed): the next member, and if none accepted,
///   the whole round again once the newer configuration can be proved (at most
///   [`HANDOVER_REDIRECTS`] rounds, 0.5 s more apart each time: 7.5 s in all); a retired
///   MS queued nothing;
/// - anything else (UNAVAILABLE, DEADLINE_EXCEEDED, transport errors): the next member.
///
/// An UNAVAILABLE answer may mean the MS ordered the certificate but not in time; a later
/// member then refuses it as a replayed serial, and the error says so.
pub async fn submit_with(
    client: &Client,
    req: pb::SubmitRequest,
) -> Result<SubmitOutcome, AdminError> {
    let mut tried = Vec::new();
    let mut maybe_queued = false;
    for round in 0..HANDOVER_REDIRECTS {
        if round > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(round))).await;
        }
        client.refresh_config().await;
        let cfg = client.config();
        let members = cfg.config.ms_members.clone();
        if members.is_empty() {
            return Err(AdminError::NoMsMembers(cfg.epoch()));
        }
        let mut handed_over = false;
        for n in members {
            let mut stub = match client.membership(n) {
                Ok(s) => s,
                Err(e) => {
                    tried.push(format!("{n}: {e}"));
                    continue;
                }
            };
            match stub.submit(req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(SubmitOutcome {
                        answered_by: n.to_hex(),
                        epoch: r.epoch,
                        queued_changes: r.queued_changes,
                        epoch_ended: r.epoch_ended,
                    });
                }
                Err(s) => {
                    let code = s.code();
                    let msg = s.message().to_string();
                    let retired = msg.contains("handed over to the MS of configuration");
                    handed_over |= retired;
                    let definite = matches!(
                        code,
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ) && !msg.contains("not an MS member")
                        && !retired;
                    if definite {
                        let reason = if maybe_queued && msg.contains("already used") {
                            format!(
                                "{msg} (an earlier attempt timed out, so it was probably queued then: check `dbqs status`)"
                            )
                        } else {
                            msg
                        };
                        return Err(AdminError::Refused {
                            node: n,
                            code,
                            reason,
                        });
                    }
                    if matches!(
                        code,
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                    ) {
                        maybe_queued = true;
                    }
                    tried.push(format!("{n}: {code:?}: {msg}"));
                }
            }
        }
        if !handed_over {
            break;
        }
    }
    Err(AdminError::NoAnswer {
        count: tried.len(),
        tried: tried.join("; "),
    })
}

/// `SubmitRequest` for each certificate kind.
pub fn add_request(c: &AddCert) -> pb::SubmitRequest {
    pb::SubmitRequest {
        cert: Some(Cert::Add(c.encode())),
    }
}

pub fn remove_request(c: &RemoveCert) -> pb::SubmitRequest {
    pb::SubmitRequest {
        cert: Some(Cert::Remove(c.encode())),
    }
}

pub fn renew_request(c: &RenewCert) -> pb::SubmitRequest {
    pb::SubmitRequest {
        cert: Some(Cert::Renew(c.encode())),
    }
}

pub fn revoke_client_request(c: &RevokeClientCert) -> pb::SubmitRequest {
    pb::SubmitRequest {
        cert: Some(Cert::RevokeClient(c.encode())),
    }
}

pub fn rotate_authority_request(c: &RotateAuthorityCert) -> pb::SubmitRequest {
    pb::SubmitRequest {
        cert: Some(Cert::RotateAuthority(c.encode())),
    }
}

/// The authority key file by default: `authority.key` beside the client configuration
/// (the cluster directory `dbqs genesis` and `dbqs-server devnet` write).
pub fn default_authority_path(client_config: &Path) -> PathBuf {
    client_config
        .parent()
        .unwrap_or(Path::new("."))
        .join("authority.key")
}

/// The cluster CA (`ca.key`, `ca.pem`) in `cluster_dir`; the key must be private.
pub fn load_ca(cluster_dir: &Path) -> Result<ClusterCa, AdminError> {
    let key_path = cluster_dir.join("ca.key");
    let key = String::from_utf8(read_secret(&key_path)?)
        .map_err(|_| invalid(format!("{}: not PEM", key_path.display())))?;
    let cert = files::read_text(&cluster_dir.join("ca.pem"))?;
    Ok(ClusterCa::load(&key, &cert)?)
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

fn read_small(path: &Path) -> Result<Vec<u8>, AdminError> {
    let len = fs::metadata(path)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?
        .len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(invalid(format!(
            "{}: {len} bytes, more than {MAX_KEY_FILE_BYTES}",
            path.display()
        )));
    }
    fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn is_pub_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "pub")
}

/// A hex public key from a `*.pub` file.
fn read_pub_file(path: &Path) -> Result<[u8; 32], AdminError> {
    let b = read_small(path)?;
    std::str::from_utf8(&b)
        .ok()
        .and_then(parse_hex32)
        .ok_or_else(|| invalid(format!("{}: not a 32-byte hex key", path.display())))
}

/// A node's ed25519 public key from `arg`: 64 hex digits; or a `*.pub` file holding them;
/// or a key file as `dbqs keygen` and genesis write it (`node.key`: the hex seed, mode
/// 0600), of which only the public key is used.
pub fn node_public_key(arg: &str) -> Result<PublicKey, AdminError> {
    let path = Path::new(arg);
    if !path.exists()
        && let Some(k) = parse_hex32(arg)
    {
        return Ok(PublicKey(k));
    }
    if is_pub_file(path) {
        return Ok(PublicKey(read_pub_file(path)?));
    }
    Ok(read_keypair(path)?.public())
}

/// A node's x25519 public key from `arg`: 64 hex digits; or a `*.pub` file holding them;
/// or the node's `x25519.key` as genesis writes it (the hex secret, mode 0600), whose
/// public key is derived.
pub fn x25519_public_key(arg: &str) -> Result<[u8; 32], AdminError> {
    let path = Path::new(arg);
    if !path.exists()
        && let Some(k) = parse_hex32(arg)
    {
        return Ok(k);
    }
    if is_pub_file(path) {
        return read_pub_file(path);
    }
    let b = read_secret(path)?;
    let secret = std::str::from_utf8(&b)
        .ok()
        .and_then(parse_hex32)
        .ok_or_else(|| {
            invalid(format!(
                "{}: not a 32-byte hex x25519 secret",
                path.display()
            ))
        })?;
    Ok(x25519_public(secret))
}

/// The x25519 public key of a secret.
pub fn x25519_public(secret: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes()
}

/// A NodeId from 64 hex digits.
pub fn parse_node_id(arg: &str) -> Result<NodeId, AdminError> {
    parse_hex32(arg)
        .map(NodeId)
        .ok_or_else(|| invalid(format!("{arg:?} is not a NodeId (64 hex digits)")))
}

/// Host names and IPs a node's TLS certificate names, from its address and extra IPs
/// (as genesis does: an IP host goes into the IPs, a name into the names).
fn cert_names(
    address: &str,
    extra_ips: &[IpAddr],
) -> Result<(Vec<String>, Vec<IpAddr>), AdminError> {
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid(format!(
            "address must be 1..={MAX_ADDRESS_BYTES} bytes"
        )));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("address {address:?} needs host:port")))?;
    port.parse::<u16>()
        .map_err(|_| invalid(format!("address {address:?}: bad port")))?;
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(invalid(format!("address {address:?} has no host")));
    }
    let mut ips = extra_ips.to_vec();
    let mut hosts = Vec::new();
    match host.parse::<IpAddr>() {
        Ok(ip) if !ips.contains(&ip) => ips.push(ip),
        Ok(_) => {}
        Err(_) => hosts.push(host.to_string()),
    }
    Ok((hosts, ips))
}

fn write_world_readable(path: &Path, data: &[u8]) -> Result<(), AdminError> {
    write_public(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn create_dir(dir: &Path) -> Result<(), AdminError> {
    fs::create_dir_all(dir).map_err(|e| invalid(format!("{}: {e}", dir.display())))
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), AdminError> {
    for p in paths {
        if p.exists() {
            return Err(invalid(format!(
                "{} exists; not overwriting (choose another directory)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Admits a node: loads the authority key and the cluster CA from `cluster_dir`, then
/// does [`issue_add_with`].
pub fn issue_add(
    cluster_dir: &Path,
    node_pub: PublicKey,
    x25519_pub: [u8; 32],
    addr: &str,
    ips: &[IpAddr],
    tls_out_dir: &Path,
    not_after_ms: u64,
) -> Result<AddCert, AdminError> {
    let authority = read_keypair(&cluster_dir.join("authority.key"))?;
    let ca = load_ca(cluster_dir)?;
    issue_add_with(
        &authority,
        &ca,
        node_pub,
        x25519_pub,
        addr,
        ips,
        tls_out_dir,
        not_after_ms,
    )
}

/// Issues the node's TLS certificate with the cluster CA (naming its NodeId, `localhost`,
/// the host of `addr` and `ips`), writes `tls.pem` (0644) and `tls.key` (0600) into
/// `tls_out_dir`, and signs the `AddCert` binding the node key, that certificate's SHA-256,
/// the x25519 key and `addr`, which it also writes to `tls_out_dir/add.cert`. Refuses to
/// overwrite an existing `tls.key` or `add.cert`. Nothing is submitted.
#[allow(clippy::too_many_arguments)]
pub fn issue_add_with(
    authority: &KeyPair,
    ca: &ClusterCa,
    node_pub: PublicKey,
    x25519_pub: [u8; 32],
    addr: &str,
    ips: &[IpAddr],
    tls_out_dir: &Path,
    not_after_ms: u64,
) -> Result<AddCert, AdminError> {
    let (hosts, ips) = cert_names(addr, ips)?;
    let cert_path = tls_out_dir.join("add.cert");
    let key_path = tls_out_dir.join("tls.key");
    refuse_existing(&[key_path.clone(), cert_path.clone()])?;
    let node = NodeId::of(&node_pub);
    let tls = ca.issue_node(&node, &hosts, &ips)?;
    let add = AddCert::issue(
        authority,
        node_pub,
        tls.hash(),
        x25519_pub,
        addr.to_string(),
        next_serial(),
        not_after_ms,
    );
    create_dir(tls_out_dir)?;
    write_secret(&key_path, tls.key_pem.as_bytes())?;
    write_world_readable(&tls_out_dir.join("tls.pem"), tls.cert_pem.as_bytes())?;
    write_world_readable(&cert_path, &add.encode())?;
    Ok(add)
}

pub fn issue_remove(authority: &KeyPair, node: NodeId) -> RemoveCert {
    RemoveCert::issue(authority, node, next_serial())
}

/// Extends a member node's not-after. `RenewCert` names a node; clients are renewed by
/// issuing a new `ClientCert` ([`renew_client`]).
pub fn issue_renew(authority: &KeyPair, node: NodeId, not_after_ms: u64) -> RenewCert {
    RenewCert::issue(authority, node, not_after_ms, next_serial())
}

/// Rotates to the key in `new_key_path`, generating it there (mode 0600) if the file does
/// not exist. The certificate is signed by the current authority and, as proof of
/// possession, by the new key. Returns it and whether the key was generated.
pub fn issue_rotate(
    authority: &KeyPair,
    new_key_path: &Path,
) -> Result<(RotateAuthorityCert, bool), AdminError> {
    let generated = !new_key_path.exists();
    let new = if generated {
        let k = KeyPair::generate();
        write_keypair(new_key_path, &k)?;
        k
    } else {
        read_keypair(new_key_path)?
    };
    if new.public() == authority.public() {
        return Err(invalid("the new authority key is the current one"));
    }
    Ok((
        RotateAuthorityCert::issue(authority, &new, next_serial()),
        generated,
    ))
}

/// The DER certificate in a PEM file.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>, AdminError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let b = read_small(path)?;
    CertificateDer::from_pem_slice(&b)
        .map(|c| c.to_vec())
        .map_err(|e| invalid(format!("{}: no PEM certificate ({e})", path.display())))
}

/// Revokes the client whose TLS certificate is in `tls_cert_pem`. The client key comes
/// from `client_key` if given, else from the `client.cert` beside the PEM (which must be
/// for that TLS certificate).
pub fn issue_revoke(
    authority: &KeyPair,
    tls_cert_pem: &Path,
    client_key: Option<PublicKey>,
) -> Result<RevokeClientCert, AdminError> {
    let der = read_cert_der(tls_cert_pem)?;
    let hash = sha256(&[&der]);
    let key = match client_key {
        Some(k) => k,
        None => {
            let p = tls_cert_pem
                .parent()
                .unwrap_or(Path::new("."))
                .join("client.cert");
            let c = ClientCert::decode(&read_small(&p).map_err(|e| {
                invalid(format!(
                    "{e}; give the client's public key with --client-key"
                ))
            })?)
            .map_err(|e| invalid(format!("{}: {e}", p.display())))?;
            if c.tls_cert_hash != hash {
                return Err(invalid(format!(
                    "{} is for another TLS certificate; give --client-key",
                    p.display()
                )));
            }
            c.client_key
        }
    };
    Ok(RevokeClientCert::issue(authority, key, hash, next_serial()))
}

/// What [`issue_client`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedClient {
    pub dir: PathBuf,
    pub client_toml: PathBuf,
    /// Hex of the owner (client) public key.
    pub owner_key: String,
    pub label: String,
    pub not_after_ms: u64,
}

fn check_label(label: &str) -> Result<(), AdminError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_BYTES
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "label {label:?} must be 1..={MAX_LABEL_BYTES} of a-z, 0-9 and inner '-'"
        )))
    }
}

/// Writes a new client's credentials into `out_dir`: `owner.key`, `tls.key` (0600),
/// `tls.pem`, `client.cert`, copies of the cluster CA and of the configuration
/// certificate the current client starts from, and a `client.toml` pointing at them with
/// the MS key, bootstrap list and timeout of `client_toml`. Involves no MS. The TLS
/// certificate names `<label>.client.dbqs` (default label: the first 8 bytes of the
/// owner's NodeId-style hash, in hex).
pub fn issue_client(
    authority: &KeyPair,
    ca: &ClusterCa,
    client_toml: &Path,
    out_dir: &Path,
    label: Option<&str>,
    not_after_ms: u64,
) -> Result<(ClientCert, IssuedClient), AdminError> {
    let current = ClientFile::load(client_toml)?;
    let config_cert = fs::read(ClientFile::resolve(client_toml, &current.config_cert))
        .map_err(|e| invalid(format!("{}: {e}", current.config_cert)))?;
    let names = [
        "owner.key",
        "tls.key",
        "tls.pem",
        "client.cert",
        "ca.pem",
        "config.cert",
        "client.toml",
    ];
    refuse_existing(&names.map(|n| out_dir.join(n)))?;
    let owner = KeyPair::generate();
    let label = label.map_or_else(|| hex::encode(&owner.node_id().0[..8]), str::to_string);
    check_label(&label)?;
    let tls = ca.issue_client(&label)?;
    let cert = ClientCert::issue(authority, owner.public(), &tls.cert_der, not_after_ms);
    create_dir(out_dir)?;
    write_keypair(&out_dir.join("owner.key"), &owner)?;
    write_secret(&out_dir.join("tls.key"), tls.key_pem.as_bytes())?;
    write_world_readable(&out_dir.join("tls.pem"), tls.cert_pem.as_bytes())?;
    write_world_readable(&out_dir.join("client.cert"), &cert.encode())?;
    write_world_readable(&out_dir.join("ca.pem"), ca.cert_pem.as_bytes())?;
    write_world_readable(&out_dir.join("config.cert"), &config_cert)?;
    let file = ClientFile {
        ms_public_key: current.ms_public_key,
        config_cert: "config.cert".into(),
        ca_cert: "ca.pem".into(),
        tls_cert: "tls.pem".into(),
        tls_key: "tls.key".into(),
        owner_key: "owner.key".into(),
        timeout_ms: current.timeout_ms,
        bootstrap: current.bootstrap,
    };
    let toml_path = out_dir.join("client.toml");
    let text = toml::to_string(&file).map_err(|e| invalid(format!("client.toml: {e}")))?;
    write_world_readable(&toml_path, text.as_bytes())?;
    Ok((
        cert,
        IssuedClient {
            dir: out_dir.to_path_buf(),
            client_toml: toml_path,
            owner_key: owner.public().to_hex(),
            label,
            not_after_ms,
        },
    ))
}

/// Renews a client: a new `ClientCert` for the owner key and TLS certificate in
/// `client_dir` (`owner.key` or `client.cert` for the key, `tls.pem`), written to
/// `client_dir/client.cert` (the old one is kept as `client.cert.old`). Involves no MS.
pub fn renew_client(
    authority: &KeyPair,
    client_dir: &Path,
    not_after_ms: u64,
) -> Result<ClientCert, AdminError> {
    let der = read_cert_der(&client_dir.join("tls.pem"))?;
    let cert_path = client_dir.join("client.cert");
    let key = if cert_path.exists() {
        let old = ClientCert::decode(&read_small(&cert_path)?)
            .map_err(|e| invalid(format!("{}: {e}", cert_path.display())))?;
        if old.tls_cert_hash != sha256(&[&der]) {
            return Err(invalid(format!(
                "{} is for another TLS certificate than tls.pem",
                cert_path.display()
            )));
        }
        old.client_key
    } else {
        read_keypair(&client_dir.join("owner.key"))?.public()
    };
    let cert = ClientCert::issue(authority, key, &der, not_after_ms);
    if cert_path.exists() {
        fs::rename(&cert_path, client_dir.join("client.cert.old"))
            .map_err(|e| invalid(format!("{}: {e}", cert_path.display())))?;
    }
    write_world_readable(&cert_path, &cert.encode())?;
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbqs_common::config::Params;
    use dbqs_common::genesis::{self, NodeSpec};

    fn cluster(dir: &Path) {
        let g = genesis::create(
            &[NodeSpec {
                address: "127.0.0.1:7101".into(),
                ips: vec![],
            }],
            Params {
                f: 0,
                ..Params::default()
            },
        )
        .unwrap();
        files::write_cluster_dir(dir, &g, &["127.0.0.1:7101".into()]).unwrap();
    }

    #[test]
    fn serials_strictly_increase_within_a_process() {
        let mut last = 0;
        for _ in 0..1000 {
            let s = next_serial();
            assert!(s > last);
            last = s;
        }
        assert!(last > 1_600_000_000_000_000, "microseconds since 1970");
    }

    #[test]
    fn issue_add_writes_the_node_certificate_it_binds() {
        let d = tempfile::tempdir().unwrap();
        cluster(d.path());
        let node = KeyPair::generate();
        let out = d.path().join("new");
        let x = x25519_public([9; 32]);
        let not_after = now_ms() + DAY_MS;
        let add = issue_add(
            d.path(),
            node.public(),
            x,
            "db5.example:7101",
            &["10.0.0.5".parse().unwrap()],
            &out,
            not_after,
        )
        .unwrap();
        let authority = read_keypair(&d.path().join("authority.key")).unwrap();
        add.verify(&authority.public(), now_ms()).unwrap();
        assert_eq!(add.node_id(), node.node_id());
        assert_eq!(add.x25519_key, x);
        let der = read_cert_der(&out.join("tls.pem")).unwrap();
        assert_eq!(add.tls_cert_hash, sha256(&[&der]));
        assert_eq!(
            AddCert::decode(&fs::read(out.join("add.cert")).unwrap()).unwrap(),
            add
        );
        let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("tls.key"), 0o600);
        assert_eq!(mode("tls.pem"), 0o644);
        // Never overwrites a node's key.
        assert!(issue_add(d.path(), node.public(), x, "h:1", &[], &out, not_after).is_err());
        // Bad addresses are refused before anything is written.
        let other = d.path().join("other");
        for bad in ["nohost", ":7101", "h:port", ""] {
            assert!(issue_add(d.path(), node.public(), x, bad, &[], &other, not_after).is_err());
        }
        assert!(!other.exists());
    }

    #[test]
    fn key_arguments_accept_hex_pub_files_and_the_key_files_genesis_writes() {
        let d = tempfile::tempdir().unwrap();
        cluster(d.path());
        let n = d.path().join("nodes/n01");
        let node_key = read_keypair(&n.join("node.key")).unwrap();
        let add = AddCert::decode(&fs::read(n.join("add.cert")).unwrap()).unwrap();
        assert_eq!(
            node_public_key(n.join("node.key").to_str().unwrap()).unwrap(),
            node_key.public()
        );
        assert_eq!(
            x25519_public_key(n.join("x25519.key").to_str().unwrap()).unwrap(),
            add.x25519_key
        );
        let hex_key = node_key.public().to_hex();
        assert_eq!(node_public_key(&hex_key).unwrap(), node_key.public());
        let pub_file = d.path().join("n.pub");
        fs::write(&pub_file, format!("{hex_key}\n")).unwrap();
        assert_eq!(
            node_public_key(pub_file.to_str().unwrap()).unwrap(),
            node_key.public()
        );
        assert!(node_public_key("abcd").is_err());
        assert!(x25519_public_key(d.path().join("missing").to_str().unwrap()).is_err());
        // A world-readable secret is refused.
        fs::set_permissions(n.join("x25519.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            x25519_public_key(n.join("x25519.key").to_str().unwrap()),
            Err(AdminError::File(FileError::TooOpen { .. }))
        ));
    }

    #[test]
    fn an_issued_client_directory_loads_as_a_client_and_can_be_renewed_and_revoked() {
        let d = tempfile::tempdir().unwrap();
        cluster(d.path());
        let authority = read_keypair(&d.path().join("authority.key")).unwrap();
        let ca = load_ca(d.path()).unwrap();
        let out = d.path().join("alice");
        let (cert, issued) = issue_client(
            &authority,
            &ca,
            &d.path().join("client.toml"),
            &out,
            Some("alice"),
            now_ms() + DAY_MS,
        )
        .unwrap();
        cert.verify(&authority.public(), now_ms()).unwrap();
        let s = ClientSettings::load(&issued.client_toml).unwrap();
        assert_eq!(s.owner.public(), cert.client_key);
        assert_eq!(s.config.epoch(), 1);
        let der = read_cert_der(&out.join("tls.pem")).unwrap();
        assert_eq!(cert.tls_cert_hash, sha256(&[&der]));
        // Issuing into the same directory again is refused.
        assert!(
            issue_client(
                &authority,
                &ca,
                &d.path().join("client.toml"),
                &out,
                None,
                1
            )
            .is_err()
        );
        assert!(
            issue_client(
                &authority,
                &ca,
                &d.path().join("client.toml"),
                &d.path().join("x"),
                Some("Bad_Label"),
                1
            )
            .is_err()
        );

        let later = now_ms() + 2 * DAY_MS;
        let renewed = renew_client(&authority, &out, later).unwrap();
        assert_eq!(renewed.client_key, cert.client_key);
        assert_eq!(renewed.tls_cert_hash, cert.tls_cert_hash);
        assert_eq!(renewed.not_after_ms, later);
        assert!(out.join("client.cert.old").exists());

        let revoke = issue_revoke(&authority, &out.join("tls.pem"), None).unwrap();
        revoke.verify(&authority.public()).unwrap();
        assert_eq!(revoke.client_key, cert.client_key);
        assert_eq!(revoke.tls_cert_hash, cert.tls_cert_hash);
    }

    #[test]
    fn rotation_generates_the_new_key_once_and_signs_with_both() {
        let d = tempfile::tempdir().unwrap();
        let cur = KeyPair::generate();
        let p = d.path().join("next.key");
        let (c, generated) = issue_rotate(&cur, &p).unwrap();
        assert!(generated);
        c.verify(&cur.public()).unwrap();
        let (again, generated) = issue_rotate(&cur, &p).unwrap();
        assert!(!generated);
        assert_eq!(again.new_authority, c.new_authority);
        assert!(again.serial > c.serial);
        let same = d.path().join("same.key");
        write_keypair(&same, &cur).unwrap();
        assert!(issue_rotate(&cur, &same).is_err());
    }

    #[test]
    fn not_after_days_are_bounded() {
        assert!(not_after_in_days(0).is_err());
        assert!(not_after_in_days(MAX_NOT_AFTER_DAYS + 1).is_err());
        assert!(not_after_in_days(1).unwrap() > now_ms());
    }
}
