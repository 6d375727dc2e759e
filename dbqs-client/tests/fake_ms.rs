//! The client's freshness lease and `admin::submit` against fake MS members served over
//! real mutual TLS on loopback. The fakes answer `Freshness` by the byte layout documented
//! in membership.proto (built here independently of the client's checker), and can be told
//! to misbehave; they are not the real MS, so these tests check the client's side only.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use blsttc::SecretKeyShare;
use dbqs_client::admin::{self, AdminError};
use dbqs_client::lease::LeaseError;
use dbqs_client::{Client, ClientError, ClientIdentity};
use dbqs_common::codec::{Writer, sha256};
use dbqs_common::config::Params;
use dbqs_common::genesis::{self, NodeSpec};
use dbqs_common::{ActiveConfig, NodeId};
use dbqs_proto::v1 as pb;
use dbqs_proto::v1::membership_server::{Membership, MembershipServer};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fresh {
    /// A correct reply for the fake's epoch.
    Honest,
    /// Signs another epoch than the one it names.
    WrongShare,
    /// Names another node than itself.
    OtherNode,
    /// Answers UNAVAILABLE.
    Down,
    /// Answers UNAVAILABLE, but only once an honest member of the cluster has answered and
    /// 200 ms more have passed, so the client has counted that honest reply before this
    /// failure makes a lease impossible.
    DownAfterHonest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    Accept,
    Refuse,
    NotMs,
    Down,
}

struct Fake {
    id: NodeId,
    /// 1-based MS position.
    position: u32,
    share: SecretKeyShare,
    epoch: u64,
    fresh: Fresh,
    sub: Sub,
    cert: pb::ConfigCert,
    submits: Arc<AtomicUsize>,
    /// Set once any honest member has answered a freshness request.
    honest_answered: Arc<AtomicBool>,
}

fn tagged(kind: &str) -> Vec<u8> {
    Writer::tagged(kind).finish()
}

#[tonic::async_trait]
impl Membership for Fake {
    async fn get_config(
        &self,
        _: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigReply>, Status> {
        Ok(Response::new(pb::GetConfigReply {
            cert: Some(self.cert.clone()),
            members: vec![],
            f: 1,
            lease_ms: 4_000,
        }))
    }

    type WatchConfigsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::GetConfigReply, Status>> + Send>>;

    async fn watch_configs(
        &self,
        _: Request<pb::WatchConfigsRequest>,
    ) -> Result<Response<Self::WatchConfigsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        if req.get_ref().cert.is_none() {
            return Err(Status::invalid_argument("no certificate"));
        }
        match self.sub {
            Sub::Accept => Ok(Response::new(pb::SubmitReply {
                epoch: self.epoch,
                queued_changes: 1,
                epoch_ended: false,
            })),
            Sub::Refuse => Err(Status::failed_precondition("serial 5 was already used")),
            Sub::NotMs => Err(Status::failed_precondition("not an MS member")),
            Sub::Down => Err(Status::unavailable("not ordered in time")),
        }
    }

