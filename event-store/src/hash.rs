//! The per-aggregate hash chain: the exact bytes that are hashed, so that an auditor can
//! recompute every hash in any language from the `events` table alone.
//!
//! # Byte layout (version 1)
//!
//! ```text
//! hash      = SHA-256(canonical)
//! canonical = field("dscm.event.v1")           domain-separation tag, 13 ASCII bytes
//!          || field(aggregate_type)            UTF-8
//!          || field(aggregate_id)              UTF-8
//!          || field(i64_be(sequence))          8 bytes, big-endian two's complement
//!          || field(event_id)                  16 bytes, in the order of the UUID's hex digits
//!          || field(event_type)                UTF-8
//!          || field(i32_be(event_version))     4 bytes, big-endian two's complement
//!          || field(i64_be(recorded_at))       unix time in microseconds (UTC), 8 bytes;
//!                                              in SQL: (EXTRACT(EPOCH FROM recorded_at)
//!                                              * 1000000)::bigint
//!          || field(json(payload))             canonical JSON, UTF-8
//!          || field(json(metadata))            canonical JSON, UTF-8
//!          || field(prev_hash)                 32 bytes: the previous event's hash in the same
//!                                              aggregate; 32 zero bytes for sequence 1
//! field(b)  = u32_be(length of b in bytes) || b
//! ```
//!
//! `json(v)` is the value *as stored in the `jsonb` column*, read back and written with:
//! - no whitespace anywhere;
//! - object members sorted by key, comparing the keys' UTF-8 bytes;
//! - strings in double quotes, escaping `"` as `\"`, `\` as `\\`, U+0008 `\b`, U+000C `\f`,
//!   U+000A `\n`, U+000D `\r`, U+0009 `\t`, other characters below U+0020 as `\u00xx` (lowercase
//!   hex), everything else (including `/` and non-ASCII) as raw UTF-8;
//! - `true`, `false`, `null`;
//! - numbers as serde_json 1.x writes them: an integer that fits in `i64` or `u64` in plain
//!   decimal, any other number as the nearest `f64` in shortest round-trip form (`0.1`, `1.5`,
//!   `1.0`, `1e+300`, `1e-7`, `-2.5e-8`). Integers are the portable choice: money is integer
//!   minor units.
//!
//! The position is not hashed: it is assigned after the hashes are computed, while the head lock
//! is held, and [`crate::verify_all`] checks it separately (contiguous from 1 to the head).

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of an aggregate's first event.
pub const ZERO_HASH: Hash = [0; 32];

/// Domain-separation tag, first field of the canonical bytes; a new layout gets a new tag.
pub const LAYOUT_TAG: &str = "dscm.event.v1";

/// Every hashed field of one event.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub event_version: i32,
    pub recorded_at_unix_micros: i64,
    /// As stored in `jsonb` and read back (see [`normalize_for_jsonb`]).
    pub payload: &'a Value,
    /// As stored in `jsonb` and read back.
    pub metadata: &'a Value,
    pub prev_hash: &'a Hash,
}

/// The bytes that are hashed, laid out as in the module documentation.
pub fn canonical_bytes(input: &HashInput<'_>) -> Vec<u8> {
    let payload = canonical_json(input.payload);
    let metadata = canonical_json(input.metadata);
    let mut out = Vec::with_capacity(
        160 + input.aggregate_type.len()
            + input.aggregate_id.len()
            + input.event_type.len()
            + payload.len()
            + metadata.len(),
    );
    push_field(&mut out, LAYOUT_TAG.as_bytes());
    push_field(&mut out, input.aggregate_type.as_bytes());
    push_field(&mut out, input.aggregate_id.as_bytes());
    push_field(&mut out, &input.sequence.to_be_bytes());
    push_field(&mut out, input.event_id.as_bytes());
    push_field(&mut out, input.event_type.as_bytes());
    push_field(&mut out, &input.event_version.to_be_bytes());
    push_field(&mut out, &input.recorded_at_unix_micros.to_be_bytes());
    push_field(&mut out, &payload);
    push_field(&mut out, &metadata);
    push_field(&mut out, input.prev_hash);
    out
}

/// SHA-256 of [`canonical_bytes`].
pub fn event_hash(input: &HashInput<'_>) -> Hash {
    Sha256::digest(canonical_bytes(input)).into()
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Field lengths are bounded far below 4 GiB: PostgreSQL caps a jsonb value at 255 MB and a
    // text value at 1 GB. Saturating keeps this total; such a value could not be stored anyway.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Canonical JSON: sorted keys, no whitespace. Sorts explicitly rather than relying on
/// `serde_json::Map` being a `BTreeMap`, which the `preserve_order` feature (enabled by any crate
/// in the build) would silently change.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(member, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

/// Strings, numbers, booleans and null, in serde_json's compact form (its `Display` cannot fail).
fn write_scalar(scalar: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(scalar.to_string().as_bytes());
}

/// Whether storing `value` in `jsonb` and reading it back can change its canonical JSON.
///
/// Only non-integer numbers can: `jsonb` stores numbers as `numeric`, so `-0.0` comes back as
/// `0.0` and the float `1e19` as the integer `10000000000000000000`. Strings, booleans, null and
/// integers that fit `i64`/`u64` come back identical. When this returns true the appender lets
/// PostgreSQL normalise the value before hashing it.
pub fn normalize_for_jsonb(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(normalize_for_jsonb),
        Value::Object(map) => map.values().any(normalize_for_jsonb),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_by_bytes_and_has_no_whitespace() {
        let value = json!({"b": 1, "a": [true, null, "x\"\n/é"], "B": {"z": -1, "é": 0, "y": 2}});
        let text = String::from_utf8(canonical_json(&value)).unwrap_or_default();
        assert_eq!(text, r#"{"B":{"y":2,"z":-1,"é":0},"a":[true,null,"x\"\n/é"],"b":1}"#);
    }

    #[test]
    fn canonical_json_writes_numbers_as_documented() {
        let value = json!([0.1, 1.5, 1.0, 1e300, 1e-7, -2.5e-8, 18446744073709551615u64, -3]);
        let text = String::from_utf8(canonical_json(&value)).unwrap_or_default();
        assert_eq!(text, "[0.1,1.5,1.0,1e+300,1e-7,-2.5e-8,18446744073709551615,-3]");
    }

    #[test]
    fn fields_are_length_prefixed_so_moving_a_boundary_changes_the_hash() {
        let payload = json!({});
        let metadata = json!({});
        let input = HashInput {
            aggregate_type: "ab",
            aggregate_id: "c",
            sequence: 1,
            event_id: Uuid::nil(),
            event_type: "t",
            event_version: 1,
            recorded_at_unix_micros: 0,
            payload: &payload,
            metadata: &metadata,
            prev_hash: &ZERO_HASH,
        };
        let moved = HashInput { aggregate_type: "a", aggregate_id: "bc", ..input };
        assert_ne!(event_hash(&input), event_hash(&moved));
    }

    #[test]
    fn only_non_integer_numbers_need_normalising() {
        assert!(!normalize_for_jsonb(&json!({"a": [1, -2, "x", null, true], "b": u64::MAX})));
        assert!(normalize_for_jsonb(&json!({"a": [1, {"b": 0.5}]})));
    }
}
