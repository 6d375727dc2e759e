//! The node's read-only status port (plain HTTP, separate from gRPC): the status
//! page `/` ("node analyzer"), `/status.json` (the same data), and Prometheus
//! `/metrics`. The page is rendered on the server; it needs no JavaScript.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use dbqs_client::Client;
use dbqs_common::codec::sha256;
use dbqs_common::config::Member;
use dbqs_common::{ConfigCert, Configuration, Epoch, ObjectId};
use serde_json::{Value, json};

use crate::metrics::{MsSnapshot, NodeSnapshot, TransferSnapshot};
use crate::service::NodeCore;

#[derive(Clone)]
pub struct StatusState {
    pub core: Arc<NodeCore>,
    /// A client with the node's own identity, for asking peers whether they answer.
    pub peers: Client,
}

pub fn router(state: StatusState) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(s): State<StatusState>) -> impl IntoResponse {
    if let Ok(n) = s.core.store.len() {
        s.core.stats.objects.set(n as i64);
    }
    s.core
        .stats
        .epoch
        .set(s.core.config.borrow().epoch() as i64);
    let snap = NodeSnapshot::of(&s.core);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.core.stats.encode_with(&snap),
    )
}

/// The node's lease, as the `lease` key of `/status.json`.
pub fn lease_json(snap: &NodeSnapshot) -> Value {
    let l = &snap.lease;
    json!({"epoch": l.epoch, "remaining_ms": l.remaining.as_millis() as u64,
           "renewals": l.renewals, "renewal_failures": l.renewal_failures})
}

/// The node's MS role, as the `ms_status` key of `/status.json` (null unless an MS member).
pub fn ms_json(ms: Option<&MsSnapshot>) -> Value {
    let Some(ms) = ms else {
        return Value::Null;
    };
    let pending: Vec<Value> = ms
        .pending
        .iter()
        .map(|(kind, node)| json!({"kind": kind, "node": node.map(|n| n.to_hex())}))
        .collect();
    let probes: Vec<Value> = ms
        .probes
        .iter()
        .map(|p| {
            json!({"node": p.node.to_hex(), "short": p.node.short(), "answering": p.answering,
                   "misses": p.misses, "last_rtt_us": p.last_rtt.as_micros() as u64})
        })
        .collect();
    let evictions: Vec<Value> = ms
        .evictions
        .iter()
        .map(|(epoch, n)| json!({"epoch": epoch, "node": n.to_hex(), "short": n.short()}))
        .collect();
    json!({"epoch": ms.epoch, "certified": ms.certified,
           "pending_changes": ms.pending_changes, "pending": pending,
           "end_votes": ms.end_votes, "end_votes_needed": ms.end_votes_needed,
           "view": ms.view, "view_changing": ms.view_changing, "is_primary": ms.is_primary,
           "last_executed": ms.last_executed, "stable_checkpoint": ms.stable_checkpoint,
           "engine_errors": ms.engine_errors,
           "engine_routine_rejects": ms.engine_routine_rejects, "stopped": ms.stopped,
           "evictions": evictions, "probes": probes})
}

/// The node's state transfer, as the `transfers` key of `/status.json`: the ranges still
/// to take over (the first `MAX_TRANSFER_ROWS`; `pending_ranges` counts them all) and the
/// progress counters.
pub fn transfers_json(t: &TransferSnapshot) -> Value {
    let pending: Vec<Value> = t
        .pending
        .iter()
        .map(|(r, source)| {
            json!({"start": hex::encode(r.start), "end": hex::encode(r.end),
                   "source_epoch": source})
        })
        .collect();
    json!({"pending_ranges": t.pending_ranges, "pending": pending,
           "deleted_ranges": t.deleted_ranges, "ranges_done": t.ranges_done,
           "objects_stored": t.objects_stored, "objects_listed": t.objects_listed,
           "bad_bodies": t.bad_bodies, "failures": t.failures,
           "objects_deleted": t.objects_deleted, "on_demand": t.on_demand})
}

/// Epoch changes the "recent membership changes" look back over.
pub const RECENT_EPOCHS: u64 = 8;
/// Most nodes listed per kind of change and epoch (the counts cover them all).
pub const MAX_CHANGE_ROWS: usize = 64;

/// How many members `it` yields, and the node ids (hex) of the first `MAX_CHANGE_ROWS`.
fn listed<'a>(it: impl Iterator<Item = &'a Member>) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut nodes = Vec::new();
    for m in it {
        if count < MAX_CHANGE_ROWS {
            nodes.push(m.node_id().to_hex());
        }
        count += 1;
    }
    (count, nodes)
}

