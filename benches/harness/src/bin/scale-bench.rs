//! `scale-bench`: dBQS configurations of 1,000 / 10,000 / 100,000 nodes, in simulation and
//! on paper (issue [G], deliverable 2, "scale").
//!
//! For each size N it builds a `Configuration` of N members with synthetic keys (32-byte
//! values derived with SHA-256: the configuration codec checks lengths and order, not
//! curve points, so real keys would cost only generation time), ring positions
//! `SHA-256(key ‖ salt)` as genesis assigns them, an MS of `3 f_ms + 1` members with
//! `f_ms = quorum::ms_f_for(N, ms_f_max)`, and a fresh threshold key dealt with
//! `threshold::deal`. Then, with the project's own code (`dbqs-common`):
//!
//! * size: the canonical encoding (bytes, bytes per member) and the `PushConfig` request
//!   that carries it (protobuf, computed from the field sizes);
//! * the MS's side: `Configuration::encode`, its SHA-256, one replica's signature share
//!   over `Configuration::signing_bytes`, and `threshold::combine` of f_ms+1 shares (the
//!   combiner checks the combined signature), as `ms_host.rs` does;
//! * a node's side: `Configuration::decode`, `ConfigCert::verify` (decode, canonical
//!   re-encode, SHA-256, one BLS verification) and `ActiveConfig::verify` (that plus the
//!   indexes: ring, by-id and by-TLS maps); `Ring::new` alone;
//! * ring lookups: `ActiveConfig::group(&ObjectId)` for `--lookups` random ids, timed in
//!   batches of 1,000; the median and p99 of the per-lookup time of a batch;
//! * epoch-change propagation on paper, from what the code does (`ms_host.rs`,
//!   `adopt_and_push` / `push_to`; `configs.rs`, `offer`): every MS member that holds the
//!   new certificate before a push reaches it sends the whole `ConfigCert` to every
//!   other member of the old and new configurations (32 calls in flight). So one pusher
//!   sends (N−1) × the request size, and up to 3f_ms+1 members do. The time for one pusher
//!   at each `--link-gbps` rate is its bytes over the link (bandwidth alone: no RTT, TLS
//!   or verification). Each receiving node verifies the certificate in `offer` and again
//!   when it adopts it from its store: two `ActiveConfig::verify` per node and epoch.
//!   For comparison, the size of a delta push (not implemented) carrying
//!   `max_changes_per_epoch` member records and the signature.
//!
//! Every repetition count is bounded (`--reps`, default by size) and so is each
//! measurement's time (`--budget-s` per size, at least one repetition each).
//!
//! Output: a Markdown table on stdout (and `--markdown PATH`), `--json PATH`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dbqs_common::codec::sha256;
use dbqs_common::config::{Member, Params, MAX_MEMBERS};
use dbqs_common::quorum::ms_f_for;
use dbqs_common::ring::Ring;
use dbqs_common::threshold::{combine, deal, MsPublicKey};
use dbqs_common::{ActiveConfig, ConfigCert, Configuration, NodeId, ObjectId, PublicKey};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Configuration size, verification, ring lookups and epoch propagation at scale")]
struct Args {
    /// Configuration sizes (members).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
    nodes: Vec<usize>,
    /// Ring lookups per size (timed in batches of 1,000).
    #[arg(long, default_value_t = 100_000)]
    lookups: usize,
    /// Repetitions of each timed step; default 20 below 10,000 members, 10 below
    /// 100,000, 5 from there.
    #[arg(long)]
    reps: Option<usize>,
    /// Time bound of each timed step's repetitions (at least one runs).
    #[arg(long, default_value_t = 10.0)]
    budget_s: f64,
    /// Link rates for the propagation model, in Gbit/s.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0f64, 10.0])]
    link_gbps: Vec<f64>,
    /// Storage fault threshold f (groups of 3f+1).
    #[arg(long, default_value_t = 1)]
    f: u32,
    /// Largest MS fault threshold (genesis default 3).
    #[arg(long, default_value_t = 3)]
    ms_f_max: u32,
    /// `max_changes_per_epoch` for the delta-push comparison (genesis default 64).
    #[arg(long, default_value_t = 64)]
    max_changes: u32,
    /// `quick` or `full`, recorded in the JSON.
    #[arg(long, default_value = "full")]
    mode: String,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown table here too.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// Milliseconds of repeated runs of one step.
#[derive(Debug, Clone, Serialize)]
struct Timing {
    median_ms: f64,
    min_ms: f64,
    reps: usize,
}

/// Runs `f` up to `reps` times (at least once) within `budget`.
fn timed<T>(reps: usize, budget: Duration, mut f: impl FnMut() -> T) -> Timing {
    let start = Instant::now();
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        black_box(f());
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if start.elapsed() >= budget {
            break;
        }
    }
    ms.sort_by(f64::total_cmp);
    Timing {
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        reps: ms.len(),
    }
}

