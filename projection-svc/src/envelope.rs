//! Parsing the relay's Kafka message value (a CloudEvents 1.0 structured-mode JSON event with
//! DSCM's extensions, `command_svc::relay::encode_envelope`, docs/adr/0006) back into a
//! [`ProjectedEvent`]. Every field the read models keep is required; unknown fields are
//! ignored, so the relay may add extensions without breaking consumers.

use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::event::{ProjectedEvent, parse_rfc3339_micros};

/// Why a message value is not an event envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported specversion {0:?}")]
    SpecVersion(String),
    #[error("bad time {0:?}: expected RFC 3339 UTC")]
    Time(String),
    #[error("bad {field}: {value:?}")]
    Field { field: &'static str, value: String },
}

#[derive(Debug, Deserialize)]
struct Envelope {
    specversion: String,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    subject: String,
    time: String,
    aggregatetype: String,
    sequence: i64,
    position: i64,
    eventversion: i32,
    hash: String,
    prevhash: String,
    actor: String,
    commandid: Uuid,
    correlationid: Uuid,
    causationid: Uuid,
    data: Value,
}

fn hex64(field: &'static str, value: String) -> Result<String, EnvelopeError> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(value)
    } else {
        Err(EnvelopeError::Field { field, value })
    }
}

/// The event carried by one Kafka message value.
pub fn parse(bytes: &[u8]) -> Result<ProjectedEvent, EnvelopeError> {
    let e: Envelope = serde_json::from_slice(bytes)?;
    if e.specversion != "1.0" {
        return Err(EnvelopeError::SpecVersion(e.specversion));
    }
    let recorded_at_unix_micros = parse_rfc3339_micros(&e.time).ok_or_else(|| EnvelopeError::Time(e.time.clone()))?;
    if e.position < 1 {
        return Err(EnvelopeError::Field { field: "position", value: e.position.to_string() });
    }
    if e.sequence < 1 {
        return Err(EnvelopeError::Field { field: "sequence", value: e.sequence.to_string() });
    }
    Ok(ProjectedEvent {
        position: e.position,
        aggregate_type: e.aggregatetype,
        aggregate_id: e.subject,
        sequence: e.sequence,
        event_id: e.id,
        event_type: e.event_type,
        event_version: e.eventversion,
        payload: e.data,
        // The event store's own shape of the metadata (event_store::EventMetadata).
        metadata: json!({
            "actor": e.actor,
            "command_id": e.commandid,
            "correlation_id": e.correlationid,
            "causation_id": e.causationid,
        }),
        recorded_at_unix_micros,
        hash: hex64("hash", e.hash)?,
        prev_hash: hex64("prevhash", e.prevhash)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_store::{EventMetadata, StoredEvent};

    fn stored() -> StoredEvent {
        StoredEvent {
            position: 42,
            aggregate_type: "escrow".to_owned(),
            aggregate_id: "0b6f6c55-6a3c-4c4e-9d3e-1f0e5a1b2c3d".to_owned(),
            sequence: 3,
            event_id: Uuid::from_u128(1),
            event_type: "EscrowFunded".to_owned(),
            event_version: 1,
            payload: json!({"amount": {"minor_units": 1500, "currency": "EUR"}}),
            metadata: EventMetadata {
                actor: "client:7".to_owned(),
                command_id: Uuid::from_u128(2),
                correlation_id: Uuid::from_u128(3),
                causation_id: Uuid::from_u128(4),
            },
            recorded_at_unix_micros: 1_795_651_200_123_456,
            prev_hash: [0xab; 32],
            hash: [0x01; 32],
        }
    }

    #[test]
    fn the_relays_envelope_parses_back_into_the_stored_event() {
        let event = stored();
        let bytes = command_svc::relay::encode_envelope(&event).expect("encode");
        assert_eq!(parse(&bytes).expect("parse"), ProjectedEvent::from(&event));
    }

    #[test]
    fn broken_envelopes_are_refused_with_the_reason() {
        let good: Value =
            serde_json::from_slice(&command_svc::relay::encode_envelope(&stored()).expect("encode")).expect("json");
        let cases: [(&str, Value); 4] = [
            ("specversion", json!("0.3")),
            ("time", json!("yesterday")),
            ("hash", json!("zz")),
            ("sequence", json!(0)),
        ];
        for (field, value) in cases {
            let mut bad = good.clone();
            bad[field] = value;
            let bytes = serde_json::to_vec(&bad).expect("json");
            assert!(parse(&bytes).is_err(), "{field} accepted");
        }
        assert!(matches!(parse(b"{not json"), Err(EnvelopeError::Json(_))));
    }
}
