//! Test support shared by the crates' tests (it depends on no crate of ours, so any of them can
//! use it as a dev-dependency): [`kafka`] runs the Kafka-protocol broker through `infra/kafka.sh`;
//! [`unique`] makes names no other test uses.

pub mod kafka;

use std::sync::atomic::{AtomicU64, Ordering};

/// A name no other test (in this or another process, now or in an earlier run) uses.
pub fn unique(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The repository's root (this crate sits one level below it).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
