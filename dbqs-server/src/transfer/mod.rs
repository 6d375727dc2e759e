//! State transfer (PROTOCOL.md, "State transfer"): after the node moves from epoch E-1 to
//! E it takes over each range it gained ([`plan::next_pending`]) from the group of epoch
//! E-1 (a range it had lost before finishing it and regained also from its older source
//! first: [`plan::Source`]): listings of (id, version) from q = 2f+1 distinct old
//! replicas, bodies from any one that listed the highest version, each body checked
//! (owner signature or content hash) before it is stored, the highest valid version
//! kept. Until a range is taken over, the node answers a request about one of its
//! objects only after taking that object over on demand ([`take_over_one`]), so a
//! client never sees an empty replica's answer.
//!
//! Bounded: the listings are merged page by page (at most q pages of `PAGE` entries
//! in memory) and bodies are stored one FetchObjects reply at a time (a reply is bounded
//! in bytes by the source), and a pass gives up after `MAX_SKIPPED_PER_PASS`
//! listed versions no source could produce. Resumable: the pending ranges are durable
//! and a range is marked done only after all its objects are stored; redoing a range is
//! harmless (the store keeps the higher version).

pub mod plan;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbqs_common::config::Member;
use dbqs_common::object::{OwnedHeader, StoredObject, Timestamp, verify_content};
use dbqs_common::{ActiveConfig, Epoch, ObjectId, OwnedValue};
use dbqs_proto::v1 as pb;
use thiserror::Error;
use tokio::sync::watch;

use crate::configs::ConfigManager;
use crate::peers::PeerChannels;
use crate::store::{ObjectStore, WriteOp};
use plan::Range;

/// Entries asked for per listing page.
pub const PAGE: u32 = 512;
/// Most bodies asked for per FetchObjects call.
pub const FETCH_BATCH: usize = 128;
/// Listed body bytes asked for per FetchObjects call (a request holds at least one
/// id). The source bounds its reply by bytes as well ([`FETCH_REPLY_MAX_BYTES`]) and
/// says how many ids it covered, so a listing that understates sizes costs only more
/// calls; one reply at a time is held in memory.
pub const FETCH_REQUEST_MAX_BYTES: u64 = 4 << 20;
/// Encoded bytes of the objects in one FetchObjects reply, past which the replica
/// stops (its first object is always included: at most one value of
/// `MAX_VALUE_BYTES`, which fits the 4 MiB + 64 KiB message limit).
pub const FETCH_REPLY_MAX_BYTES: usize = 4 << 20;
/// Pause before retrying a range that failed (sources down or not ready).
pub const RETRY_MS: u64 = 300;
/// Listed versions without a valid body from any source after which a pass fails (a
/// source listing what it cannot serve, e.g. made-up ids without end) and is retried
/// with the sources in another order.
pub const MAX_SKIPPED_PER_PASS: usize = 4_096;
/// Period of the clean-up of lost ranges.
pub const GC_INTERVAL_MS: u64 = 2_000;

/// Progress counters, for logs, status and metrics.
#[derive(Debug, Default)]
pub struct TransferStats {
    pub ranges_done: AtomicU64,
    pub objects_stored: AtomicU64,
    pub objects_listed: AtomicU64,
    pub bad_bodies: AtomicU64,
    pub failures: AtomicU64,
    /// Objects of lost ranges deleted once the newest group held them.
    pub objects_deleted: AtomicU64,
    /// Objects taken over on demand (a request came before their range was done).
    pub on_demand: AtomicU64,
}

#[derive(Debug, Error)]
pub enum TransferError {
    #[error("fewer than {need} replicas of epoch {epoch}'s group answered the listing ({why})")]
    NoQuorum {
        need: usize,
        epoch: Epoch,
        why: String,
    },
    #[error("fetching bodies failed ({0}); the range is retried")]
    FetchFailed(String),
    #[error("the node moved to another epoch")]
    EpochChanged,
    #[error("configuration of epoch {0} is not held")]
    MissingConfig(Epoch),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Orders ids in the range's own order (a wrapping range starts after `start`).
fn ring_key(r: &Range, id: &[u8; 32]) -> (bool, [u8; 32]) {
    (r.start >= r.end && *id <= r.end, *id)
}

/// A listed version: owned objects compare by (timestamp, value hash), content objects
/// have one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Listed {
    version: Option<(Timestamp, [u8; 32])>,
}

