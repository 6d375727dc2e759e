//! `ms-bench`: membership-service figures against a running devnet (issue [G],
//! deliverable 2, "the MS").
//!
//! * **Freshness latency**: `dbqs_client::lease::request`, the client's own lease round
//!   (what `Client::ensure_lease` runs when its lease is missing or half spent): a fresh
//!   random nonce to every MS member over the client's mutual-TLS channels
//!   (`Membership.Freshness`), each reply's Merkle path and BLS share checked, done as
//!   soon as f_ms+1 checked replies name one epoch. One request at a time, `--rounds`
//!   measured rounds after `--warmup` unmeasured ones, bounded by `--duration-s`. A round
//!   that ends without f_ms+1 agreeing replies is an error. On the MS side each round is
//!   one PBFT-ordered `Freshness` operation per MS member (each member orders its own
//!   batch), so this is "PBFT op + share signing + client checks" end to end.
//! * **EndEpoch → ConfigCert**, from the nodes' logs (`--logs`: node.log files, or
//!   directories searched two levels deep for them, as `devnet --processes` writes
//!   DIR/nodes/*/node.log). All processes share this host's clock. Per epoch change
//!   e → e+1:
//!   - `end`: when the MS ended epoch e, as the member whose op ended it logged the
//!     reply (just after the state machine executed it): a `proposed EndEpoch …
//!     outcome=EpochEnded` line, or `submitted the combined ConfigCert epoch=e
//!     outcome=EpochEnded` when e's end was already due and waited for its own
//!     certificate. The epoch field of an EndEpoch line is not trusted (a stale
//!     EndEpoch is retried at the epoch the refusal names, so `epoch=e` may end e+1):
//!     the end of e is the last such line before e+1's first trace and after e's;
//!   - `cert_ordered`: the earliest `submitted the combined ConfigCert epoch=e+1`
//!     (outcome Certified or EpochEnded): a member combined f_ms+1 shares into the
//!     certificate, checked it, and PBFT ordered its `CertifiedEpoch` operation;
//!   - `first_adopt` / `all_adopt`: the first and the last `adopted configuration to=e+1`
//!     line (every node logs one when it has verified and durably stored the
//!     certificate), and how many nodes logged one;
//!   - `pushed`: the earliest `pushed ConfigCert epoch=e+1`, when one MS member's push to
//!     every other member finished; `pushers`: how many MS members logged such a push
//!     (each sends the whole certificate to every member; see scale-bench);
//!   - `previous_epoch_lasted`: end of e minus end of e−1.
//!
//!   All figures are milliseconds after `end`. The tool waits (bounded by
//!   `--epoch-wait-s`) until `--epochs` complete changes that started after it began are
//!   in the logs, and reports those (MS rotations included if the devnet rotates; run
//!   it with `--ms-rotation-epochs 0` for plain epoch changes).
//! * **PBFT null operation**: not measured here; `--pbft-json` adds the table of a
//!   `pbft-bench --json` run (ms/src/bin/pbft-bench.rs).
//!
//! Output: a Markdown summary on stdout (and `--markdown PATH`), `--json PATH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dbqs_bench_harness::{summarize, Summary, KEPT_ERRORS};
use dbqs_client::files::ClientSettings;
use dbqs_client::{lease, Client};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "MS figures against a running devnet: freshness latency, EndEpoch → ConfigCert")]
struct Args {
    /// The devnet's client.toml.
    #[arg(long)]
    config: PathBuf,
    /// Measured freshness rounds.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Unmeasured freshness rounds first.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Bound on the freshness phase.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Node logs: node.log files, or directories holding them (up to two levels down).
    #[arg(long)]
    logs: Vec<PathBuf>,
    /// Complete epoch changes to wait for in the logs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Bound on the wait for those epoch changes (default: (epochs + 2) epoch lengths).
    #[arg(long)]
    epoch_wait_s: Option<u64>,
    /// `quick` or `full`, recorded in the JSON.
    #[arg(long, default_value = "full")]
    mode: String,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Output of `pbft-bench --json` (the PBFT null operation, ms/src/bin/pbft-bench.rs)
    /// to tabulate beside these figures; it is not measured here.
    #[arg(long)]
    pbft_json: Option<PathBuf>,
}

/// One row of `pbft-bench --json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct PbftRow {
    replicas: usize,
    clients: usize,
    ops: u64,
    p50_us: u64,
    p99_us: u64,
    mean_us: f64,
    ops_per_s: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct PbftOut {
    #[serde(default)]
    machine: String,
    rows: Vec<PbftRow>,
}

