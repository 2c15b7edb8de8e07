//! Tidy test: `domain` must stay pure. It fails if any IO crate enters the crate's dependency
//! graph (normal dependencies, transitively), read from `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Crates that do IO, run an async runtime, or talk to the outside world.
const FORBIDDEN: &[&str] =
    &["tokio", "sqlx", "rdkafka", "axum", "hyper", "reqwest", "mio", "async-std", "cqrs-es", "postgres", "tonic"];
const FORBIDDEN_PREFIXES: &[&str] = &["aws-", "sqlx-", "tokio-", "rdkafka-"];

fn is_forbidden(name: &str) -> bool {
    FORBIDDEN.contains(&name) || FORBIDDEN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The names of every package reachable from `root` through normal (non-dev, non-build)
/// dependencies, per the resolved graph in `cargo metadata`.
fn normal_dependency_closure(metadata: &serde_json::Value, root: &str) -> BTreeSet<String> {
    let packages: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| d["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null()))
                .map(|d| d["pkg"].as_str().expect("pkg"))
                .collect();
            (n["id"].as_str().expect("node id"), deps)
        })
        .collect();
    let root_id = packages.iter().find(|(_, name)| **name == root).map(|(id, _)| *id).expect("root package");
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        stack.extend(nodes.get(id).into_iter().flatten());
    }
    seen.into_iter().filter(|id| *id != root_id).map(|id| packages[id].to_owned()).collect()
}

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("metadata json")
}

#[test]
fn domain_depends_on_no_io_crate() {
    let deps = normal_dependency_closure(&metadata(), "domain");
    let bad: Vec<&String> = deps.iter().filter(|d| is_forbidden(d)).collect();
    assert!(bad.is_empty(), "domain must stay pure, but depends on {bad:?}");
    assert!(deps.contains("serde"), "sanity: the closure was computed ({deps:?})");
}

#[test]
fn the_same_check_flags_a_crate_that_does_io() {
    // The closure of the event store, which uses sqlx and tokio, must be flagged: this proves
    // the check above can fail.
    let deps = normal_dependency_closure(&metadata(), "event-store");
    assert!(deps.iter().any(|d| is_forbidden(d)), "event-store should depend on sqlx/tokio: {deps:?}");
}