#[derive(Debug, Clone, Serialize)]
struct LinkTime {
    gbps: f64,
    /// One pusher's (N−1) requests at this rate.
    one_pusher_s: f64,
    /// One request (what one node receives from one pusher).
    one_request_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    nodes: usize,
    f: u32,
    f_ms: u32,
    ms_members: usize,
    /// Canonical configuration encoding.
    config_bytes: usize,
    bytes_per_member: f64,
    /// `PushConfigRequest` with one `ConfigCert` (protobuf).
    push_request_bytes: usize,
    build_ms: f64,
    encode: Timing,
    hash: Timing,
    /// One MS replica's signature share over the signing bytes.
    share_sign: Timing,
    /// `threshold::combine` of f_ms+1 shares, including its check of the result.
    combine: Timing,
    decode: Timing,
    /// `ConfigCert::verify`: decode, canonical re-encode, SHA-256, BLS verification.
    cert_verify: Timing,
    /// `ActiveConfig::verify`: `cert_verify` plus the ring and the two indexes.
    active_verify: Timing,
    ring_build: Timing,
    lookups: usize,
    lookup_p50_ns: f64,
    lookup_p99_ns: f64,
    /// Members of the old ∪ new configuration each pusher sends to (N−1 here).
    push_targets: usize,
    /// Bytes one pusher sends per epoch.
    bytes_per_pusher: u64,
    /// Pushers: between 1 and the MS size (every MS member that holds the certificate
    /// before a push reaches it pushes).
    max_pushers: usize,
    /// Bytes all MS members send per epoch if every one pushes.
    bytes_all_pushers: u64,
    links: Vec<LinkTime>,
    /// CPU per node per epoch: one `ActiveConfig::verify` (on offer; adoption reuses it).
    node_cpu_per_epoch_ms: f64,
    /// On paper: a push carrying only `max_changes` member records and the signature.
    delta_push_bytes_paper: usize,
}

#[derive(Debug, Serialize)]
struct Output {
    mode: String,
    machine: String,
    note: &'static str,
    rows: Vec<Row>,
}

const NOTE: &str = "Synthetic members (SHA-256-derived keys, 10.x.y.z:7100 addresses); \
timings are medians of repeated single-threaded runs on this host; propagation times are \
bandwidth-only lower bounds for one pusher (no RTT, TLS, verification or queuing).";

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model}, {cores} cores")
}

/// Bytes of a protobuf varint.
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Bytes of a length-delimited protobuf field (one-byte key).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// `PushConfigRequest { certs: [ConfigCert { epoch, configuration, signature }] }`.
fn push_request_len(epoch: u64, config: usize, signature: usize) -> usize {
    let cert = 1 + varint_len(epoch) + field_len(config) + field_len(signature);
    field_len(cert)
}

fn synthetic(tag: &str, i: usize) -> [u8; 32] {
    sha256(&[tag.as_bytes(), &(i as u64).to_be_bytes()])
}

/// One member record as `Configuration::encode` writes it.
fn member_record_len(m: &Member) -> usize {
    32 * 3 + 4 + m.address.len() + 1 + if m.ring_position.is_some() { 32 } else { 0 }
}

fn default_reps(n: usize) -> usize {
    match n {
        0..10_000 => 20,
        10_000..100_000 => 10,
        _ => 5,
    }
}