/// The PBFT null-op table from `pbft-bench --json`.
fn pbft_markdown(p: &PbftOut) -> String {
    let mut s = format!(
        "\nPBFT null operation (pbft-bench: replicas, TLS and fsync in one process; {}):\n\n",
        p.machine
    );
    s.push_str("| replicas | clients | ops | mean ms | p50 ms | p99 ms | ops/s |\n|---|---|---|---|---|---|---|\n");
    for r in &p.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            r.replicas,
            r.clients,
            r.ops,
            r.mean_us / 1e3,
            r.p50_us as f64 / 1e3,
            r.p99_us as f64 / 1e3,
            r.ops_per_s
        ));
    }
    s
}

#[derive(Debug, Serialize)]
struct Freshness {
    ms_members: usize,
    /// f_ms+1: agreeing replies a round needs.
    need: usize,
    /// Rounds whose lease named a newer epoch than the client's configuration.
    epoch_moved: usize,
    result: Summary,
}

/// One epoch change e → e+1, milliseconds after the epoch ended.
#[derive(Debug, Clone, Serialize)]
struct EpochChange {
    from: u64,
    to: u64,
    cert_ordered_ms: Option<f64>,
    first_adopt_ms: Option<f64>,
    all_adopt_ms: Option<f64>,
    adopted_by: usize,
    pushed_ms: Option<f64>,
    /// Epoch `from` ended when its own certificate was ordered: its end was already due
    /// (f_ms+1 EndEpoch votes) before it was certified.
    ended_on_certificate: bool,
    /// How long epoch `from` lasted (its end minus the previous end), when the previous
    /// change is in the logs too.
    previous_epoch_lasted_ms: Option<f64>,
    /// MS members that pushed the certificate to every member.
    pushers: usize,
}

#[derive(Debug, Serialize)]
struct Output {
    mode: String,
    epoch_length_ms: u64,
    freshness: Freshness,
    log_files: usize,
    epoch_changes: Vec<EpochChange>,
    /// Medians over `epoch_changes`.
    median_cert_ordered_ms: Option<f64>,
    median_all_adopt_ms: Option<f64>,
    /// pbft-bench's figures, when given (`--pbft-json`).
    pbft: Option<PbftOut>,
    notes: Vec<String>,
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC timestamp as tracing writes it
/// (`2026-12-05T12:00:00.123456Z`).
fn parse_ts(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let digits: String = frac.chars().take(6).collect();
    let us = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

/// `key=value` of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Removes ANSI escape sequences (in case a log was written to a terminal).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        if esc {
            if c.is_ascii_alphabetic() {
                esc = false;
            }
        } else if c == '\u{1b}' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// The log events of one or more node logs.
#[derive(Default, Debug)]
struct Events {
    /// Every EndEpoch reply "this op ended the epoch". Its logged epoch is not used: an
    /// EndEpoch refused as stale is retried at the epoch the reply names, so a line
    /// saying `epoch=e` may end e+1.
    ended: Vec<i64>,
    /// Configuration X began when the CertifiedEpoch of X−1 ended X−1 (its end was
    /// already due, waiting for the certificate): earliest time.
    cert_ended: BTreeMap<u64, i64>,
    /// ConfigCert of epoch X ordered (outcome Certified): earliest time.
    certified: BTreeMap<u64, i64>,
    /// Configuration X adopted: one time per log line.
    adopted: BTreeMap<u64, Vec<i64>>,
    /// Push of X finished: earliest time.
    pushed: BTreeMap<u64, i64>,
    /// Pushes of X (one line per pushing MS member).
    pushers: BTreeMap<u64, usize>,
}

fn keep_min(m: &mut BTreeMap<u64, i64>, k: u64, t: i64) {
    let e = m.entry(k).or_insert(t);
    *e = (*e).min(t);
}

impl Events {
    fn add_log(&mut self, text: &str) {
        for raw in text.lines() {
            let line = strip_ansi(raw);
            let Some(ts) = line.split_whitespace().next().and_then(parse_ts) else {
                continue;
            };
            let num = |k: &str| field(&line, k).and_then(|v| v.parse::<u64>().ok());
            let ended = line.contains("outcome=EpochEnded");
            if line.contains("proposed EndEpoch") && ended {
                self.ended.push(ts);
            } else if line.contains("submitted the combined ConfigCert") {
                // Certified, or EpochEnded when the epoch's end was already due: either
                // way the op certified the epoch in the line (a stale submission retried
                // at a later epoch is refused, its signature being over another
                // configuration).
                if ended || line.contains("outcome=Certified") {
                    if let Some(e) = num("epoch") {
                        keep_min(&mut self.certified, e, ts);
                        if ended {
                            let x = self.cert_ended.entry(e + 1).or_insert(ts);
                            *x = (*x).min(ts);
                        }
                    }
                }
            } else if line.contains("adopted configuration") {
                if let Some(e) = num("to") {
                    self.adopted.entry(e).or_default().push(ts);
                }
            } else if line.contains("pushed ConfigCert") {
                if let Some(e) = num("epoch") {
                    keep_min(&mut self.pushed, e, ts);
                    *self.pushers.entry(e).or_default() += 1;
                }
            }
        }
    }

