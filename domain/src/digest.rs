//! SHA-256 digests (hex on the wire) and the commit-then-reveal commitment.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::ids::{JobId, PartyId};

/// A SHA-256 digest: of a result manifest, an input, a commitment, a salt.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Digest, DigestError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestError(s.chars().take(80).collect()))?;
        Ok(Digest(out))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 digest (64 hex digits): {0:?}")]
pub struct DigestError(pub String);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The commitment a worker sends before revealing its result:
/// `SHA-256("dscm-commit-v1" ‖ job ‖ task ‖ worker ‖ result ‖ metric ‖ salt)` where ids are the
/// 16 UUID bytes, `task` is a big-endian u32, `metric` is `0x00` when absent or `0x01` and a
/// big-endian i64, and `salt` is 32 bytes the worker keeps secret until the reveal. Binding the
/// worker id means a copied commitment is worthless to anyone else.
pub fn commitment(
    job: JobId,
    task: u32,
    worker: PartyId,
    result: Digest,
    metric_micros: Option<i64>,
    salt: Digest,
) -> Digest {
    let mut h = Sha256::new();
    h.update(b"dscm-commit-v1");
    h.update(job.0.as_bytes());
    h.update(task.to_be_bytes());
    h.update(worker.0.as_bytes());
    h.update(result.0);
    match metric_micros {
        None => h.update([0u8]),
        Some(m) => {
            h.update([1u8]);
            h.update(m.to_be_bytes());
        }
    }
    h.update(salt.0);
    Digest(h.finalize().into())
}
