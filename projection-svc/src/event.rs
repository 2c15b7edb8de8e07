//! The event as the projector sees it, whichever way it came: read from the event store
//! ([`event_store::StoredEvent`]) or parsed from a Kafka envelope ([`crate::envelope`]).

use domain::Timestamp;
use event_store::StoredEvent;
use serde_json::Value;
use uuid::Uuid;

/// One event of the log with every field the read models keep.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedEvent {
    /// Global, gapless, in commit order (ADR 0002).
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Per aggregate, gapless, from 1.
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: i32,
    pub payload: Value,
    /// `{actor, command_id, correlation_id, causation_id}` as the event store keeps it.
    pub metadata: Value,
    pub recorded_at_unix_micros: i64,
    /// Lowercase hex of the event's SHA-256 and of its predecessor's.
    pub hash: String,
    pub prev_hash: String,
}

impl From<&StoredEvent> for ProjectedEvent {
    fn from(e: &StoredEvent) -> Self {
        ProjectedEvent {
            position: e.position,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: e.sequence,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            event_version: e.event_version,
            payload: e.payload.clone(),
            metadata: serde_json::to_value(&e.metadata).unwrap_or(Value::Null),
            recorded_at_unix_micros: e.recorded_at_unix_micros,
            hash: hex::encode(e.hash),
            prev_hash: hex::encode(e.prev_hash),
        }
    }
}

impl From<StoredEvent> for ProjectedEvent {
    fn from(e: StoredEvent) -> Self {
        ProjectedEvent::from(&e)
    }
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-26T00:00:00.123456Z` (PostgreSQL parses it
/// exactly into a `timestamptz`).
pub fn rfc3339_micros(unix_micros: i64) -> String {
    let millis = Timestamp(unix_micros.div_euclid(1000)).to_string();
    let seconds = millis.strip_suffix('Z').and_then(|s| s.rsplit_once('.')).map_or(millis.as_str(), |(s, _)| s);
    format!("{seconds}.{:06}Z", unix_micros.rem_euclid(1_000_000))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (UTC only, as the relay writes it) into unix
/// microseconds. Digits beyond microseconds are truncated.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || *b.last()? != b'Z' || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = text.get(from..to)?;
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let rest = &text[19..text.len() - 1];
    let micros = if rest.is_empty() {
        0
    } else {
        let fraction = rest.strip_prefix('.')?;
        if fraction.is_empty() || fraction.len() > 9 || !fraction.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut digits = fraction.to_owned();
        digits.truncate(6);
        while digits.len() < 6 {
            digits.push('0');
        }
        digits.parse::<i64>().ok()?
    };
    let days = days_from_civil(year, month, day);
    let secs = days.checked_mul(86_400)?.checked_add(hour * 3_600 + minute * 60 + second)?;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Howard Hinnant's `days_from_civil`: (year, month 1..=12, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        for micros in [0, 1, 1_795_651_200_123_456, 1_796_083_199_999_999, -1, 951_782_400_000_000] {
            let text = rfc3339_micros(micros);
            assert_eq!(parse_rfc3339_micros(&text), Some(micros), "{text}");
        }
        assert_eq!(parse_rfc3339_micros("2026-11-26T00:00:00Z"), Some(1_795_651_200_000_000));
        assert_eq!(parse_rfc3339_micros("2026-11-26T00:00:00.1234567Z"), Some(1_795_651_200_123_456));
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in ["", "2026-11-26", "2026-11-26T00:00:00+01:00", "2026-13-01T00:00:00Z", "2026-11-26T00:00:00.Z"] {
            assert_eq!(parse_rfc3339_micros(bad), None, "{bad}");
        }
    }
}