    /// Epoch changes to each configuration X that some node adopted, whose end is at
    /// or after `since_us`.
    ///
    /// The end of X−1 is the CertifiedEpoch(X−1) reply that ended it, if one did, else
    /// the last EndEpoch reply that ended an epoch before X's first trace (its
    /// certificate ordered or its first adoption) and after X−1's first trace.
    fn changes(&self, since_us: i64) -> Vec<EpochChange> {
        let mut ends = self.ended.clone();
        ends.sort();
        let first_trace = |x: u64| -> Option<i64> {
            let a = self.adopted.get(&x).and_then(|v| v.iter().min().copied());
            match (self.certified.get(&x).copied(), a) {
                (Some(c), Some(a)) => Some(c.min(a)),
                (c, a) => c.or(a),
            }
        };
        let ms = |t: Option<i64>, end: i64| t.map(|t| (t - end) as f64 / 1e3);
        let mut end_of: BTreeMap<u64, (i64, bool)> = BTreeMap::new();
        for &x in self.adopted.keys() {
            let Some(anchor) = first_trace(x) else {
                continue;
            };
            let after = x.checked_sub(1).and_then(first_trace).unwrap_or(i64::MIN);
            if let Some(&t) = self.cert_ended.get(&x) {
                end_of.insert(x, (t, true));
            } else if let Some(&t) = ends.iter().rev().find(|t| **t <= anchor && **t > after) {
                end_of.insert(x, (t, false));
            }
        }
        end_of
            .iter()
            .filter(|(_, (end, _))| *end >= since_us)
            .map(|(&x, &(end, on_cert))| {
                let adopted = &self.adopted[&x];
                EpochChange {
                    from: x - 1,
                    to: x,
                    cert_ordered_ms: ms(self.certified.get(&x).copied(), end),
                    first_adopt_ms: ms(adopted.iter().min().copied(), end),
                    all_adopt_ms: ms(adopted.iter().max().copied(), end),
                    adopted_by: adopted.len(),
                    pushed_ms: ms(self.pushed.get(&x).copied(), end),
                    ended_on_certificate: on_cert,
                    previous_epoch_lasted_ms: x
                        .checked_sub(1)
                        .and_then(|p| end_of.get(&p))
                        .map(|(p, _)| (end - p) as f64 / 1e3),
                    pushers: self.pushers.get(&x).copied().unwrap_or(0),
                }
            })
            .collect()
    }
}

/// node.log files under `paths` (files as given; directories two levels deep).
fn log_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten().take(10_000) {
            let p = e.path();
            if p.is_dir() && depth > 0 {
                walk(&p, depth - 1, out);
            } else if p.file_name().is_some_and(|n| n == "node.log") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, 2, &mut out);
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out
}