/// Who joined, got a ring position, and left between two consecutive configurations
/// (members compared by key; only the listed ones are hashed into node ids).
fn changes_between(older: &Configuration, newer: &Configuration) -> Option<Value> {
    let placed_before: HashMap<_, bool> = older
        .members
        .iter()
        .map(|m| (&m.key, m.ring_position.is_some()))
        .collect();
    let in_newer: HashSet<_> = newer.members.iter().map(|m| &m.key).collect();
    let joined = newer
        .members
        .iter()
        .filter(|m| !placed_before.contains_key(&m.key));
    let placed = newer
        .members
        .iter()
        .filter(|m| m.ring_position.is_some() && placed_before.get(&m.key) == Some(&false));
    let left = older.members.iter().filter(|m| !in_newer.contains(&m.key));
    let (joined_count, joined) = listed(joined);
    let (placed_count, placed) = listed(placed);
    let (left_count, left) = listed(left);
    if joined_count + placed_count + left_count == 0 {
        return None;
    }
    Some(
        json!({"epoch": newer.epoch, "joined": joined, "joined_count": joined_count,
                "placed": placed, "placed_count": placed_count,
                "left": left, "left_count": left_count}),
    )
}

/// The membership changes over the last [`RECENT_EPOCHS`] epoch changes this node holds
/// configurations for, as the `recent_changes` key of `/status.json`: epochs
/// `from_epoch`..`to_epoch` were compared, and `changes` lists (newest first) each epoch
/// whose configuration differs from its predecessor's. `newest` is the verified current
/// configuration; `get` reads an older certificate from the node's chain. Each older
/// configuration must hash to its successor's `prev_hash`, which ties it to the verified
/// one without checking another threshold signature; the walk stops at the first
/// configuration not held (a node that joined later) or not matching (`error`).
/// Configurations do not say why a member left (removed, evicted or expired).
pub fn recent_changes(
    newest: &Configuration,
    mut get: impl FnMut(Epoch) -> Result<Option<ConfigCert>, String>,
) -> Value {
    let mut changes = Vec::new();
    let mut error = None;
    let mut older_held: Option<Configuration> = None;
    let mut from = newest.epoch;
    while from > 1 && newest.epoch - from < RECENT_EPOCHS {
        let newer = older_held.as_ref().unwrap_or(newest);
        let epoch = from - 1;
        let older = match get(epoch) {
            Ok(None) => break,
            Err(e) => {
                error = Some(format!("configuration of epoch {epoch}: {e}"));
                break;
            }
            Ok(Some(cert)) => {
                if cert.epoch != epoch || sha256(&[&cert.configuration]) != newer.prev_hash {
                    error = Some(format!(
                        "the configuration of epoch {epoch} held does not hash to epoch {}'s prev_hash",
                        newer.epoch
                    ));
                    break;
                }
                match Configuration::decode(&cert.configuration) {
                    Ok(c) => c,
                    Err(e) => {
                        error = Some(format!("configuration of epoch {epoch}: {e}"));
                        break;
                    }
                }
            }
        };
        changes.extend(changes_between(&older, newer));
        older_held = Some(older);
        from = epoch;
    }
    json!({"from_epoch": from, "to_epoch": newest.epoch, "changes": changes, "error": error})
}

/// Everything the page shows, as data.
pub async fn collect(s: &StatusState) -> Value {
    let cfg = s.core.config.borrow().clone();
    let probes: std::collections::HashMap<_, _> =
        s.peers.probe_members().await.into_iter().collect();
    let answers = |id: &dbqs_common::NodeId| matches!(probes.get(id), Some(Ok(_)));
    let members: Vec<Value> = cfg
        .ring()
        .members()
        .enumerate()
        .map(|(i, (pos, id))| {
            let m = cfg.member(id);
            let answer = match probes.get(id) {
                Some(Ok((e, d))) => {
                    json!({"ok": true, "epoch": e, "rtt_ms": d.as_secs_f64() * 1e3})
                }
                Some(Err(e)) => json!({"ok": false, "error": e.to_string()}),
                None => json!({"ok": false}),
            };
            json!({"ring": i, "node": id.to_hex(), "short": id.short(),
                   "address": m.map(|m| m.address.clone()), "ring_position": hex::encode(pos),
                   "ms": cfg.config.ms_members.contains(id), "answer": answer,
                   "this_node": *id == s.core.id})
        })
        .collect();
    let groups: Vec<Value> = cfg
        .ring()
        .members()
        .map(|(pos, id)| {
            let g = cfg.group(&ObjectId(*pos));
            let up = g.iter().filter(|n| answers(n)).count();
            json!({"range_ends_at": id.short(), "members": g.iter().map(|n| n.short()).collect::<Vec<_>>(),
                   "answering": up, "quorum": cfg.quorum(),
                   "health": if up == g.len() { "ok" } else if up >= cfg.quorum() { "degraded" } else { "unavailable" }})
        })
        .collect();
    let snap = NodeSnapshot::of(&s.core);
    json!({
        "node": s.core.id.to_hex(),
        "epoch": cfg.epoch(),
        "f": cfg.f(),
        "group_size": cfg.group_size(),
        "quorum": cfg.quorum(),
        "ms_members": cfg.config.ms_members.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
        "members": members,
        "groups": groups,
        "transfers": transfers_json(&snap.transfer),
        "recent_changes": recent_changes(&cfg.config, |e| {
            s.core.configs.get(e).map_err(|e| e.to_string())
        }),
        "requests": {"read": s.core.stats.count("read"), "write": s.core.stats.count("write"),
                     "read_timestamp": s.core.stats.count("read_timestamp")},
        "objects": s.core.store.len().ok(),
        "lease": lease_json(&snap),
        "ms_status": ms_json(snap.ms.as_ref()),
    })
}