fn measure(a: &Args, n: usize) -> Result<Row> {
    if !(4..=MAX_MEMBERS).contains(&n) {
        bail!("{n} members: between 4 and {MAX_MEMBERS}");
    }
    let reps = a.reps.unwrap_or_else(|| default_reps(n));
    let budget = Duration::from_secs_f64(a.budget_s);
    let epoch = 7;

    let t = Instant::now();
    let ring_salt = sha256(&[b"scale-bench salt"]);
    let members: Vec<Member> = (0..n)
        .map(|i| {
            let key = PublicKey(synthetic("key", i));
            Member {
                key,
                tls_cert_hash: synthetic("tls", i),
                x25519_key: synthetic("x25519", i),
                address: format!("10.{}.{}.{}:7100", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                ring_position: Some(sha256(&[&key.0, &ring_salt])),
            }
        })
        .collect();
    // The MS as genesis draws it: the first 3f_ms+1 members by SHA-256(salt ‖ NodeId).
    let f_ms = ms_f_for(n, a.ms_f_max);
    let n_ms = 3 * f_ms as usize + 1;
    let mut order: Vec<NodeId> = members.iter().map(Member::node_id).collect();
    order.sort_by_key(|id| sha256(&[&ring_salt, &id.0]));
    let ms_members: Vec<NodeId> = order[..n_ms].to_vec();
    let (pks, shares) = deal(n_ms, f_ms);
    let record_bytes: usize = members.iter().map(member_record_len).sum();
    let mut config = Configuration {
        epoch,
        prev_hash: sha256(&[b"scale-bench previous"]),
        ring_salt,
        authority: PublicKey(sha256(&[b"scale-bench authority"])),
        ms_key_set: pks.to_bytes(),
        params: Params {
            f: a.f,
            ms_f_max: a.ms_f_max,
            max_changes_per_epoch: a.max_changes,
            ..Params::default()
        },
        members,
        ms_members,
        ms_next: Vec::new(),
        revoked_clients: Vec::new(),
    };
    config.normalize();
    let build_ms = t.elapsed().as_secs_f64() * 1e3;

    let bytes = config.encode();
    let encode = timed(reps, budget, || config.encode());
    let hash = timed(reps, budget, || sha256(&[&bytes]));
    let msg = Configuration::signing_bytes(epoch, &sha256(&[&bytes]));
    let share_sign = timed(reps, budget, || shares[0].sign(&msg));
    let t_shares: Vec<_> = shares
        .iter()
        .take(f_ms as usize + 1)
        .enumerate()
        .map(|(i, s)| (i, s.sign(&msg)))
        .collect();
    let combine_t = timed(reps, budget, || combine(&pks, &msg, &t_shares));
    let sig = combine(&pks, &msg, &t_shares).context("combining the shares")?;
    let cert = ConfigCert {
        epoch,
        configuration: bytes.clone(),
        signature: sig.to_bytes().to_vec(),
    };
    let ms_key = MsPublicKey(pks.public_key());

    let decode = timed(reps, budget, || Configuration::decode(&bytes));
    let cert_verify = timed(reps, budget, || cert.verify(&ms_key));
    let active =
        ActiveConfig::verify(cert.clone(), &ms_key).context("verifying the certificate")?;
    // The certificate is cloned for each run, as `configs.rs` does; the clone is
    // included (a memcpy of the encoding, small next to the decode).
    let active_verify = timed(reps, budget, || ActiveConfig::verify(cert.clone(), &ms_key));
    let points: Vec<([u8; 32], NodeId)> = config
        .members
        .iter()
        .filter_map(|m| m.ring_position.map(|p| (p, m.node_id())))
        .collect();
    let ring_build = timed(reps, budget, || Ring::new(points.clone()));

    // Lookups: batches of 1,000 random ids; the per-lookup time of each batch.
    const BATCH: usize = 1000;
    let batches = a.lookups.div_ceil(BATCH).max(1);
    let ids: Vec<ObjectId> = (0..BATCH * batches)
        .map(|i| ObjectId(synthetic("object", i)))
        .collect();
    let group = active.group_size();
    let mut per_lookup_ns = Vec::with_capacity(batches);
    let lookup_start = Instant::now();
    for b in ids.chunks(BATCH) {
        let t = Instant::now();
        for id in b {
            let g = active.group(black_box(id));
            debug_assert_eq!(g.len(), group);
            black_box(g);
        }
        per_lookup_ns.push(t.elapsed().as_nanos() as f64 / b.len() as f64);
        if lookup_start.elapsed() >= budget {
            break;
        }
    }
    let lookups = per_lookup_ns.len() * BATCH;
    per_lookup_ns.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((p * per_lookup_ns.len() as f64).ceil() as usize).clamp(1, per_lookup_ns.len());
        per_lookup_ns[i - 1]
    };

    let push_request_bytes = push_request_len(epoch, bytes.len(), cert.signature.len());
    let push_targets = n - 1;
    let bytes_per_pusher = (push_targets * push_request_bytes) as u64;
    let links = a
        .link_gbps
        .iter()
        .map(|&g| LinkTime {
            gbps: g,
            one_pusher_s: bytes_per_pusher as f64 * 8.0 / (g * 1e9),
            one_request_ms: push_request_bytes as f64 * 8.0 / (g * 1e9) * 1e3,
        })
        .collect();
    let per_member = record_bytes as f64 / n as f64;
    // A delta on paper: the changed member records (about the average record), the
    // signature, the epoch and the new configuration's hash.
    let delta_push_bytes_paper =
        (a.max_changes as f64 * per_member).round() as usize + 96 + 8 + 32 + 16;
    Ok(Row {
        nodes: n,
        f: a.f,
        f_ms,
        ms_members: n_ms,
        config_bytes: bytes.len(),
        bytes_per_member: bytes.len() as f64 / n as f64,
        push_request_bytes,
        build_ms,
        encode,
        hash,
        share_sign,
        combine: combine_t,
        decode,
        cert_verify,
        node_cpu_per_epoch_ms: active_verify.median_ms,
        active_verify,
        ring_build,
        lookups,
        lookup_p50_ns: pct(0.5),
        lookup_p99_ns: pct(0.99),
        push_targets,
        bytes_per_pusher,
        max_pushers: n_ms,
        bytes_all_pushers: bytes_per_pusher * n_ms as u64,
        links,
        delta_push_bytes_paper,
    })
}