fn read_events(files: &[PathBuf]) -> Events {
    let mut ev = Events::default();
    for f in files {
        if let Ok(bytes) = std::fs::read(f) {
            ev.add_log(&String::from_utf8_lossy(&bytes));
        }
    }
    ev
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn freshness(a: &Args, client: &Client) -> Result<Freshness> {
    let deadline = Instant::now() + Duration::from_secs(a.duration_s);
    let mut lat_us = Vec::with_capacity(a.rounds);
    let mut errors = 0usize;
    let mut kept = Vec::new();
    let mut epoch_moved = 0usize;
    let (mut ms_members, mut need) = (0, 0);
    let mut measured_start = None;
    for i in 0..a.warmup + a.rounds {
        if Instant::now() >= deadline {
            break;
        }
        let measured = i >= a.warmup;
        if measured && measured_start.is_none() {
            measured_start = Some(Instant::now());
        }
        let cfg = client.config();
        let t = Instant::now();
        let r = lease::request(client, &cfg).await;
        let us = t.elapsed().as_micros() as u64;
        let refresh;
        match r {
            Ok(att) => {
                ms_members = att.ms_members;
                need = att.need;
                match att.lease {
                    Some(l) => {
                        if measured {
                            lat_us.push(us);
                            if l.epoch > cfg.epoch() {
                                epoch_moved += 1;
                            }
                        }
                        refresh = l.epoch != cfg.epoch();
                    }
                    None => {
                        if measured {
                            errors += 1;
                            if kept.len() < KEPT_ERRORS {
                                kept.push(att.error().to_string());
                            }
                        }
                        refresh = true;
                    }
                }
            }
            Err(e) => {
                if measured {
                    errors += 1;
                    if kept.len() < KEPT_ERRORS {
                        kept.push(e.to_string());
                    }
                }
                refresh = true;
            }
        }
        if refresh {
            // Not timed: adopt the newer configuration the MS vouches for.
            client.refresh_config().await;
        }
    }
    let secs = measured_start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let mut result = summarize(lat_us, errors, secs);
    result.first_errors = kept;
    Ok(Freshness {
        ms_members,
        need,
        epoch_moved,
        result,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

fn markdown(o: &Output) -> String {
    let f = &o.freshness.result;
    let mut s = format!("### MS (ms-bench, {} run)\n\n", o.mode);
    s.push_str(&format!(
        "Freshness (client lease round: nonce to all {} MS members, done at {} agreeing checked replies), one client, sequential:\n\n",
        o.freshness.ms_members, o.freshness.need
    ));
    s.push_str("| rounds | errors | rounds/s | avg ms | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|\n");
    s.push_str(&format!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        f.ops, f.errors, f.ops_per_s, f.avg_ms, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms
    ));
    for e in &f.first_errors {
        s.push_str(&format!("\n- error: {e}"));
    }
    s.push_str(&format!(
        "\nEpoch changes from the node logs ({} logs, epochs of {} ms), ms after the MS ended the epoch:\n\n",
        o.log_files, o.epoch_length_ms
    ));
    s.push_str("| epoch | ConfigCert ordered | first node adopted | push done (first MS member) | all nodes adopted | nodes | pushers | epoch `from` lasted | ended on its certificate |\n|---|---|---|---|---|---|---|---|---|\n");
    for c in &o.epoch_changes {
        s.push_str(&format!(
            "| {} → {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.from,
            c.to,
            fmt_ms(c.cert_ordered_ms),
            fmt_ms(c.first_adopt_ms),
            fmt_ms(c.pushed_ms),
            fmt_ms(c.all_adopt_ms),
            c.adopted_by,
            c.pushers,
            fmt_ms(c.previous_epoch_lasted_ms),
            if c.ended_on_certificate { "yes" } else { "no" }
        ));
    }
    s.push_str(&format!(
        "\nMedian EndEpoch → ConfigCert ordered: {} ms; → adopted by every node: {} ms.\n",
        fmt_ms(o.median_cert_ordered_ms),
        fmt_ms(o.median_all_adopt_ms)
    ));
    for n in &o.notes {
        s.push_str(&format!("\n- {n}"));
    }
    s.push('\n');
    if let Some(p) = &o.pbft {
        s.push_str(&pbft_markdown(p));
    }
    s
}

#[tokio::main]
async fn main() -> Result<()> {
    // The process-wide TLS provider, as `dbqs` installs it.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = Args::parse();
    if a.rounds == 0 || a.rounds > 1_000_000 || a.epochs > 100 {
        bail!("--rounds 1..=1000000, --epochs 0..=100");
    }
    let since = now_us();
    let settings = ClientSettings::load(&a.config)
        .with_context(|| format!("loading {}", a.config.display()))?;
    let client = Client::new(&settings);
    client.refresh_config().await;
    let epoch_length_ms = client.config().config.params.epoch_length_ms;

    let fresh = freshness(&a, &client).await?;
    eprintln!(
        "ms-bench: freshness {} rounds, avg {:.2} ms, p99 {:.2} ms, {} errors",
        fresh.result.ops, fresh.result.avg_ms, fresh.result.p99_ms, fresh.result.errors
    );

    let files = log_files(&a.logs);
    let mut notes = Vec::new();
    let mut changes = Vec::new();
    if a.epochs > 0 && !files.is_empty() {
        let wait = Duration::from_secs(
            a.epoch_wait_s
                .unwrap_or((a.epochs as u64 + 2) * epoch_length_ms.div_ceil(1000) + 5),
        );
        let deadline = Instant::now() + wait;
        let nodes = files.len();
        loop {
            changes = read_events(&files).changes(since);
            // Complete: every log shows the adoption (a change still in flight is not).
            let complete = changes.iter().filter(|c| c.adopted_by >= nodes).count();
            if complete >= a.epochs || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Changes still spreading when the wait ended are reported only if fewer than
        // `--epochs` complete ones were seen, with the nodes that adopted them so far.
        let complete = changes.iter().filter(|c| c.adopted_by >= nodes).count();
        if complete >= a.epochs {
            changes.retain(|c| c.adopted_by >= nodes);
        } else {
            notes.push(format!(
                "only {complete} of {} epoch changes reached every node within {} s",
                a.epochs,
                wait.as_secs()
            ));
        }
    } else if a.epochs > 0 {
        notes.push("no node logs given (--logs): epoch changes not measured".into());
    }
    notes.push(
        "'ConfigCert ordered' is when the first MS member's CertifiedEpoch op came back ordered \
         (after share signing, exchange, combination and a PBFT round); the certificate exists \
         a PBFT round earlier. Times are log timestamps of different processes on one host."
            .into(),
    );
    let pbft = match &a.pbft_json {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                serde_json::from_str::<PbftOut>(&text)
                    .with_context(|| format!("parsing {}", p.display()))?,
            )
        }
        None => None,
    };
    let out = Output {
        pbft,
        mode: a.mode.clone(),
        epoch_length_ms,
        log_files: files.len(),
        median_cert_ordered_ms: median(changes.iter().filter_map(|c| c.cert_ordered_ms).collect()),
        median_all_adopt_ms: median(
            changes
                .iter()
                .filter(|c| c.adopted_by >= files.len())
                .filter_map(|c| c.all_adopt_ms)
                .collect(),
        ),
        freshness: fresh,
        epoch_changes: changes,
        notes,
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
    fn timestamps_and_fields() {
        let a = parse_ts("1970-01-01T00:00:01.5Z").unwrap();
        assert_eq!(a, 1_500_000);
        let b = parse_ts("2000-03-01T00:00:00.000001Z").unwrap();
        assert_eq!(b, 951_868_800_000_001);
        let line = "2026-12-05T12:00:00.123456Z  INFO proposed EndEpoch epoch=3 outcome=EpochEnded";
        assert_eq!(field(line, "epoch"), Some("3"));
        assert_eq!(field(line, "outcome"), Some("EpochEnded"));
    }

    #[test]
    fn epoch_changes_from_logs() {
        let mut ev = Events::default();
        ev.add_log(
            "2026-12-05T11:59:55.000000Z  INFO proposed EndEpoch epoch=2 outcome=EpochEnded\n\
             2026-12-05T11:59:55.030000Z  INFO adopted configuration from=2 to=3 members=8\n\
             2026-12-05T12:00:00.000000Z  INFO proposed EndEpoch epoch=3 outcome=EpochEnded\n\
             2026-12-05T12:00:00.020000Z  INFO submitted the combined ConfigCert epoch=4 outcome=Certified\n\
             2026-12-05T12:00:00.025000Z  INFO adopted configuration from=3 to=4 members=8\n",
        );
        ev.add_log(
            "2026-12-05T12:00:00.040000Z  INFO adopted configuration from=3 to=4 members=8\n",
        );
        // A stale EndEpoch retried at epoch 4 makes epoch 4 end on its certificate.
        ev.add_log(
            "2026-12-05T12:00:00.050000Z  INFO submitted the combined ConfigCert epoch=4 outcome=EpochEnded\n\
             2026-12-05T12:00:00.090000Z  INFO adopted configuration from=4 to=5 members=8\n",
        );
        let c = ev.changes(0);
        assert_eq!(c.len(), 3);
        assert_eq!((c[1].from, c[1].to), (3, 4));
        assert_eq!(c[1].cert_ordered_ms, Some(20.0));
        assert_eq!(c[1].all_adopt_ms, Some(40.0));
        assert_eq!(c[1].adopted_by, 2);
        assert_eq!(c[1].previous_epoch_lasted_ms, Some(5000.0));
        assert!(!c[1].ended_on_certificate);
        assert_eq!((c[2].from, c[2].to), (4, 5));
        assert_eq!(c[2].first_adopt_ms, Some(40.0));
        assert_eq!(c[2].previous_epoch_lasted_ms, Some(50.0));
        assert!(c[2].ended_on_certificate);
    }
}