    async fn freshness(
        &self,
        req: Request<pb::FreshnessRequest>,
    ) -> Result<Response<pb::FreshnessReply>, Status> {
        if self.fresh == Fresh::Down {
            return Err(Status::unavailable("down"));
        }
        if self.fresh == Fresh::DownAfterHonest {
            // Bounded wait: 3 s at most, then fail anyway.
            for _ in 0..300 {
                if self.honest_answered.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(Status::unavailable("down"));
        }
        let nonce = &req.get_ref().nonce;
        if nonce.len() != 32 {
            return Err(Status::invalid_argument("nonce"));
        }
        // A batch of two: the requester's nonce at index 0, someone else's at 1.
        let other = [0xab; 32];
        let leaf = |n: &[u8]| sha256(&[&tagged("freshness-leaf"), n]);
        let top = sha256(&[&tagged("freshness-node"), &leaf(nonce), &leaf(&other)]);
        let root = sha256(&[&tagged("freshness-root"), &2u32.to_be_bytes(), &top]);
        let signed_epoch = if self.fresh == Fresh::WrongShare {
            self.epoch + 1
        } else {
            self.epoch
        };
        let mut msg = tagged("freshness");
        msg.extend_from_slice(&signed_epoch.to_be_bytes());
        msg.extend_from_slice(&root);
        let node_id = if self.fresh == Fresh::OtherNode {
            vec![7; 32]
        } else {
            self.id.0.to_vec()
        };
        if self.fresh == Fresh::Honest {
            self.honest_answered.store(true, Ordering::SeqCst);
        }
        Ok(Response::new(pb::FreshnessReply {
            epoch: self.epoch,
            root: root.to_vec(),
            leaf_count: 2,
            index: 0,
            path: vec![leaf(&other).to_vec()],
            share: self.share.sign(&msg).to_bytes().to_vec(),
            share_index: self.position,
            node_id,
        }))
    }

    async fn freshness_share(
        &self,
        _: Request<pb::FreshnessShareRequest>,
    ) -> Result<Response<pb::FreshnessShareReply>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn config_share(
        &self,
        _: Request<pb::ConfigShareRequest>,
    ) -> Result<Response<pb::ConfigShareReply>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

struct Cluster {
    client: Client,
    /// Submit calls each fake received, in MS-list order.
    submits: Vec<Arc<AtomicUsize>>,
}

/// Four nodes, all MS members (f_ms = 1, so a lease needs 2 matching replies). The
/// member at MS position i (0-based) behaves as `behaviour[i]`.
async fn cluster(behaviour: [(Fresh, Sub, u64); 4]) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut listeners = Vec::new();
    let mut specs = Vec::new();
    for _ in 0..4 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        specs.push(NodeSpec {
            address: l.local_addr().unwrap().to_string(),
            ips: vec![],
        });
        listeners.push(l);
    }
    let g = genesis::create(&specs, Params::default()).unwrap();
    let active = ActiveConfig::verify(g.cert.clone(), &g.ms_public_key).unwrap();
    assert_eq!(active.config.ms_members.len(), 4);
    let submits: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let honest_answered = Arc::new(AtomicBool::new(false));
    for (n, listener) in g.nodes.iter().zip(listeners) {
        let (pos, share) = n.ms_share.clone().unwrap();
        assert_eq!(active.config.ms_members[pos], n.node_id());
        let (fresh, sub, epoch) = behaviour[pos];
        let counter = submits[pos].clone();
        let fake = Fake {
            id: n.node_id(),
            position: pos as u32 + 1,
            share,
            epoch,
            fresh,
            sub,
            cert: g.cert.to_proto(),
            submits: counter,
            honest_answered: honest_answered.clone(),
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&n.tls.cert_pem, &n.tls.key_pem))
            .client_ca_root(Certificate::from_pem(&g.ca.cert_pem));
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(MembershipServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
    }
    let client = Client::with_identity(
        g.ms_public_key,
        active,
        ClientIdentity {
            ca_pem: g.ca.cert_pem.clone(),
            tls_cert_pem: g.client.tls.cert_pem.clone(),
            tls_key_pem: g.client.tls.key_pem.clone(),
        },
        Some(g.client.owner.clone()),
        Duration::from_secs(3),
    );
    Cluster { client, submits }
}

#[tokio::test]
async fn a_lease_needs_f_ms_plus_one_valid_replies_and_ignores_forged_ones() {
    let c = cluster([
        (Fresh::WrongShare, Sub::Accept, 1),
        (Fresh::Honest, Sub::Accept, 1),
        (Fresh::OtherNode, Sub::Accept, 1),
        (Fresh::Honest, Sub::Accept, 1),
    ])
    .await;
    assert!(c.client.lease().is_none());
    let l = c.client.ensure_lease().await.unwrap();
    assert_eq!(l.epoch, 1);
    let (epoch, remaining) = c.client.lease().unwrap();
    assert_eq!(epoch, 1);
    // lease_ms 10 s by default, over 1.01.
    assert!(remaining <= Duration::from_millis(9_901) && remaining > Duration::from_secs(8));
    // Held and fresh: no new request.
    assert_eq!(c.client.ensure_lease().await.unwrap(), l);
}

