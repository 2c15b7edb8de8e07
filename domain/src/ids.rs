//! Identifiers: newtypes over UUIDs, so a job id can never be passed where a dispute id is due.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// A person or organisation with an API key: a client, a worker, an arbiter…
    PartyId
);
id_type!(
    /// A job posted by a client; its escrow has the same id.
    JobId
);
id_type!(
    /// A challenge against one verified task.
    ChallengeId
);
id_type!(
    /// A dispute before an arbiter.
    DisputeId
);
id_type!(
    /// A captured deposit. Derived from the provider and its reference, so that recording the
    /// same capture twice lands on the same aggregate.
    DepositId
);
id_type!(
    /// Money leaving the platform: a worker payout or a refund to a client's payment method.
    PayoutId
);

impl DepositId {
    /// The deposit id for a provider's own reference: a name-based UUID (SHA-256, RFC 9562
    /// version 8 layout), stable across processes and languages.
    pub fn for_external_reference(provider: crate::ledger::Provider, external_ref: &str) -> DepositId {
        DepositId(name_uuid(&["deposit", provider.code(), external_ref]))
    }
}

/// A name-based UUID: the first 16 bytes of SHA-256 over the length-prefixed parts, with the
/// version (8) and variant bits set. Used wherever an id must be derived, not drawn.
pub fn name_uuid(parts: &[&str]) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}
