//! The node's read-only status port (plain HTTP, separate from gRPC): the status
//! page `/` ("node analyzer"), `/status.json` (the same data), and Prometheus
//! `/metrics`. The page is rendered on the server; it needs no JavaScript.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use dbqs_client::Client;
use dbqs_common::ObjectId;
use serde_json::{Value, json};

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
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.core.stats.encode(),
    )
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
    json!({
        "node": s.core.id.to_hex(),
        "epoch": cfg.epoch(),
        "f": cfg.f(),
        "group_size": cfg.group_size(),
        "quorum": cfg.quorum(),
        "ms_members": cfg.config.ms_members.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
        "members": members,
        "groups": groups,
        // Membership is static until epoch changes land: nothing moves, nobody is evicted.
        "transfers": [],
        "evictions": [],
        "requests": {"read": s.core.stats.count("read"), "write": s.core.stats.count("write"),
                     "read_timestamp": s.core.stats.count("read_timestamp")},
        "objects": s.core.store.len().ok(),
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
    let v = collect(&s).await;
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
    h.push_str("</table><h2>Transfers in flight</h2><p id=\"transfers\">none (membership is static: no epoch changes yet)</p>");
    h.push_str("<h2>Recent evictions</h2><p id=\"evictions\">none</p>");
    h.push_str(&format!(
        "<h2>Requests served</h2><p>reads {} · writes {} · timestamp reads {} · <a href=\"/metrics\">metrics</a> · <a href=\"/status.json\">status.json</a></p></body></html>",
        v["requests"]["read"], v["requests"]["write"], v["requests"]["read_timestamp"]
    ));
    Html(h)
}
