//! API keys and roles. A key is `dscm_<key_id>_<secret>`; only SHA-256 of the secret is stored,
//! and it is compared in constant time. Keys are random (256-bit secrets), so a fast hash is
//! enough: there is nothing to brute-force.

use domain::ids::PartyId;
use domain::{Actor, Role};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

const PREFIX: &str = "dscm_";
const KEY_ID_HEX_LEN: usize = 16;
const SECRET_HEX_LEN: usize = 64;
pub const LABEL_LEN_MAX: usize = 200;

/// Who a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub party: PartyId,
    pub role: Role,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor { party: self.party, role: self.role }
    }
}

/// A freshly issued key: the only time its secret is known.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key: String,
    pub key_id: String,
    pub party: PartyId,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer <api key>")]
    Missing,
    #[error("malformed or unknown API key")]
    Invalid,
    #[error("database error while checking the API key")]
    Database(#[from] sqlx::Error),
}

pub fn parse_role(s: &str) -> Option<Role> {
    Role::HUMAN.into_iter().find(|r| r.as_str() == s)
}

fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Split `dscm_<key_id>_<secret>` without trusting anything about it.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(key_id, KEY_ID_HEX_LEN) && hex(secret, SECRET_HEX_LEN)).then_some((key_id, secret))
}

/// Create a key for `party` (a new party if `None`) with `role`.
pub async fn issue_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    party: Option<PartyId>,
    role: Role,
    label: &str,
) -> Result<IssuedKey, sqlx::Error> {
    let mut id = [0u8; KEY_ID_HEX_LEN / 2];
    let mut secret = [0u8; SECRET_HEX_LEN / 2];
    {
        let mut rng = rand::rng();
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
    }
    let (key_id, secret) = (hex::encode(id), hex::encode(secret));
    let party = party.unwrap_or_else(|| PartyId(Uuid::new_v4()));
    sqlx::query("INSERT INTO api_keys (key_id, secret_hash, party_id, role, label) VALUES ($1, $2, $3, $4, $5)")
        .bind(&key_id)
        .bind(secret_hash(&secret).as_slice())
        .bind(party.0)
        .bind(role.as_str())
        .bind(label)
        .execute(executor)
        .await?;
    Ok(IssuedKey { key: format!("{PREFIX}{key_id}_{secret}"), key_id, party, role })
}

/// The principal behind an `Authorization` header value.
pub async fn authenticate(pool: &PgPool, header: Option<&str>) -> Result<Principal, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let key = header.strip_prefix("Bearer ").ok_or(AuthError::Missing)?.trim();
    let (key_id, secret) = split_key(key).ok_or(AuthError::Invalid)?;
    let row = sqlx::query("SELECT secret_hash, party_id, role FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL")
        .bind(key_id)
        .fetch_optional(pool)
        .await?
        .ok_or(AuthError::Invalid)?;
    let stored: Vec<u8> = row.try_get("secret_hash")?;
    if !constant_time_eq(&stored, &secret_hash(secret)) {
        return Err(AuthError::Invalid);
    }
    let role: String = row.try_get("role")?;
    let role = parse_role(&role).ok_or(AuthError::Invalid)?;
    Ok(Principal { party: PartyId(row.try_get("party_id")?), role })
}

/// Is there an unrevoked admin key already?
pub async fn admin_exists(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL) AS e")
        .fetch_one(pool)
        .await?;
    row.try_get("e")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_in_their_exact_shape() {
        let good = format!("dscm_{}_{}", "a".repeat(16), "b".repeat(64));
        assert!(split_key(&good).is_some());
        assert!(split_key("dscm_short_secret").is_none());
        assert!(split_key(&good.replace("dscm_", "xxxx_")).is_none());
        assert!(split_key(&format!("dscm_{}_{}", "g".repeat(16), "b".repeat(64))).is_none());
    }

    #[test]
    fn constant_time_eq_compares_all_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
