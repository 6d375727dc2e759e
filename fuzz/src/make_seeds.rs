//! Writes the seed corpus, `fuzz/seeds/TARGET/NAME`: valid encodings of every decoded type,
//! made with the public constructors (a 4-node `genesis::create`, certificates issued by its
//! authority, signed PBFT messages, membership snapshots after a few operations, transfer
//! plans of its ring, an MS rotation run by the MS test driver). Every seed is run through
//! its target's check, which must report that it decoded.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --features seeds --bin make-seeds [TARGET...]
//!
//! With target names, only those targets' seeds are written. Keys are random (except the
//! rotation's, which the test driver draws from a fixed seed), so each run writes different
//! bytes; a target's old seeds are removed first.

use std::path::{Path, PathBuf};

use dbqs_client::chunked::{CHUNK_BYTES, Manifest};
use dbqs_common::ActiveConfig;
use dbqs_common::certs::{AddCert, RemoveCert, RenewCert, RevokeClientCert, RotateAuthorityCert};
use dbqs_common::codec::{Writer, sha256};
use dbqs_common::config::{Configuration, Params};
use dbqs_common::genesis::{self, NodeSpec, encode_adds};
use dbqs_common::identity::{KeyPair, NodeId};
use dbqs_common::object::{ObjectId, OwnedValue, StoredObject, Timestamp};
use dbqs_fuzz::{common, ms, node, pbft};
use dbqs_ms::membership::testkit::World;
use dbqs_ms::membership::{
    FreshnessProof, MembershipApp, MembershipState, Op, OpKind, Outcome, QUERY_ROTATION, Reply,
    merkle_path, merkle_root,
};
use dbqs_ms::pbft as p;
use dbqs_ms::pbft::Application as _;
use dbqs_server::ms_rotation::TermFile;
use dbqs_server::transfer::plan::{self, Pending, Source};
use ed25519_dalek::SigningKey;

struct Seeds {
    dir: PathBuf,
    target: &'static str,
    check: fn(&[u8]) -> bool,
    count: usize,
}

impl Seeds {
    fn new(root: &Path, target: &'static str, check: fn(&[u8]) -> bool) -> Seeds {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        std::fs::create_dir_all(&dir).expect("create seed dir");
        Seeds {
            dir,
            target,
            check,
            count: 0,
        }
    }

    /// Writes `selector ‖ body` (no selector when `None`) after checking that it decodes.
    fn put(&mut self, name: &str, selector: Option<u8>, body: &[u8]) {
        let mut bytes = Vec::with_capacity(body.len() + 1);
        bytes.extend(selector);
        bytes.extend_from_slice(body);
        assert!(
            (self.check)(&bytes),
            "{}: seed {name} does not decode",
            self.target
        );
        std::fs::write(self.dir.join(name), &bytes).expect("write seed");
        self.count += 1;
    }