async fn status_json(State(s): State<StatusState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        collect(&s).await.to_string(),
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(s): State<StatusState>) -> Html<String> {
    Html(render_page(&collect(&s).await))
}

/// A `u64` field of the status data (0 if absent).
fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// "yes" or "no" for a boolean field of the status data.
fn yes(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// The node's lease line of the page.
fn render_lease(h: &mut String, l: &Value) {
    let left = num(&l["remaining_ms"]);
    let held = if left > 0 {
        format!(
            "epoch <b id=\"lease-epoch\">{}</b>, <b id=\"lease-remaining\">{:.1} s</b> left",
            num(&l["epoch"]),
            left as f64 / 1e3
        )
    } else {
        "<b id=\"lease-remaining\">none running</b> (the node refuses Storage requests until it renews)".to_string()
    };
    h.push_str(&format!(
        "<p id=\"lease\" class=\"{}\">freshness lease: {} · renewals {} (failed {})</p>",
        if left > 0 { "ok" } else { "down" },
        held,
        num(&l["renewals"]),
        num(&l["renewal_failures"])
    ));
}

/// The "Membership service" section (only for MS members).
fn render_ms(h: &mut String, ms: &Value) {
    let pending: Vec<String> = ms["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let node = p["node"].as_str().map_or(String::new(), |n| {
                format!(" {}", esc(&n.chars().take(8).collect::<String>()))
            });
            format!("{}{}", esc(p["kind"].as_str().unwrap_or("")), node)
        })
        .collect();
    let shown = pending.len() as u64;
    let total = num(&ms["pending_changes"]);
    let pending = if total == 0 {
        String::new()
    } else if total > shown {
        format!(" ({}, … {} more)", pending.join(", "), total - shown)
    } else {
        format!(" ({})", pending.join(", "))
    };
    h.push_str(&format!(
        "<h2>Membership service</h2><p id=\"ms\">this node is an MS member · MS epoch <b id=\"ms-epoch\">{}</b> · certified: {} · pending changes <span id=\"ms-pending\">{}</span>{} · EndEpoch votes {} of {}</p>",
        num(&ms["epoch"]),
        yes(&ms["certified"]),
        total,
        pending,
        num(&ms["end_votes"]),
        num(&ms["end_votes_needed"])
    ));
    h.push_str(&format!(
        "<p id=\"pbft\" class=\"{}\">PBFT view <b id=\"pbft-view\">{}</b> ({}{}) · last executed <span id=\"pbft-last-executed\">{}</span> · stable checkpoint {} · engine errors {}{}</p>",
        if ms["stopped"].as_bool() == Some(true) { "down" } else if ms["view_changing"].as_bool() == Some(true) { "degraded" } else { "ok" },
        num(&ms["view"]),
        if ms["is_primary"].as_bool() == Some(true) { "primary" } else { "backup" },
        if ms["view_changing"].as_bool() == Some(true) { ", view change in progress" } else { "" },
        num(&ms["last_executed"]),
        num(&ms["stable_checkpoint"]),
        num(&ms["engine_errors"]),
        if ms["stopped"].as_bool() == Some(true) { " · <b>replica STOPPED</b>" } else { "" }
    ));
    h.push_str("<table id=\"ms-probes\"><tr><th>probed node</th><th>answers</th><th>misses in a row</th><th>last RTT</th></tr>");
    for p in ms["probes"].as_array().into_iter().flatten() {
        let ok = p["answering"].as_bool() == Some(true);
        h.push_str(&format!(
            "<tr class=\"{}\" data-probe=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{:.1} ms</td></tr>",
            if ok { "ok" } else { "down" },
            esc(p["node"].as_str().unwrap_or("")),
            esc(p["short"].as_str().unwrap_or("")),
            if ok { "yes" } else { "NO" },
            num(&p["misses"]),
            num(&p["last_rtt_us"]) as f64 / 1e3
        ));
    }
    h.push_str("</table>");
    let evictions = ms["evictions"].as_array().map_or(&[][..], |a| a.as_slice());
    if evictions.is_empty() {
        h.push_str("<p id=\"ms-evictions\">recent evictions: none since this member started</p>");
    } else {
        h.push_str(
            "<table id=\"ms-evictions\"><tr><th>evicted node</th><th>gone from epoch</th></tr>",
        );
        for e in evictions {
            h.push_str(&format!(
                "<tr class=\"down\"><td>{}</td><td>{}</td></tr>",
                esc(e["short"].as_str().unwrap_or("")),
                num(&e["epoch"])
            ));
        }
        h.push_str("</table>");
    }
}

