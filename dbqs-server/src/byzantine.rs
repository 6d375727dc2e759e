//! Byzantine behaviours for devnet and tests. `dbqs-server run` never sets one:
//! only `devnet --byzantine` and the test harness construct a node with anything
//! but [`Behaviour::Honest`].

use std::fmt;
use std::str::FromStr;

use dbqs_common::OwnedValue;

/// How a node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Behaviour {
    #[default]
    Honest,
    /// Never answers anything.
    Silent,
    /// Acknowledges writes without storing them; serves values whose bytes were
    /// altered and timestamps raised without a valid signature.
    WrongValue,
    /// Serves the oldest validly signed version it saw (a replay of an older
    /// value, stale timestamps).
    Stale,
    /// Serves values and timestamps with forged signatures.
    BadSignature,
    /// Answers half of the clients honestly and the other half with the oldest
    /// version it saw: different answers to different clients.
    Equivocate,
}

pub const ALL_FAULTY: [Behaviour; 5] = [
    Behaviour::Silent,
    Behaviour::WrongValue,
    Behaviour::Stale,
    Behaviour::BadSignature,
    Behaviour::Equivocate,
];

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Behaviour::Honest => "honest",
            Behaviour::Silent => "silent",
            Behaviour::WrongValue => "wrong-value",
            Behaviour::Stale => "stale",
            Behaviour::BadSignature => "bad-signature",
            Behaviour::Equivocate => "equivocate",
        })
    }
}

impl FromStr for Behaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "honest" => Behaviour::Honest,
            "silent" => Behaviour::Silent,
            "wrong-value" => Behaviour::WrongValue,
            "stale" => Behaviour::Stale,
            "bad-signature" => Behaviour::BadSignature,
            "equivocate" => Behaviour::Equivocate,
            _ => {
                return Err(format!(
                    "unknown behaviour {s:?}: use silent, wrong-value, stale, bad-signature or equivocate"
                ));
            }
        })
    }
}

fn flip(b: &mut Vec<u8>) {
    match b.first_mut() {
        Some(x) => *x ^= 0xff,
        None => b.push(0x5a),
    }
}

impl Behaviour {
    /// Silent nodes never get past this.
    pub async fn before_reply(&self) {
        if *self == Behaviour::Silent {
            std::future::pending::<()>().await;
        }
    }

    pub fn remembers_first(&self) -> bool {
        matches!(
            self,
            Behaviour::Stale | Behaviour::Equivocate | Behaviour::WrongValue
        )
    }

    pub fn drops_writes(&self) -> bool {
        *self == Behaviour::WrongValue
    }

    /// The owned version shown to the peer whose key (NodeId or certificate hash)
    /// is `peer`.
    pub fn owned_reply(
        &self,
        peer: &[u8; 32],
        honest: Option<OwnedValue>,
        first_seen: impl FnOnce() -> Option<OwnedValue>,
    ) -> Option<OwnedValue> {
        match self {
            Behaviour::Stale => first_seen().or(honest),
            Behaviour::Equivocate if peer[0] & 1 == 1 => first_seen().or(honest),
            Behaviour::WrongValue => honest.or_else(first_seen),
            _ => honest,
        }
    }

    /// Alters a version as the behaviour dictates (for `Read`).
    pub fn corrupt_owned(&self, mut v: OwnedValue) -> OwnedValue {
        match self {
            Behaviour::WrongValue => flip(&mut v.value),
            Behaviour::BadSignature => v.header.signature[0] ^= 0xff,
            _ => {}
        }
        v
    }

    /// Alters a version as the behaviour dictates (for `ReadTimestamp`).
    pub fn corrupt_header(&self, mut v: OwnedValue) -> OwnedValue {
        match self {
            Behaviour::WrongValue => {
                v.header.timestamp.counter = v.header.timestamp.counter.saturating_add(1_000_000)
            }
            Behaviour::BadSignature => v.header.signature[0] ^= 0xff,
            _ => {}
        }
        v
    }

    pub fn corrupt_content(&self, mut b: Vec<u8>) -> Vec<u8> {
        if matches!(self, Behaviour::WrongValue | Behaviour::BadSignature) {
            flip(&mut b);
        }
        b
    }
}