    fn done(self) {
        println!(
            "{}: {} seeds in {}",
            self.target,
            self.count,
            self.dir.display()
        );
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let only: Vec<String> = std::env::args().skip(1).collect();
    const TARGETS: [&str; 6] = [
        "common_decoders",
        "ms_ops",
        "pbft_messages",
        "membership_snapshot",
        "node_decoders",
        "client_manifest",
    ];
    for t in &only {
        assert!(
            TARGETS.contains(&t.as_str()),
            "no fuzz target {t}: {TARGETS:?}"
        );
    }
    let wanted = |target: &str| only.is_empty() || only.iter().any(|t| t == target);
    let specs: Vec<NodeSpec> = (0..4)
        .map(|i| NodeSpec {
            address: format!("127.0.0.1:{}", 9100 + i),
            ips: vec![],
        })
        .collect();
    let g = genesis::create(&specs, Params::default()).expect("genesis");
    let adds: Vec<AddCert> = g.nodes.iter().map(|n| n.add_cert.clone()).collect();
    let new_authority = KeyPair::from_seed([9; 32]);
    let newcomer = KeyPair::from_seed([10; 32]);
    let add = AddCert::issue(
        &g.authority,
        newcomer.public(),
        [11; 32],
        [12; 32],
        "node-5.example:9104".to_string(),
        100,
        genesis::GENESIS_NOT_AFTER_MS,
    );
    let leaving = g.nodes[0].node_id();
    let remove = RemoveCert::issue(&g.authority, leaving, 101);
    let renew = RenewCert::issue(
        &g.authority,
        g.nodes[1].node_id(),
        genesis::GENESIS_NOT_AFTER_MS + 1,
        102,
    );
    let revoke = RevokeClientCert::issue(
        &g.authority,
        g.client.owner.public(),
        g.client.client_cert.tls_cert_hash,
        103,
    );
    let rotate = RotateAuthorityCert::issue(&g.authority, &new_authority, 104);

    if wanted("common_decoders") {
        common_seeds(&root, &g, &adds, &add, &remove, &renew, &revoke, &rotate);
    }
    let ops = vec![
        ("add", OpKind::Add(add.clone())),
        ("remove", OpKind::Remove(remove.clone())),
        ("renew", OpKind::Renew(renew.clone())),
        ("revoke-client", OpKind::RevokeClient(revoke.clone())),
        ("rotate-authority", OpKind::RotateAuthority(rotate.clone())),
        ("evict", OpKind::Evict(g.nodes[2].node_id())),
        ("end-epoch", OpKind::EndEpoch { now_ms: 1_000 }),
        (
            "certified-epoch",
            OpKind::CertifiedEpoch {
                signature: g.cert.signature.as_slice().try_into().expect("96 bytes"),
            },
        ),
        (
            "freshness",
            OpKind::Freshness {
                nonces: vec![[1; 32], [2; 32], [3; 32]],
            },
        ),
        (
            "retry-handover",
            OpKind::RetryHandover {
                rotation: 2,
                attempt: 1,
            },
        ),
    ];
    if wanted("ms_ops") {
        ms_seeds(&root, &ops);
    }
    let state = MembershipState::genesis(&g.cert, &g.ms_public_key, &adds).expect("MS genesis");
    if wanted("membership_snapshot") {
        snapshot_seeds(&root, &g, state.clone(), &ops);
    }
    if wanted("pbft_messages") {
        pbft_seeds(&root, state);
    }
    if wanted("node_decoders") {
        node_seeds(&root, &g);
    }
    if wanted("client_manifest") {
        manifest_seeds(&root);
    }
}

#[allow(clippy::too_many_arguments)]
fn common_seeds(
    root: &Path,
    g: &genesis::Genesis,
    adds: &[AddCert],
    add: &AddCert,
    remove: &RemoveCert,
    renew: &RenewCert,
    revoke: &RevokeClientCert,
    rotate: &RotateAuthorityCert,
) {
    let mut s = Seeds::new(root, "common_decoders", dbqs_fuzz::common_decoders);
    s.put(
        "configuration-genesis",
        Some(common::CONFIGURATION),
        &g.cert.configuration,
    );
    // A later-looking configuration: revoked clients, a member without a ring position.
    let mut c = Configuration::decode(&g.cert.configuration).expect("genesis configuration");
    c.epoch = 2;
    c.prev_hash = [5; 32];
    c.revoked_clients = vec![[1; 32], [2; 32]];
    c.members[1].ring_position = None;
    c.normalize();
    s.put(
        "configuration-epoch2",
        Some(common::CONFIGURATION),
        &c.encode(),
    );
    s.put("config-cert", Some(common::CONFIG_CERT), &g.cert.encode());
    s.put(
        "add-cert-genesis",
        Some(common::ADD_CERT),
        &adds[0].encode(),
    );
    s.put("add-cert", Some(common::ADD_CERT), &add.encode());
    s.put("remove-cert", Some(common::REMOVE_CERT), &remove.encode());
    s.put(
        "client-cert",
        Some(common::CLIENT_CERT),
        &g.client.client_cert.encode(),
    );
    s.put("renew-cert", Some(common::RENEW_CERT), &renew.encode());
    s.put(
        "revoke-client-cert",
        Some(common::REVOKE_CLIENT_CERT),
        &revoke.encode(),
    );
    s.put(
        "rotate-authority-cert",
        Some(common::ROTATE_AUTHORITY_CERT),
        &rotate.encode(),
    );
    s.put(
        "genesis-adds",
        Some(common::GENESIS_ADDS),
        &encode_adds(adds),
    );
    s.put(
        "genesis-adds-empty",
        Some(common::GENESIS_ADDS),
        &encode_adds(&[]),
    );
    let content = b"hello, dBQS".to_vec();
    s.put(
        "object-content",
        Some(common::STORED_OBJECT),
        &StoredObject::Content(content).encode(),
    );
    let owner = &g.client.owner;
    let ts = Timestamp {
        counter: 3,
        writer: owner.public().0,
    };
    let owned = OwnedValue::sign(owner, b"name", ts, b"value".to_vec());
    assert_eq!(owned.header.id, ObjectId::owned(&owner.public(), b"name"));
    s.put(
        "object-owned",
        Some(common::STORED_OBJECT),
        &StoredObject::Owned(owned).encode(),
    );
    s.done();
}

fn ms_seeds(root: &Path, ops: &[(&str, OpKind)]) {
    let mut s = Seeds::new(root, "ms_ops", dbqs_fuzz::ms_ops);
    for (name, kind) in ops {
        let op = Op::new(1, kind.clone());
        s.put(&format!("op-{name}"), Some(ms::OP), &op.encode());
    }
    let outcomes = [
        ("queued", Outcome::Queued { changes: 2 }),
        (
            "recorded",
            Outcome::Recorded {
                votes: 1,
                needed: 2,
            },
        ),
        ("epoch-ended", Outcome::EpochEnded),
        ("certified", Outcome::Certified),
        (
            "freshness",
            Outcome::Freshness {
                root: [4; 32],
                leaf_count: 3,
            },
        ),
        (
            "rejected",
            Outcome::Rejected {
                code: 3,
                reason: "serial 7 was already used".to_string(),
            },
        ),
    ];
    for (name, outcome) in outcomes {
        let r = Reply { epoch: 4, outcome };
        s.put(&format!("reply-{name}"), Some(ms::REPLY), &r.encode());
    }
    let nonces: Vec<[u8; 32]> = (1..=5u8).map(|i| [i; 32]).collect();
    for index in [0usize, 4] {
        let proof = FreshnessProof {
            nonce: nonces[index],
            epoch: 3,
            root: merkle_root(&nonces),
            leaf_count: nonces.len() as u32,
            index: index as u32,
            path: merkle_path(&nonces, index).expect("path"),
            signature: [0; 96],
        };
        s.put(
            &format!("freshness-proof-{index}"),
            Some(ms::FRESHNESS_PROOF),
            &proof.encode(),
        );
    }
    s.done();
}

fn snapshot_seeds(
    root: &Path,
    g: &genesis::Genesis,
    mut state: MembershipState,
    ops: &[(&str, OpKind)],
) {
    let mut s = Seeds::new(root, "membership_snapshot", dbqs_fuzz::membership_snapshot);
    s.put("genesis", None, &state.encode());
    let ms_members: Vec<NodeId> = g
        .nodes
        .iter()
        .filter(|n| n.ms_share.is_some())
        .map(|n| n.node_id())
        .collect();
    // Apply the operations in turn (as MS members), snapshotting after each one accepted.
    for (i, (name, kind)) in ops.iter().enumerate() {
        if matches!(kind, OpKind::CertifiedEpoch { .. }) {
            continue; // Already certified at genesis.
        }
        let proposer = ms_members[i % ms_members.len()];
        let before = state.encode();
        state.apply(proposer, &Op::new(state.epoch(), kind.clone()));
        let after = state.encode();
        if after != before {
            s.put(&format!("after-{name}"), None, &after);
        }
    }
    // The snapshot at each stage of a rotation run by the MS test driver (8 nodes, a
    // rotation every 2 epochs): started, dealt, S chosen, handed over (the retired term's
    // state), and the new term's first state.
    let mut w = World::new(3, 8, 2);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    s.put("rotation-started", None, &w.state.encode());
    w.deal_all();
    s.put("rotation-dealt", None, &w.state.encode());
    w.check_dealings();
    s.put("rotation-chosen", None, &w.state.encode());
    let shares = w.hand_over();
    s.put("rotation-handed-over", None, &w.state.encode());
    w.take_over(shares);
    s.put("rotation-new-term", None, &w.state.encode());
    s.done();
}

/// The PBFT signature domain of the seeds (a genesis term's default).
const DOMAIN: [u8; 32] = [0; 32];

fn pbft_seeds(root: &Path, state: MembershipState) {
    let mut s = Seeds::new(root, "pbft_messages", dbqs_fuzz::pbft_messages);
    let client = SigningKey::from_bytes(&[7; 32]);
    let replicas: Vec<SigningKey> = (0..4u8)
        .map(|i| SigningKey::from_bytes(&[20 + i; 32]))
        .collect();
    let req = p::Request::sign(&client, 1, false, b"op bytes".to_vec());
    let ro = p::Request::sign(&client, 2, true, Vec::new());
    let batch = p::Batch {
        requests: vec![req.clone(), ro.clone()],
    };
    let digest = batch.digest();
    let pp = p::Signed::sign(
        p::PrePrepare {
            view: 0,
            seq: 1,
            digest,
        },
        0,
        &replicas[0],
        &DOMAIN,
    );
    let prepares: Vec<_> = (1..3u32)
        .map(|i| {
            let body = p::Prepare {
                view: 0,
                seq: 1,
                digest,
            };
            p::Signed::sign(body, i, &replicas[i as usize], &DOMAIN)
        })
        .collect();
    let commits: Vec<_> = (0..3u32)
        .map(|i| {
            let body = p::Commit {
                view: 0,
                seq: 1,
                digest,
            };
            p::Signed::sign(body, i, &replicas[i as usize], &DOMAIN)
        })
        .collect();
    let app = MembershipApp::new(state);
    let genesis_state = p::genesis_state(&app);
    let state_digest = p::state_digest(&genesis_state.stable.state);
    let checkpoints: Vec<_> = (0..3u32)
        .map(|i| {
            let body = p::Checkpoint {
                seq: 0,
                state_digest,
            };
            p::Signed::sign(body, i, &replicas[i as usize], &DOMAIN)
        })
        .collect();
    let proof = p::CheckpointProof {
        seq: 0,
        state_digest,
        votes: checkpoints.clone(),
    };
    let cert = p::PreparedCert {
        pre_prepare: pp.clone(),
        prepares: prepares.clone(),
    };
    let vc = p::Signed::sign(
        p::ViewChange {
            new_view: 1,
            stable: proof.clone(),
            prepared: vec![cert.clone()],
        },
        1,
        &replicas[1],
        &DOMAIN,
    );
    let nv_pp = p::Signed::sign(
        p::PrePrepare {
            view: 1,
            seq: 1,
            digest,
        },
        1,
        &replicas[1],
        &DOMAIN,
    );
    let nv = p::Signed::sign(
        p::NewView {
            view: 1,
            view_changes: vec![vc.clone()],
            pre_prepares: vec![nv_pp],
        },
        1,
        &replicas[1],
        &DOMAIN,
    );
    let messages = vec![
        ("request", p::Message::Request(req.clone())),
        (
            "pre-prepare",
            p::Message::PrePrepare {
                pre_prepare: pp.clone(),
                batch: batch.clone(),
            },
        ),
        ("prepare", p::Message::Prepare(prepares[0].clone())),
        ("commit", p::Message::Commit(commits[0].clone())),
        ("checkpoint", p::Message::Checkpoint(checkpoints[0].clone())),
        (
            "view-change",
            p::Message::ViewChange {
                view_change: vc,
                batches: vec![batch.clone()],
            },
        ),
        (
            "new-view",
            p::Message::NewView {
                new_view: nv,
                batches: vec![batch.clone()],
            },
        ),
        (
            "status",
            p::Message::Status(p::Signed::sign(
                p::Status {
                    view: 1,
                    view_changing: true,
                    last_executed: 5,
                    stable_seq: 0,
                },
                2,
                &replicas[2],
                &DOMAIN,
            )),
        ),
        (
            "committed-batch",
            p::Message::CommittedBatch(p::Signed::sign(
                p::CommittedBatch {
                    batch: batch.clone(),
                    commits: commits.clone(),
                },
                0,
                &replicas[0],
                &DOMAIN,
            )),
        ),
        (
            "state-transfer",
            p::Message::StateTransfer(p::Signed::sign(
                p::StateTransfer {
                    proof: proof.clone(),
                    state: genesis_state.stable.state.clone(),
                },
                3,
                &replicas[3],
                &DOMAIN,
            )),
        ),
    ];
    for (name, m) in &messages {
        s.put(&format!("message-{name}"), Some(pbft::MESSAGE), &m.encode());
    }
    // Small ones also under the tight limits.
    for (name, m) in &messages[..5] {
        s.put(
            &format!("tight-message-{name}"),
            Some(pbft::MESSAGE | pbft::TIGHT),
            &m.encode(),
        );
    }
    let reply = p::Signed::sign(
        p::Reply {
            view: 0,
            client: req.client,
            request_num: 1,
            read_only: false,
            result: b"result".to_vec(),
        },
        0,
        &replicas[0],
        &DOMAIN,
    );
    s.put("reply", Some(pbft::REPLY), &p::encode_reply(&reply));
    let entry = p::PersistedEntry {
        seq: 1,
        accepted: Some((pp.clone(), batch.clone())),
        prepared: Some((cert, batch)),
    };
    let stable = p::StableCheckpoint {
        proof,
        state: genesis_state.stable.state.clone(),
    };
    let persist_ops = [
        (
            "view",
            p::PersistOp::View {
                view: 2,
                view_changing: true,
            },
        ),
        ("entry", p::PersistOp::Entry(Box::new(entry.clone()))),
        ("stable", p::PersistOp::Stable(Box::new(stable))),
    ];
    let mut persisted = genesis_state.clone();
    s.put(
        "persistent-state-genesis",
        Some(pbft::PERSISTENT_STATE),
        &persisted.encode(),
    );
    for (name, op) in &persist_ops {
        s.put(
            &format!("persist-op-{name}"),
            Some(pbft::PERSIST_OP),
            &op.encode(),
        );
        persisted.apply(op);
    }
    persisted.apply(&p::PersistOp::Entry(Box::new(p::PersistedEntry {
        seq: 2,
        accepted: None,
        prepared: None,
    })));
    s.put(
        "persistent-state",
        Some(pbft::PERSISTENT_STATE),
        &persisted.encode(),
    );
    s.done();
}

/// The transfer plan records of the genesis ring, the MS rotation query answer at each stage
/// of a rotation, and the term files of the new MS it hands over to.
fn node_seeds(root: &Path, g: &genesis::Genesis) {
    let mut s = Seeds::new(root, "node_decoders", dbqs_fuzz::node_decoders);
    let cfg = ActiveConfig::verify(g.cert.clone(), &g.ms_public_key).expect("genesis verifies");
    let me = g.nodes[0].node_id();
    let pending = |s: &mut Seeds, name: &str, p: &Pending| {
        s.put(&format!("pending-{name}"), Some(node::PENDING), &p.encode());
    };
    pending(&mut s, "empty", &Pending::default());
    // A node rebuilding its store: everything it serves, and the whole ring deleted.
    pending(&mut s, "rebuild", &plan::rebuild_pending(&cfg, &me));
    // Ranges from their first source, regained ones (`then`), and deleted records.
    let ranges = plan::elementary_ranges(&cfg, &cfg);
    let mut p = Pending::default();
    for (i, r) in ranges.iter().enumerate() {
        match i % 3 {
            0 => {
                p.ranges.insert(*r, Source::of(1));
            }
            1 => {
                let regained = Source {
                    from: 1,
                    then: Some(3),
                };
                p.ranges.insert(*r, regained);
            }
            _ => {
                p.deleted.insert(*r);
            }
        }
    }
    pending(&mut s, "regained", &p);
    // The first version (`transfer-pending`: one source epoch per range).
    let mut w = Writer::tagged("transfer-pending");
    w.u32(p.ranges.len() as u32);
    for (r, src) in &p.ranges {
        w.fixed(&r.start).fixed(&r.end).u64(src.from);
    }
    w.u32(p.deleted.len() as u32);
    for r in &p.deleted {
        w.fixed(&r.start).fixed(&r.end);
    }
    s.put("pending-v1", Some(node::PENDING), &w.finish());

    // A rotation of the test driver's 8-node world (its second MS term starts at the
    // handover), answered as the MS answers `QUERY_ROTATION`.
    let mut w = World::new(1, 8, 2);
    let answer =
        |state: &MembershipState| MembershipApp::new(state.clone()).query(&[QUERY_ROTATION]);
    let status = |s: &mut Seeds, name: &str, w: &World| {
        let bytes = answer(&w.state);
        s.put(
            &format!("rotation-status-{name}"),
            Some(node::ROTATION_STATUS),
            &bytes,
        );
    };
    status(&mut s, "none", &w);
    while w.state.rotation().is_none() {
        w.end_epoch();
    }
    w.certify();
    status(&mut s, "started", &w);
    w.deal_all();
    status(&mut s, "dealt", &w);
    w.check_dealings();
    assert!(
        w.state.rotation().and_then(|r| r.chosen()).is_some(),
        "S is chosen"
    );
    status(&mut s, "chosen", &w);
    let shares = w.hand_over();
    let successor = w.state.retired().expect("the old MS retired");
    status(&mut s, "handed-over", &w);

    // What a new member writes before it starts the new term: its position and share in
    // the new MS, and the state the old MS retired with.
    let retired = w.state.encode();
    let mut next = MembershipState::decode(&retired).expect("the retired state decodes");
    next.take_over();
    let new_ms = next.configuration().ms_members.clone();
    for (k, id) in new_ms.iter().enumerate().take(2) {
        let term = TermFile {
            epoch: successor,
            index: k as u32,
            // The second one stands for a member that could not open its sub-share.
            share: if k == 0 {
                shares.get(id).cloned()
            } else {
                None
            },
            state: retired.clone(),
        };
        let name = if term.share.is_some() {
            "with-share"
        } else {
            "without-share"
        };
        s.put(
            &format!("term-file-{name}"),
            Some(node::TERM_FILE),
            &term.encode(),
        );
    }
    s.done();
}

/// Manifests as `chunked::store_file` writes them (the chunk ids need not exist).
fn manifest_seeds(root: &Path) {
    let mut s = Seeds::new(root, "client_manifest", dbqs_fuzz::client_manifest);
    let ids: Vec<ObjectId> = (0..4u8).map(|i| ObjectId::content(&[i])).collect();
    let chunk = CHUNK_BYTES as u32;
    let manifests = [
        ("empty", 0, chunk, 0),
        ("one-chunk", 17, chunk, 1),
        ("four-chunks", 3 * u64::from(chunk) + 1, chunk, 4),
        ("small-chunks", 10, 3, 4),
    ];
    for (name, total_bytes, chunk_bytes, n) in manifests {
        let m = Manifest {
            total_bytes,
            chunk_bytes,
            chunks: ids[..n].to_vec(),
            file_hash: sha256(&[name.as_bytes()]),
        };
        s.put(name, None, &m.encode());
    }
    s.done();
}