fn listed_from_proto(o: &pb::ListedObject) -> Option<(ObjectId, Listed)> {
    // `size` is a hint for sizing fetches, not part of the version.
    let id = ObjectId(o.object_id.as_slice().try_into().ok()?);
    let version = match pb::ObjectKind::try_from(o.kind).ok()? {
        pb::ObjectKind::Content => None,
        pb::ObjectKind::Owned => {
            let t = o.timestamp.as_ref()?;
            let ts = Timestamp {
                counter: t.counter,
                writer: t.writer.as_slice().try_into().ok()?,
            };
            Some((ts, o.value_hash.as_slice().try_into().ok()?))
        }
        pb::ObjectKind::Unspecified => return None,
    };
    Some((id, Listed { version }))
}

/// One source's claim about an id: (version, source index, the body size it listed).
type Candidate = (Listed, usize, u64);

/// Listed versions of a merged page, per id (in the range's order).
type Batch = BTreeMap<(bool, [u8; 32]), Vec<Candidate>>;

/// One source's listing, read page by page: (id, version, listed body size).
struct Source {
    member: Member,
    buffered: VecDeque<(ObjectId, Listed, u64)>,
    after: Option<[u8; 32]>,
    done: bool,
}

/// The node-side task: takes over pending ranges until stopped.
pub async fn run(
    configs: Arc<ConfigManager>,
    store: ObjectStore,
    peers: Arc<PeerChannels>,
    stats: Arc<TransferStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending_rx = configs.subscribe_pending();
    // Failed passes per range: each retry starts the source list at another member, so a
    // source that lists and then fails is left out of one of the retries.
    let mut attempts: BTreeMap<Range, usize> = BTreeMap::new();
    loop {
        let pending = configs.pending();
        let cfg = configs.current();
        if !pending.is_empty() {
            let started = Instant::now();
            let n = pending.ranges.len();
            tracing::info!(epoch = cfg.epoch(), ranges = n, "taking over ranges");
            let mut failed = false;
            for (r, source) in &pending.ranges {
                if *stop.borrow() {
                    return;
                }
                // A regained range (`Source::then`): its older source first; if that
                // group cannot serve it, the newer one, which finishes it at once.
                let turn = attempts.get(r).copied().unwrap_or(0);
                let mut result =
                    take_over(&configs, &store, &peers, &stats, source.from, r, turn).await;
                let mut from = source.from;
                if let (
                    Err(TransferError::NoQuorum { .. } | TransferError::FetchFailed(_)),
                    Some(t),
                ) = (&result, source.then)
                {
                    result = take_over(&configs, &store, &peers, &stats, t, r, turn).await;
                    from = t;
                }
                if result.is_err() {
                    *attempts.entry(*r).or_default() += 1;
                } else {
                    attempts.remove(r);
                }
                match result {
                    Ok(stored) => {
                        if let Err(e) = configs.complete(r, from) {
                            tracing::error!(error = %e, "cannot record a finished range");
                            failed = true;
                            break;
                        }
                        stats.ranges_done.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(stored, "range taken over");
                    }
                    Err(TransferError::EpochChanged) => break,
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, epoch = cfg.epoch(), "range not taken over yet; retrying");
                        failed = true;
                    }
                }
            }
            let now = configs.pending();
            attempts.retain(|r, _| now.ranges.contains_key(r));
            if now.is_empty() {
                tracing::info!(
                    epoch = cfg.epoch(),
                    ranges = n,
                    secs = started.elapsed().as_secs_f64(),
                    "took over every gained range"
                );
            }
            if failed {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(RETRY_MS)) => {}
                    _ = stop.changed() => return,
                }
            }
            continue;
        }
        tokio::select! {
            r = pending_rx.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Takes over the one object `id` of the pending range `range` from the group of
/// `source_epoch`, the same way as a whole range (q listings, a checked body), so that
/// the node may answer about it before the range is done (PROTOCOL.md, "State
/// transfer" 3). An id no source lists is absent: nothing is stored.
pub async fn take_over_one(
    configs: &ConfigManager,
    store: &ObjectStore,
    peers: &PeerChannels,
    stats: &TransferStats,
    source_epoch: Epoch,
    range: &Range,
    id: &ObjectId,
) -> Result<u64, TransferError> {
    debug_assert!(range.contains(&id.0));
    let turn = rand::random::<u32>() as usize;
    take_over(
        configs,
        store,
        peers,
        stats,
        source_epoch,
        &plan::just(id),
        turn,
    )
    .await
}

/// Takes over range `r` from the group of `source_epoch`. Returns the
/// number of objects stored.
async fn take_over(
    configs: &ConfigManager,
    store: &ObjectStore,
    peers: &PeerChannels,
    stats: &TransferStats,
    source_epoch: Epoch,
    r: &Range,
    turn: usize,
) -> Result<u64, TransferError> {
    let source_cert = configs
        .get(source_epoch)?
        .ok_or(TransferError::MissingConfig(source_epoch))?;
    let source = ActiveConfig::verify(source_cert, configs.ms_key())
        .map_err(|_| TransferError::MissingConfig(source_epoch))?;
    let source_epoch = source.epoch();
    let me = configs.me();
    let need = source.quorum();
    let mut candidates: Vec<Member> = source
        .group(&ObjectId(r.end))
        .into_iter()
        .filter(|n| *n != me)
        .filter_map(|n| source.member(&n).cloned())
        .collect();
    // Group order on the first pass, then starting one member further on each retry: a
    // source that lists but then fails (a fetch refused, a later page stalled) fails the
    // pass, and must not be among the first q every time (a faulty source could
    // otherwise keep the range pending for good).
    if !candidates.is_empty() {
        let k = turn % candidates.len();
        candidates.rotate_left(k);
    }
    // The first q sources whose first page arrives.
    let mut sources: Vec<Source> = Vec::new();
    let mut why = Vec::new();
    for m in candidates {
        if sources.len() == need {
            break;
        }
        let mut s = Source {
            member: m,
            buffered: VecDeque::new(),
            after: None,
            done: false,
        };
        match next_page(peers, configs, source_epoch, r, &mut s, stats).await {
            Ok(()) => sources.push(s),
            Err(e) => why.push(format!("{}: {e}", s.member.node_id().short())),
        }
    }
    if sources.len() < need {
        return Err(TransferError::NoQuorum {
            need,
            epoch: source_epoch,
            why: why.join("; "),
        });
    }
    let mut stored = 0u64;
    let mut skipped = 0usize;
    loop {
        for s in sources.iter_mut() {
            if s.buffered.is_empty() && !s.done {
                next_page(peers, configs, source_epoch, r, s, stats)
                    .await
                    .map_err(|e| TransferError::NoQuorum {
                        need,
                        epoch: source_epoch,
                        why: format!("{}: {e}", s.member.node_id().short()),
                    })?;
            }
        }
        // Every id up to the smallest last-listed id of the unfinished sources is
        // complete across all q listings.
        let bound = sources
            .iter()
            .filter(|s| !s.done)
            .filter_map(|s| s.buffered.back().map(|(id, _, _)| ring_key(r, &id.0)))
            .min();
        let mut batch: Batch = BTreeMap::new();
        for (i, s) in sources.iter_mut().enumerate() {
            while let Some((id, _, _)) = s.buffered.front() {
                let key = ring_key(r, &id.0);
                if bound.is_some_and(|b| key > b) {
                    break;
                }
                if let Some((_, l, size)) = s.buffered.pop_front() {
                    batch.entry(key).or_default().push((l, i, size));
                }
            }
        }
        if batch.is_empty() && sources.iter().all(|s| s.done && s.buffered.is_empty()) {
            return Ok(stored);
        }
        let (n, missing) =
            fetch_and_store(peers, store, stats, configs, source_epoch, &sources, batch).await?;
        stored += n;
        skipped += missing;
        if skipped > MAX_SKIPPED_PER_PASS {
            return Err(TransferError::NoQuorum {
                need,
                epoch: source_epoch,
                why: format!(
                    "the sources listed {skipped} versions none of them could produce; retried with other sources first"
                ),
            });
        }
    }
}

async fn next_page(
    peers: &PeerChannels,
    configs: &ConfigManager,
    source_epoch: Epoch,
    r: &Range,
    s: &mut Source,
    stats: &TransferStats,
) -> Result<(), String> {
    let mut c = peers
        .storage(&s.member)
        .map_err(|e| e.message().to_string())?;
    // The node's epoch now (a range keeps its source while epochs pass).
    let cfg = configs.current();
    let reply = c
        .list_range(pb::ListRangeRequest {
            epoch: cfg.epoch(),
            cert: Some(cfg.cert.to_proto()),
            start: r.start.to_vec(),
            end: r.end.to_vec(),
            after: s.after.map(|a| a.to_vec()).unwrap_or_default(),
            limit: PAGE,
            source_epoch,
        })
        .await
        .map_err(|st| format!("{:?}: {}", st.code(), st.message()))?
        .into_inner();
    let mut last = s.after.map(|a| ring_key(r, &a));
    for o in &reply.objects {
        // A listing must stay inside the range and strictly increase: anything else is
        // a faulty source.
        let Some((id, l)) = listed_from_proto(o) else {
            return Err("malformed listing".into());
        };
        let key = ring_key(r, &id.0);
        if !r.contains(&id.0) || last.is_some_and(|p| key <= p) {
            return Err("listing out of range or out of order".into());
        }
        last = Some(key);
        s.after = Some(id.0);
        s.buffered.push_back((id, l, o.size));
    }
    stats
        .objects_listed
        .fetch_add(reply.objects.len() as u64, Ordering::Relaxed);
    s.done = reply.done;
    if !reply.done && reply.objects.is_empty() {
        return Err("empty page before the end".into());
    }
    Ok(())
}

/// For each id: the bodies of the highest listed versions first; the first that checks
/// out is stored. Returns how many objects were stored or already held, and how many
/// listed versions no source produced.
///
/// Memory: one FetchObjects reply at a time (bounded in bytes by the source, and asked
/// for by listed sizes), each body stored before the next call.
async fn fetch_and_store(
    peers: &PeerChannels,
    store: &ObjectStore,
    stats: &TransferStats,
    configs: &ConfigManager,
    source_epoch: Epoch,
    sources: &[Source],
    batch: Batch,
) -> Result<(u64, usize), TransferError> {
    // Candidates per id, best version first; ids already held at that version or
    // higher (an earlier, interrupted pass) need no body.
    let mut todo: Vec<(ObjectId, Vec<Candidate>)> = Vec::new();
    let mut stored = 0u64;
    for ((_, id), mut c) in batch {
        c.sort_by_key(|x| std::cmp::Reverse(x.0));
        let id = ObjectId(id);
        let held = match store.get(&id)? {
            None => None,
            Some(StoredObject::Content(_)) => Some(Listed { version: None }),
            Some(StoredObject::Owned(v)) => Some(Listed {
                version: Some((v.header.timestamp, v.header.value_hash)),
            }),
        };
        match (held, c.first()) {
            (Some(h), Some((best, _, _))) if h >= *best => stored += 1,
            _ => todo.push((id, c)),
        }
    }
    // Round k asks each id's k-th best candidate; ids whose body checked out drop out.
    for round in 0..sources.len() {
        if todo.is_empty() {
            break;
        }
        let mut by_source: BTreeMap<usize, Vec<(ObjectId, u64)>> = BTreeMap::new();
        let mut listed: BTreeMap<ObjectId, Listed> = BTreeMap::new();
        for (id, c) in &todo {
            if let Some((l, s, size)) = c.get(round) {
                by_source.entry(*s).or_default().push((*id, *size));
                listed.insert(*id, *l);
            }
        }
        let mut done: std::collections::BTreeSet<ObjectId> = std::collections::BTreeSet::new();
        for (s, ids) in by_source {
            // A source that does not answer has not said it lacks a body: the range is
            // retried later rather than taken over without the versions it listed.
            let who = sources[s].member.node_id().short();
            let mut rest: &[(ObjectId, u64)] = &ids;
            // Each call covers at least one id, so this ends after at most ids.len() calls.
            while !rest.is_empty() {
                let n = fetch_request_len(rest);
                let chunk = &rest[..n];
                let mut c = peers
                    .storage(&sources[s].member)
                    .map_err(|e| TransferError::FetchFailed(format!("{who}: {}", e.message())))?;
                let reply = c
                    .fetch_objects(pb::FetchObjectsRequest {
                        epoch: configs.epoch(),
                        ids: chunk.iter().map(|(i, _)| i.0.to_vec()).collect(),
                        source_epoch,
                    })
                    .await
                    .map_err(|st| {
                        TransferError::FetchFailed(format!(
                            "{who}: {:?}: {}",
                            st.code(),
                            st.message()
                        ))
                    })?
                    .into_inner();
                // 0 is a replica that bounds nothing (all ids considered).
                let considered = match reply.considered as usize {
                    0 => n,
                    k => k.min(n),
                };
                let covered = &chunk[..considered];
                // A source that stops its reply short of the byte bound (or lists sizes
                // its bodies do not have) would make us ask for one id per call: it fails
                // the pass like a source that does not answer, and the retry starts from
                // another source. An honest reply stops early only when the next body
                // would take it past FETCH_REPLY_MAX_BYTES.
                let body_bytes: u64 = reply.objects.iter().map(body_len).sum();
                if considered < n
                    && (reply.objects.is_empty()
                        || body_bytes.saturating_add(chunk[considered].1)
                            <= (FETCH_REPLY_MAX_BYTES / 2) as u64)
                {
                    return Err(TransferError::FetchFailed(format!(
                        "{who}: stopped its reply after {considered} of {n} ids with {body_bytes} bytes"
                    )));
                }
                for o in reply.objects {
                    let op = match checked(&o) {
                        Some(op) if covered.iter().any(|(i, _)| *i == op.id()) => op,
                        _ => {
                            stats.bad_bodies.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let id = op.id();
                    // The body must be at least the version that was listed: a source
                    // listing a high version it cannot produce must not make us keep a
                    // lower one from it while better copies exist elsewhere, but a
                    // correct source that took a newer (validly signed) write since it
                    // listed is as good.
                    let wanted = listed.get(&id).copied();
                    if wanted == Some(version_of(&op))
                        && covered
                            .iter()
                            .any(|(i, size)| *i == id && *size != body_len(&o))
                    {
                        return Err(TransferError::FetchFailed(format!(
                            "{who}: listed another size for object {}",
                            id.to_hex()
                        )));
                    }
                    if done.contains(&id) || !wanted.is_some_and(|l| at_least(version_of(&op), l)) {
                        continue;
                    }
                    store_transferred(store, configs, op).await?;
                    done.insert(id);
                    stored += 1;
                    stats.objects_stored.fetch_add(1, Ordering::Relaxed);
                }
                rest = &rest[considered..];
            }
        }
        todo.retain(|(id, _)| !done.contains(id));
    }
    if !todo.is_empty() {
        // Every source that listed these versions answered the fetch without a valid
        // body for them. A correct old replica among the q lists every acknowledged
        // version and serves its body, so this only happens when every holder of an
        // unacknowledged version lied or lost it; those versions were never
        // acknowledged and are not needed.
        tracing::warn!(
            objects = todo.len(),
            "listed versions without a valid body from any source were skipped"
        );
    }
    Ok((stored, todo.len()))
}

/// The body size of a fetched object, as a listing states it (content bytes, or an
/// owned value's bytes).
fn body_len(o: &pb::FetchedObject) -> u64 {
    match &o.object {
        Some(pb::fetched_object::Object::Content(b)) => b.len() as u64,
        Some(pb::fetched_object::Object::Owned(v)) => v.value.len() as u64,
        None => 0,
    }
}

/// How many of `ids` (with their listed sizes) go into the next FetchObjects call: at
/// most [`FETCH_BATCH`], at most [`FETCH_REQUEST_MAX_BYTES`] of listed sizes, at least one.
fn fetch_request_len(ids: &[(ObjectId, u64)]) -> usize {
    let mut n = 0;
    let mut bytes = 0u64;
    while n < ids.len() && n < FETCH_BATCH {
        let next = bytes.saturating_add(ids[n].1);
        if n > 0 && next > FETCH_REQUEST_MAX_BYTES {
            break;
        }
        bytes = next;
        n += 1;
    }
    n
}

/// Stores a checked body. Not fenced by the epoch the transfer started in: a validly
/// signed version may always be stored if it is higher, and a range being taken over
/// is never deleted meanwhile (`ConfigManager::record_deleted` refuses pending ranges).
async fn store_transferred(
    store: &ObjectStore,
    configs: &ConfigManager,
    op: WriteOp,
) -> Result<(), TransferError> {
    for _ in 0..3 {
        match store.write(configs.epoch(), op.clone()).await {
            Ok(_) => return Ok(()),
            Err(crate::store::StoreError::EpochChanged { .. }) => continue,
            Err(e) => return Err(TransferError::Store(e)),
        }
    }
    Err(TransferError::EpochChanged)
}

/// Whether `got` is the same kind of object as `listed` and at least as new.
fn at_least(got: Listed, listed: Listed) -> bool {
    match (got.version, listed.version) {
        (None, None) => true,
        (Some(g), Some(l)) => g >= l,
        _ => false,
    }
}

fn version_of(op: &WriteOp) -> Listed {
    match op {
        WriteOp::Content { .. } => Listed { version: None },
        WriteOp::Owned(v) => Listed {
            version: Some((v.header.timestamp, v.header.value_hash)),
        },
    }
}

/// A fetched body as a write, if it checks out (owner signature and value hash, or the
/// content hash).
fn checked(o: &pb::FetchedObject) -> Option<WriteOp> {
    let id = ObjectId(o.object_id.as_slice().try_into().ok()?);
    match o.object.as_ref()? {
        pb::fetched_object::Object::Content(b) => {
            verify_content(&id, b).ok()?;
            Some(WriteOp::Content {
                id,
                bytes: b.clone(),
            })
        }
        pb::fetched_object::Object::Owned(v) => {
            let v = OwnedValue::from_proto(v).ok()?;
            (v.header.id == id).then_some(WriteOp::Owned(v))
        }
    }
}

/// Listing entry for a stored object.
pub fn listed_to_proto(id: &ObjectId, o: &dbqs_common::object::StoredObject) -> pb::ListedObject {
    match o {
        dbqs_common::object::StoredObject::Content(b) => pb::ListedObject {
            object_id: id.0.to_vec(),
            kind: pb::ObjectKind::Content as i32,
            timestamp: None,
            value_hash: Vec::new(),
            size: b.len() as u64,
        },
        dbqs_common::object::StoredObject::Owned(v) => {
            let h: &OwnedHeader = &v.header;
            pb::ListedObject {
                object_id: id.0.to_vec(),
                kind: pb::ObjectKind::Owned as i32,
                timestamp: Some(pb::Timestamp {
                    counter: h.timestamp.counter,
                    writer: h.timestamp.writer.to_vec(),
                }),
                value_hash: h.value_hash.to_vec(),
                size: v.value.len() as u64,
            }
        }
    }
}

/// Deletes the ranges this node no longer serves once every member of their newest group
/// reports that it holds them (PROTOCOL.md, "State transfer" 4 asks for 2f+1; see
/// docs/transfer.md for why all). The deletion is recorded first, so the node never
/// lists a range it no longer holds. A range still pending here that the node no longer
/// serves is dropped the same way: once the newest group holds it, nobody needs this
/// node's copy, and its old sources may already have deleted it. Runs until stopped.
pub async fn collect_garbage(
    configs: Arc<ConfigManager>,
    store: ObjectStore,
    peers: Arc<PeerChannels>,
    stats: Arc<TransferStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(GC_INTERVAL_MS)) => {}
            _ = stop.changed() => return,
        }
        let cfg = configs.current();
        let me = configs.me();
        let current = plan::elementary_ranges(&cfg, &cfg);
        let pending = configs.pending();
        // Pending ranges no part of which this node serves any more.
        for p in pending.ranges.keys() {
            let parts: Vec<&Range> = current.iter().filter(|r| r.overlaps(p)).collect();
            if parts.iter().any(|r| cfg.in_group(&ObjectId(r.end), &me)) {
                continue;
            }
            let mut held = true;
            for r in &parts {
                if !newest_group_holds(&cfg, &peers, r).await {
                    held = false;
                    break;
                }
            }
            if !held {
                continue;
            }
            if let Err(e) = configs.drop_pending(cfg.epoch(), p) {
                tracing::debug!(error = %e, "clean-up: pending range not dropped");
                continue;
            }
            match store.delete_range(cfg.epoch(), &p.start, &p.end) {
                Ok(n) => {
                    stats.objects_deleted.fetch_add(n, Ordering::Relaxed);
                    tracing::info!(
                        objects = n,
                        epoch = cfg.epoch(),
                        "dropped a range this node no longer serves before taking it over; the newest group holds it"
                    );
                }
                Err(crate::store::StoreError::EpochChanged { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "clean-up: delete failed"),
            }
        }
        let pending = configs.pending();
        for r in current {
            if cfg.in_group(&ObjectId(r.end), &me) || pending.overlaps(&r) {
                continue;
            }
            match store.any_in_range(&r.start, &r.end) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "clean-up: cannot read the store");
                    break;
                }
            }
            if !newest_group_holds(&cfg, &peers, &r).await {
                continue;
            }
            if let Err(e) = configs.record_deleted(cfg.epoch(), &r) {
                tracing::debug!(error = %e, "clean-up: cannot record the deletion");
                continue;
            }
            match store.delete_range(cfg.epoch(), &r.start, &r.end) {
                Ok(n) => {
                    stats.objects_deleted.fetch_add(n, Ordering::Relaxed);
                    tracing::info!(
                        objects = n,
                        epoch = cfg.epoch(),
                        "deleted a range the newest group holds"
                    );
                }
                Err(crate::store::StoreError::EpochChanged { .. }) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "clean-up: delete failed");
                    break;
                }
            }
        }
    }
}

/// Whether every member of range `r`'s group in `cfg` reports, in `cfg`'s epoch, that it
/// serves `r` and holds it completely. Every member, not just 2f+1: a member still
/// taking the range over may need the asking node as its source (see docs/transfer.md).
async fn newest_group_holds(cfg: &ActiveConfig, peers: &PeerChannels, r: &Range) -> bool {
    for n in cfg.group(&ObjectId(r.end)) {
        let Some(m) = cfg.member(&n) else {
            return false;
        };
        let Ok(mut c) = peers.storage(m) else {
            return false;
        };
        let complete = match c
            .range_status(pb::RangeStatusRequest {
                epoch: cfg.epoch(),
                start: r.start.to_vec(),
                end: r.end.to_vec(),
            })
            .await
        {
            Ok(reply) => {
                let reply = reply.into_inner();
                reply.epoch == cfg.epoch() && reply.complete
            }
            Err(_) => false,
        };
        if !complete {
            return false;
        }
    }
    true
}