/// The first 8 hex digits of a hex string field, escaped.
fn short_hex(v: &Value) -> String {
    esc(&v.as_str().unwrap_or("").chars().take(8).collect::<String>())
}

/// The "Transfers" section: ranges still to take over and the progress counters.
fn render_transfers(h: &mut String, t: &Value) {
    let total = num(&t["pending_ranges"]);
    h.push_str("<h2>Transfers</h2>");
    if total == 0 {
        h.push_str(
            "<p id=\"transfers\" class=\"ok\">none: every range this node serves is taken over</p>",
        );
    } else {
        h.push_str(&format!(
            "<p id=\"transfers\" class=\"degraded\"><b id=\"transfer-pending\">{total}</b> range{} to take over (a request about one of their objects first takes that object over on demand)</p>",
            if total == 1 { "" } else { "s" }
        ));
        h.push_str("<table id=\"transfer-ranges\"><tr><th>range (start, end]</th><th>from the group of epoch</th></tr>");
        let rows = t["pending"].as_array().map_or(&[][..], |a| a.as_slice());
        for r in rows {
            let (start, end) = (
                r["start"].as_str().unwrap_or(""),
                r["end"].as_str().unwrap_or(""),
            );
            let shape = match start.cmp(end) {
                std::cmp::Ordering::Less => "",
                std::cmp::Ordering::Equal => " (the whole ring)",
                std::cmp::Ordering::Greater => " (wraps)",
            };
            h.push_str(&format!(
                "<tr data-start=\"{}\" data-end=\"{}\"><td>({}…, {}…]{}</td><td>{}</td></tr>",
                esc(start),
                esc(end),
                short_hex(&r["start"]),
                short_hex(&r["end"]),
                shape,
                num(&r["source_epoch"])
            ));
        }
        h.push_str("</table>");
        let shown = rows.len() as u64;
        if total > shown {
            h.push_str(&format!(
                "<p>… and {} more ranges ({total} in all)</p>",
                total - shown
            ));
        }
    }
    h.push_str(&format!(
        "<p id=\"transfer-counters\">ranges taken over <span id=\"transfer-ranges-done\">{}</span> · objects listed by sources {} · objects stored <span id=\"transfer-objects-stored\">{}</span> (taken over on demand {}) · bad bodies {} · failed passes {} · objects deleted after moving away {} · deleted ranges remembered {}</p>",
        num(&t["ranges_done"]),
        num(&t["objects_listed"]),
        num(&t["objects_stored"]),
        num(&t["on_demand"]),
        num(&t["bad_bodies"]),
        num(&t["failures"]),
        num(&t["objects_deleted"]),
        num(&t["deleted_ranges"])
    ));
}

/// One cell of the membership changes table: short ids, and how many are not listed.
fn change_cell(c: &Value, kind: &str) -> String {
    let ids: Vec<String> = c[kind]
        .as_array()
        .into_iter()
        .flatten()
        .map(short_hex)
        .collect();
    let more = num(&c[format!("{kind}_count").as_str()]).saturating_sub(ids.len() as u64);
    if more > 0 {
        format!("{} … {more} more", ids.join(" "))
    } else {
        ids.join(" ")
    }
}

/// The "Recent membership changes" section.
fn render_changes(h: &mut String, c: &Value) {
    let (from, to) = (num(&c["from_epoch"]), num(&c["to_epoch"]));
    h.push_str("<h2>Recent membership changes</h2>");
    let changes = c["changes"].as_array().map_or(&[][..], |a| a.as_slice());
    if from >= to {
        let why = if to <= 1 {
            "none: this is the first configuration".to_string()
        } else if c["error"].is_string() {
            "unknown (below)".to_string()
        } else {
            format!("unknown: this node holds no configuration before epoch {to}")
        };
        h.push_str(&format!("<p id=\"changes\">{why}</p>"));
    } else if changes.is_empty() {
        h.push_str(&format!(
            "<p id=\"changes\">none: no member joined, was placed on the ring or left from epoch {from} to epoch {to}</p>"
        ));
    } else {
        h.push_str(&format!(
            "<p id=\"changes\">from epoch {from} to epoch {to} (a member that left was removed, evicted or expired: configurations do not say which; a member that joins gets its ring position one epoch later)</p>"
        ));
        h.push_str("<table id=\"recent-changes\"><tr><th>epoch</th><th>joined</th><th>placed on the ring</th><th>left</th></tr>");
        for ch in changes {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                num(&ch["epoch"]),
                change_cell(ch, "joined"),
                change_cell(ch, "placed"),
                change_cell(ch, "left")
            ));
        }
        h.push_str("</table>");
    }
    if let Some(e) = c["error"].as_str() {
        h.push_str(&format!(
            "<p class=\"degraded\">older epochs not shown: {}</p>",
            esc(e)
        ));
    }
}