fn mib(b: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn ms(t: &Timing) -> String {
    if t.median_ms < 0.1 {
        format!("{:.3}", t.median_ms)
    } else if t.median_ms < 10.0 {
        format!("{:.2}", t.median_ms)
    } else {
        format!("{:.1}", t.median_ms)
    }
}

fn markdown(o: &Output) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "### Scale (scale-bench, {} run; {})\n\n",
        o.mode, o.machine
    ));
    s.push_str(
        "| nodes | MS (f_ms) | config | B/member | push request | encode ms | SHA-256 ms | share sign ms | combine ms | decode ms | ConfigCert::verify ms | ActiveConfig::verify ms | Ring::new ms | lookup p50 ns | lookup p99 ns |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &o.rows {
        s.push_str(&format!(
            "| {} | {} ({}) | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
            r.nodes,
            r.ms_members,
            r.f_ms,
            mib(r.config_bytes as u64),
            r.bytes_per_member,
            mib(r.push_request_bytes as u64),
            ms(&r.encode),
            ms(&r.hash),
            ms(&r.share_sign),
            ms(&r.combine),
            ms(&r.decode),
            ms(&r.cert_verify),
            ms(&r.active_verify),
            ms(&r.ring_build),
            r.lookup_p50_ns,
            r.lookup_p99_ns,
        ));
    }
    s.push_str("\nEpoch-change propagation as the code does it (each pushing MS member sends the whole ConfigCert to every other member):\n\n");
    let mut head = String::from("| nodes | bytes per pusher | all MS members pushing |");
    let mut rule = String::from("|---|---|---|");
    if let Some(r) = o.rows.first() {
        for l in &r.links {
            head.push_str(&format!(" one pusher at {} Gbit/s |", l.gbps));
            rule.push_str("---|");
        }
    }
    head.push_str(" node CPU per epoch (1 × verify) | delta push, on paper |\n");
    rule.push_str("---|---|\n");
    s.push_str(&head);
    s.push_str(&rule);
    for r in &o.rows {
        s.push_str(&format!(
            "| {} | {} | {} ({} pushers) |",
            r.nodes,
            mib(r.bytes_per_pusher),
            mib(r.bytes_all_pushers),
            r.max_pushers
        ));
        for l in &r.links {
            if l.one_pusher_s >= 1.0 {
                s.push_str(&format!(" {:.1} s |", l.one_pusher_s));
            } else {
                s.push_str(&format!(" {:.0} ms |", l.one_pusher_s * 1e3));
            }
        }
        s.push_str(&format!(
            " {:.1} ms | {} |\n",
            r.node_cpu_per_epoch_ms,
            mib(r.delta_push_bytes_paper as u64)
        ));
    }
    s.push_str(&format!("\n{}\n\n", o.note));
    s
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.nodes.is_empty() || a.nodes.len() > 10 {
        bail!("--nodes: 1 to 10 sizes");
    }
    let mut rows = Vec::new();
    for &n in &a.nodes {
        let t = Instant::now();
        eprintln!("scale-bench: {n} members ...");
        let r = measure(&a, n)?;
        eprintln!(
            "scale-bench: {n} members done in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        rows.push(r);
    }
    let out = Output {
        mode: a.mode.clone(),
        machine: machine(),
        note: NOTE,
        rows,
    };
    let md = markdown(&out);
    print!("{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(field_len(96), 98);
        // epoch 7 (2) + config 200 (1+2+200) + signature 96 (98) = 303; wrapped 1+2+303.
        assert_eq!(push_request_len(7, 200, 96), 306);
    }
}