#[tokio::test]
async fn too_few_valid_replies_give_no_lease_and_operations_fail_clearly() {
    let c = cluster([
        (Fresh::WrongShare, Sub::Accept, 1),
        (Fresh::Honest, Sub::Accept, 1),
        (Fresh::OtherNode, Sub::Accept, 1),
        (Fresh::DownAfterHonest, Sub::Accept, 1),
    ])
    .await;
    let e = c.client.ensure_lease().await.unwrap_err();
    assert!(
        matches!(
            e,
            LeaseError::NotEnough {
                need: 2,
                have: 1,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("no freshness lease: fewer than f_ms+1 MS members answered"),
        "{msg}"
    );
    let err = c.client.put(b"x", b"v".to_vec()).await.unwrap_err();
    assert!(matches!(err, ClientError::Lease { .. }), "{err}");
    assert!(err.to_string().contains("no freshness lease"), "{err}");
    assert!(c.client.lease().is_none());
}

#[tokio::test]
async fn a_lease_on_an_epoch_nobody_can_prove_is_not_used() {
    // Two members vouch (validly signed) for epoch 2, but every node only holds the
    // certificate of epoch 1.
    let c = cluster([
        (Fresh::Honest, Sub::Accept, 2),
        (Fresh::Honest, Sub::Accept, 2),
        (Fresh::Down, Sub::Accept, 1),
        (Fresh::Down, Sub::Accept, 1),
    ])
    .await;
    let e = c.client.ensure_lease().await.unwrap_err();
    assert!(
        matches!(e, LeaseError::Unproven { lease: 2, ours: 1 }),
        "{e}"
    );
    assert_eq!(c.client.config().epoch(), 1);
}

fn remove_request() -> pb::SubmitRequest {
    let auth = dbqs_common::KeyPair::generate();
    admin::remove_request(&admin::issue_remove(&auth, NodeId([1; 32])))
}

#[tokio::test]
async fn submit_tries_members_in_turn_until_one_answers_definitely() {
    let c = cluster([
        (Fresh::Honest, Sub::Down, 1),
        (Fresh::Honest, Sub::NotMs, 1),
        (Fresh::Honest, Sub::Accept, 1),
        (Fresh::Honest, Sub::Accept, 1),
    ])
    .await;
    let out = admin::submit_with(&c.client, remove_request())
        .await
        .unwrap();
    let third = c.client.config().config.ms_members[2];
    assert_eq!(out.answered_by, third.to_hex());
    assert_eq!(
        (out.epoch, out.queued_changes, out.epoch_ended),
        (1, 1, false)
    );
    let calls: Vec<usize> = c.submits.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    assert_eq!(
        calls,
        vec![1, 1, 1, 0],
        "stops at the first definite answer"
    );
}

#[tokio::test]
async fn a_refusal_is_final_and_names_the_reason() {
    let c = cluster([
        (Fresh::Honest, Sub::Down, 1),
        (Fresh::Honest, Sub::Refuse, 1),
        (Fresh::Honest, Sub::Accept, 1),
        (Fresh::Honest, Sub::Accept, 1),
    ])
    .await;
    let e = admin::submit_with(&c.client, remove_request())
        .await
        .unwrap_err();
    match &e {
        AdminError::Refused { code, reason, .. } => {
            assert_eq!(*code, tonic::Code::FailedPrecondition);
            assert!(reason.contains("serial 5 was already used"), "{reason}");
            assert!(reason.contains("probably queued"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(c.submits[2].load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn submit_fails_clearly_when_no_member_answers() {
    let c = cluster([
        (Fresh::Honest, Sub::Down, 1),
        (Fresh::Honest, Sub::Down, 1),
        (Fresh::Honest, Sub::NotMs, 1),
        (Fresh::Honest, Sub::Down, 1),
    ])
    .await;
    let e = admin::submit_with(&c.client, remove_request())
        .await
        .unwrap_err();
    assert!(matches!(e, AdminError::NoAnswer { count: 4, .. }), "{e}");
}