/// The status page, from the data of [`collect`].
pub fn render_page(v: &Value) -> String {
    let mut h = String::with_capacity(8192);
    let me = v["node"].as_str().unwrap_or("");
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">");
    h.push_str("<title>dBQS node ");
    h.push_str(&esc(&me[..8.min(me.len())]));
    h.push_str("</title><style>body{font-family:sans-serif;margin:1.5em}h1{font-size:1.3em;word-break:break-all}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-family:monospace}.ok{background:#e6f5e6}.degraded{background:#fff3cd}.unavailable,.down{background:#f8d7da}</style></head><body>");
    h.push_str(&format!(
        "<h1>dBQS node <span id=\"node\">{}</span></h1><p>epoch <b id=\"epoch\">{}</b> · f = <span id=\"f\">{}</span> (groups of {}, quorums of {}) · MS of <span id=\"ms-count\">{}</span> · objects here: {}</p>",
        esc(me),
        v["epoch"],
        v["f"],
        v["group_size"],
        v["quorum"],
        v["ms_members"].as_array().map_or(0, |a| a.len()),
        v["objects"]
    ));
    render_lease(&mut h, &v["lease"]);
    h.push_str("<h2>Members</h2><table id=\"members\"><tr><th>ring</th><th>node</th><th>address</th><th>MS</th><th>answers</th></tr>");
    for m in v["members"].as_array().into_iter().flatten() {
        let ok = m["answer"]["ok"].as_bool() == Some(true);
        let ans = if ok {
            format!(
                "yes ({:.1} ms)",
                m["answer"]["rtt_ms"].as_f64().unwrap_or(0.0)
            )
        } else {
            format!("NO {}", esc(m["answer"]["error"].as_str().unwrap_or("")))
        };
        h.push_str(&format!(
            "<tr class=\"{}\" data-node=\"{}\"><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if ok { "ok" } else { "down" },
            esc(m["node"].as_str().unwrap_or("")),
            m["ring"],
            esc(m["short"].as_str().unwrap_or("")),
            if m["this_node"].as_bool() == Some(true) { " (this node)" } else { "" },
            esc(m["address"].as_str().unwrap_or("")),
            if m["ms"].as_bool() == Some(true) { "yes" } else { "" },
            ans
        ));
    }
    h.push_str("</table><h2>Groups</h2><table id=\"groups\"><tr><th>range ending at</th><th>members</th><th>answering</th><th>health</th></tr>");
    for g in v["groups"].as_array().into_iter().flatten() {
        let health = g["health"].as_str().unwrap_or("");
        let members: Vec<&str> = g["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        h.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{} of {} (quorum {})</td><td>{}</td></tr>",
            esc(health),
            esc(g["range_ends_at"].as_str().unwrap_or("")),
            esc(&members.join(" ")),
            g["answering"],
            members.len(),
            g["quorum"],
            esc(health)
        ));
    }
    h.push_str("</table>");
    if v["ms_status"].is_object() {
        render_ms(&mut h, &v["ms_status"]);
    }
    render_transfers(&mut h, &v["transfers"]);
    render_changes(&mut h, &v["recent_changes"]);
    h.push_str(&format!(
        "<h2>Requests served</h2><p>reads {} · writes {} · timestamp reads {} · <a href=\"/metrics\">metrics</a> · <a href=\"/status.json\">status.json</a></p></body></html>",
        v["requests"]["read"], v["requests"]["write"], v["requests"]["read_timestamp"]
    ));
    h
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use dbqs_common::config::Params;
    use dbqs_common::genesis::{self, NodeSpec};
    use dbqs_common::{ActiveConfig, NodeId};

    use super::*;
    use crate::configs::ConfigManager;
    use crate::lease::NodeLease;
    use crate::metrics::{LeaseSnapshot, ProbeSnapshot};
    use crate::store::ObjectStore;
    use crate::transfer::plan::Range;

    #[test]
    fn metrics_of_a_node_core_include_lease_and_config_epoch() {
        let specs: Vec<NodeSpec> = (0..4)
            .map(|i| NodeSpec {
                address: format!("127.0.0.1:{}", 9000 + i),
                ips: vec![],
            })
            .collect();
        let g = genesis::create(&specs, Params::default()).unwrap();
        let active = ActiveConfig::verify(g.cert.clone(), &g.ms_public_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(&dir.path().join("store.redb")).unwrap();
        let configs = Arc::new(
            ConfigManager::new(
                g.ms_public_key,
                store.clone(),
                g.nodes[0].key.node_id(),
                active.clone(),
            )
            .unwrap(),
        );
        let lease = Arc::new(NodeLease::default());
        lease.renewed.store(7, Ordering::Relaxed);
        lease.failed.store(1, Ordering::Relaxed);
        let core = NodeCore::new(
            g.nodes[0].key.clone(),
            configs,
            lease,
            Default::default(),
            store,
            Default::default(),
            None,
        );
        core.transfer.ranges_done.store(2, Ordering::Relaxed);
        core.transfer.objects_stored.store(40, Ordering::Relaxed);
        core.transfer.bad_bodies.store(1, Ordering::Relaxed);
        core.transfer.on_demand.store(3, Ordering::Relaxed);
        let snap = NodeSnapshot::of(&core);
        assert_eq!(snap.config_epoch, active.epoch());
        assert_eq!(snap.transfer.pending_ranges, 0);
        assert_eq!(snap.lease.remaining, Duration::ZERO);
        assert!(snap.ms.is_none());
        let text = core.stats.encode_with(&snap);
        for line in [
            "dbqs_lease_remaining_seconds 0.0",
            "dbqs_lease_epoch 0",
            "dbqs_lease_renewals_total 7",
            "dbqs_lease_renewal_failures_total 1",
            &format!("dbqs_config_epoch {}", active.epoch()),
            "dbqs_transfer_pending_ranges 0",
            "dbqs_transfer_deleted_ranges 0",
            "dbqs_transfer_ranges_done_total 2",
            "dbqs_transfer_objects_stored_total 40",
            "dbqs_transfer_objects_listed_total 0",
            "dbqs_transfer_bad_bodies_total 1",
            "dbqs_transfer_failures_total 0",
            "dbqs_transfer_objects_deleted_total 0",
            "dbqs_transfer_on_demand_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("dbqs_pbft_"), "{text}");
        let lease = lease_json(&snap);
        assert_eq!(lease["renewals"], 7);
        assert_eq!(lease["remaining_ms"], 0);
        assert!(ms_json(snap.ms.as_ref()).is_null());
        let t = transfers_json(&snap.transfer);
        assert_eq!(t["pending_ranges"], 0);
        assert_eq!(t["pending"], json!([]));
        assert_eq!(t["ranges_done"], 2);
        assert_eq!(t["on_demand"], 3);
        // At genesis there is nothing older to compare with.
        let c = recent_changes(&active.config, |e| {
            core.configs.get(e).map_err(|e| e.to_string())
        });
        assert_eq!(c["from_epoch"], active.epoch());
        assert_eq!(c["to_epoch"], active.epoch());
        assert_eq!(c["changes"], json!([]));
    }

    fn page_data(ms: Option<&MsSnapshot>) -> Value {
        let snap = NodeSnapshot {
            config_epoch: 3,
            lease: LeaseSnapshot {
                remaining: Duration::from_millis(1_200),
                epoch: 3,
                renewals: 5,
                renewal_failures: 0,
            },
            transfer: TransferSnapshot::default(),
            ms: ms.cloned(),
        };
        json!({"node": "ab".repeat(32), "epoch": 3, "f": 1, "group_size": 4, "quorum": 3,
               "ms_members": [], "members": [], "groups": [], "objects": 0,
               "requests": {"read": 0, "write": 0, "read_timestamp": 0},
               "lease": lease_json(&snap), "ms_status": ms_json(snap.ms.as_ref()),
               "transfers": transfers_json(&snap.transfer),
               "recent_changes": {"from_epoch": 3, "to_epoch": 3, "changes": [], "error": null}})
    }

    #[test]
    fn page_shows_lease_and_ms_section_only_for_members() {
        let plain = render_page(&page_data(None));
        assert!(
            plain.contains("freshness lease: epoch <b id=\"lease-epoch\">3</b>"),
            "{plain}"
        );
        assert!(plain.contains("1.2 s</b> left"), "{plain}");
        assert!(!plain.contains("Membership service"), "{plain}");

        let ms = MsSnapshot {
            epoch: 3,
            certified: true,
            pending_changes: 1,
            // Escaped on the page, whatever it holds.
            pending: vec![("<evict>", Some(NodeId([0xcd; 32])))],
            end_votes: 0,
            end_votes_needed: 3,
            view: 1,
            is_primary: false,
            last_executed: 42,
            stable_checkpoint: 40,
            probes: vec![ProbeSnapshot {
                node: NodeId([0x34; 32]),
                answering: false,
                misses: 2,
                last_rtt: Duration::from_micros(800),
            }],
            evictions: vec![(3, NodeId([0x56; 32]))],
            ..MsSnapshot::default()
        };
        let h = render_page(&page_data(Some(&ms)));
        assert!(
            h.contains("<tr class=\"down\"><td>56565656</td><td>3</td></tr>"),
            "{h}"
        );
        let quiet = render_page(&page_data(Some(&MsSnapshot::default())));
        assert!(
            quiet.contains("recent evictions: none since this member started"),
            "{quiet}"
        );
        assert!(h.contains("<h2>Membership service</h2>"), "{h}");
        assert!(
            h.contains("MS epoch <b id=\"ms-epoch\">3</b> · certified: yes"),
            "{h}"
        );
        assert!(
            h.contains("pending changes <span id=\"ms-pending\">1</span> (&lt;evict&gt; cdcdcdcd)"),
            "{h}"
        );
        assert!(!h.contains("<evict>"), "{h}");
        assert!(
            h.contains("PBFT view <b id=\"pbft-view\">1</b> (backup)"),
            "{h}"
        );
        assert!(
            h.contains("last executed <span id=\"pbft-last-executed\">42</span>"),
            "{h}"
        );
        assert!(
            h.contains("<td>34343434</td><td>NO</td><td>2</td><td>0.8 ms</td>"),
            "{h}"
        );
        // The status-page check reads `id="epoch"`: it must stay unique.
        assert_eq!(h.matches("id=\"epoch\"").count(), 1, "{h}");
    }
    #[test]
    fn page_shows_pending_ranges_and_counters() {
        let plain = render_page(&page_data(None));
        assert!(
            plain.contains("<p id=\"transfers\" class=\"ok\">none: every range this node serves is taken over</p>"),
            "{plain}"
        );
        assert!(
            plain.contains("ranges taken over <span id=\"transfer-ranges-done\">0</span>"),
            "{plain}"
        );
        assert!(!plain.contains("transfer-ranges\""), "{plain}");

        let range = |a: u8, b: u8| Range {
            start: [a; 32],
            end: [b; 32],
        };
        let t = TransferSnapshot {
            pending_ranges: 70,
            pending: vec![(range(0x11, 0x22), 2), (range(0xee, 0x05), 3)],
            deleted_ranges: 1,
            ranges_done: 4,
            objects_stored: 250,
            objects_listed: 760,
            bad_bodies: 7,
            failures: 2,
            objects_deleted: 9,
            on_demand: 5,
        };
        let j = transfers_json(&t);
        assert_eq!(j["pending"][0]["start"], "11".repeat(32));
        assert_eq!(j["pending"][0]["end"], "22".repeat(32));
        assert_eq!(j["pending"][1]["source_epoch"], 3);
        assert_eq!(j["pending_ranges"], 70);
        assert_eq!(j["bad_bodies"], 7);
        let mut v = page_data(None);
        v["transfers"] = j;
        let h = render_page(&v);
        assert!(
            h.contains("<b id=\"transfer-pending\">70</b> ranges to take over"),
            "{h}"
        );
        assert!(
            h.contains("<td>(11111111…, 22222222…]</td><td>2</td>"),
            "{h}"
        );
        assert!(
            h.contains("<td>(eeeeeeee…, 05050505…] (wraps)</td><td>3</td>"),
            "{h}"
        );
        assert!(h.contains("… and 68 more ranges (70 in all)"), "{h}");
        assert!(
            h.contains("objects stored <span id=\"transfer-objects-stored\">250</span> (taken over on demand 5) · bad bodies 7 · failed passes 2"),
            "{h}"
        );
    }

    /// A chain of configurations from the genesis one: each step applies `change` to a
    /// copy of the previous configuration and links it by `prev_hash`.
    fn chain(steps: usize, change: impl Fn(u64, &mut Configuration)) -> Vec<ConfigCert> {
        let specs: Vec<NodeSpec> = (0..4)
            .map(|i| NodeSpec {
                address: format!("127.0.0.1:{}", 9100 + i),
                ips: vec![],
            })
            .collect();
        let g = genesis::create(&specs, Params::default()).unwrap();
        let mut certs = vec![g.cert.clone()];
        let mut cfg = Configuration::decode(&g.cert.configuration).unwrap();
        for _ in 0..steps {
            let prev = certs.last().unwrap();
            cfg.prev_hash = sha256(&[&prev.configuration]);
            cfg.epoch += 1;
            change(cfg.epoch, &mut cfg);
            cfg.members.sort_by_key(|m| m.node_id());
            certs.push(ConfigCert {
                epoch: cfg.epoch,
                configuration: cfg.encode(),
                signature: Vec::new(),
            });
        }
        certs
    }

    fn newcomer(n: u8) -> Member {
        Member {
            key: dbqs_common::PublicKey([n; 32]),
            tls_cert_hash: [n; 32],
            x25519_key: [n; 32],
            address: format!("127.0.0.1:{}", 9200 + u16::from(n)),
            ring_position: None,
        }
    }

    fn changes_of(certs: &[ConfigCert]) -> Value {
        let newest = Configuration::decode(&certs.last().unwrap().configuration).unwrap();
        recent_changes(&newest, |e| {
            Ok(certs.iter().find(|c| c.epoch == e).cloned())
        })
    }

    #[test]
    fn recent_changes_name_who_joined_was_placed_and_left() {
        let gone = std::cell::Cell::new(None);
        let certs = chain(3, |epoch, cfg| match epoch {
            // Epoch 2 admits a node (no ring position yet) and loses the first member.
            2 => {
                let id = cfg.members[0].node_id();
                gone.set(Some(id));
                cfg.members.remove(0);
                cfg.ms_members.retain(|m| *m != id);
                cfg.members.push(newcomer(0xa1));
            }
            // Epoch 3 places it on the ring.
            3 => {
                for m in &mut cfg.members {
                    if m.key == newcomer(0xa1).key {
                        m.ring_position = Some([0x77; 32]);
                    }
                }
            }
            // Epoch 4 changes nothing.
            _ => {}
        });
        let c = changes_of(&certs);
        assert_eq!(c["from_epoch"], 1, "{c}");
        assert_eq!(c["to_epoch"], 4, "{c}");
        assert!(c["error"].is_null(), "{c}");
        let ch = c["changes"].as_array().unwrap();
        assert_eq!(ch.len(), 2, "{c}");
        let joined = NodeId::of(&newcomer(0xa1).key).to_hex();
        assert_eq!(ch[0]["epoch"], 3);
        assert_eq!(ch[0]["placed"], json!([joined]));
        assert_eq!(ch[0]["joined_count"], 0);
        assert_eq!(ch[1]["epoch"], 2);
        assert_eq!(ch[1]["joined"], json!([joined]));
        assert_eq!(ch[1]["left"], json!([gone.get().unwrap().to_hex()]));
        assert_eq!(ch[1]["left_count"], 1);

        let mut v = page_data(None);
        v["recent_changes"] = c;
        let h = render_page(&v);
        assert!(h.contains("<h2>Recent membership changes</h2>"), "{h}");
        assert!(h.contains("from epoch 1 to epoch 4"), "{h}");
        assert!(
            h.contains(&format!(
                "<tr><td>2</td><td>{}</td><td></td><td>{}</td></tr>",
                &joined[..8],
                gone.get().unwrap().short()
            )),
            "{h}"
        );
        assert!(
            h.contains(&format!(
                "<tr><td>3</td><td></td><td>{}</td><td></td></tr>",
                &joined[..8]
            )),
            "{h}"
        );
    }

    #[test]
    fn recent_changes_are_bounded_and_stop_where_the_chain_does() {
        // 12 epoch changes, one admission each: only the last RECENT_EPOCHS are compared.
        let certs = chain(12, |epoch, cfg| cfg.members.push(newcomer(epoch as u8)));
        let c = changes_of(&certs);
        assert_eq!(c["to_epoch"], 13, "{c}");
        assert_eq!(c["from_epoch"], 13 - RECENT_EPOCHS, "{c}");
        assert_eq!(
            c["changes"].as_array().unwrap().len(),
            RECENT_EPOCHS as usize
        );
        assert_eq!(c["changes"][0]["epoch"], 13);

        // A node that joined in epoch 11 holds nothing older.
        let c = changes_of(&certs[10..]);
        assert_eq!(c["from_epoch"], 11, "{c}");
        assert!(c["error"].is_null(), "{c}");
        let mut v = page_data(None);
        v["recent_changes"] =
            json!({"from_epoch": 13, "to_epoch": 13, "changes": [], "error": null});
        assert!(
            render_page(&v).contains("unknown: this node holds no configuration before epoch 13"),
            "{v}"
        );

        // A held configuration that does not hash to its successor's prev_hash ends the
        // walk, and says so.
        let mut bad = certs.clone();
        bad[9].configuration = bad[8].configuration.clone();
        let c = changes_of(&bad);
        assert_eq!(c["from_epoch"], 11, "{c}");
        assert!(c["error"].as_str().unwrap().contains("epoch 10"), "{c}");
        let mut v = page_data(None);
        v["recent_changes"] = c;
        let h = render_page(&v);
        assert!(h.contains("older epochs not shown: "), "{h}");

        // Nothing changed: the page says so.
        let certs = chain(2, |_, _| {});
        let mut v = page_data(None);
        v["recent_changes"] = changes_of(&certs);
        assert!(
            render_page(&v).contains(
                "none: no member joined, was placed on the ring or left from epoch 1 to epoch 3"
            ),
            "{v}"
        );
    }
}
