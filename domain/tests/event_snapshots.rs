//! Freezes the wire format of every event: its `event_type`, `event_version` and JSON payload.
//! Other languages (the chaincode, auditors' tools) read these; a change here must be a
//! deliberate, versioned one. Run with `UPDATE_SNAPSHOTS=1` to accept a change.

use domain::challenge::ChallengeEvent;
use domain::digest::Digest;
use domain::dispute::{DisputeEvent, DisputeOutcome, DisputeReason};
use domain::escrow::{EscrowEvent, EscrowTerms};
use domain::funds::{DepositEvent, PayoutEvent};
use domain::ids::{ChallengeId, DepositId, DisputeId, JobId, PartyId, PayoutId};
use domain::job::{ChallengeOutcome, JobEvent, ReexecutionVerdict, ResultValue, WorkloadSpec};
use domain::ledger::Provider;
use domain::policy::{TaskClass, Verification, VerificationPolicy};
use domain::worker::{Outcome, WorkerEvent};
use domain::{Currency, Event, Money, Timestamp};
use uuid::Uuid;

fn party(n: u128) -> PartyId {
    PartyId(Uuid::from_u128(n))
}

fn eur(minor: u64) -> Money {
    Money { minor_units: minor, currency: Currency::Eur }
}

fn samples() -> Vec<Event> {
    let job = JobId(Uuid::from_u128(0x10));
    let client = party(1);
    let worker = party(2);
    let challenge = ChallengeId(Uuid::from_u128(0x20));
    let dispute = DisputeId(Uuid::from_u128(0x30));
    let t = Timestamp(1_795_651_200_000);
    let d = Digest::of(b"result");
    let result = ResultValue { digest: d, metric_micros: Some(-1_500_000) };
    let terms = EscrowTerms { job, client, reward_per_replica: eur(250), slash_pct: 30 };
    let policy = VerificationPolicy {
        verification: Verification::Metric { tolerance_micros: 10_000 },
        ..TaskClass::DscmVerified.defaults()
    };
    let j = |e| Event::Job(job, e);
    let e = |e| Event::Escrow(job, e);
    vec![
        j(JobEvent::JobPosted {
            job,
            client,
            class: TaskClass::DscmVerified,
            policy,
            reward_per_replica: eur(250),
            task_count: 2,
            budget: eur(1500),
            workload: WorkloadSpec {
                name: "monte_carlo_pi".into(),
                params: "{\"samples\":1000}".into(),
                input_digest: Some(d),
            },
            posted_at: t,
            expires_at: t.plus_secs(604_800),
        }),
        j(JobEvent::JobFunded { budget: eur(1500), escrow: terms }),
        j(JobEvent::JobCancelled { by: client }),
        j(JobEvent::ReplicaClaimed {
            task: 0,
            slot: 1,
            worker,
            expires_at: t.plus_secs(3600),
            collateral: eur(25),
            reassignment: false,
            unreplicated: false,
            reexecution: false,
        }),
        j(JobEvent::ClaimHeartbeat { task: 0, worker, expires_at: t.plus_secs(3700) }),
        j(JobEvent::ResultCommitted { task: 0, worker, commitment: Digest::of(b"commitment") }),
        j(JobEvent::RevealPhaseStarted { task: 0, reexecution: false, reveal_deadline: t.plus_secs(3600) }),
        j(JobEvent::ResultRevealed { task: 0, worker, result }),
        j(JobEvent::RevealRejected { task: 0, worker }),
        j(JobEvent::ClaimExpired { task: 0, worker, at: t, reassignable: true }),
        j(JobEvent::RevealMissed { task: 0, worker }),
        j(JobEvent::TaskVerified { task: 0, result, accepted: vec![worker], outvoted: vec![party(3)] }),
        j(JobEvent::TaskFailedNoQuorum { task: 1, dispute, client, workers: vec![worker, party(3)] }),
        j(JobEvent::TaskAbandoned { task: 1 }),
        j(JobEvent::JobExpired { cancelled_tasks: vec![1], collateral_returned: vec![(1, worker)] }),
        j(JobEvent::ChallengeRecorded {
            challenge,
            task: 0,
            challenger: client,
            bond: eur(250),
            reexecution_deadline: t.plus_secs(86_400),
        }),
        j(JobEvent::ReexecutionCompleted { challenge, task: 0, verdict: ReexecutionVerdict::Upheld }),
        j(JobEvent::ChallengeOutcomeApplied {
            challenge,
            task: 0,
            outcome: ChallengeOutcome::Escalated { dispute },
            client,
            accused: vec![worker],
        }),
        j(JobEvent::DisputeOutcomeApplied { dispute, task: 1, client_pct: 40, workers: vec![worker] }),
        j(JobEvent::ChallengeWindowOpened { closes_at: t.plus_secs(86_400) }),
        j(JobEvent::JobSettled { verified_tasks: 2 }),
        e(EscrowEvent::EscrowFunded { terms, amount: eur(1500) }),
        e(EscrowEvent::CollateralLocked { task: 0, worker, amount: eur(25) }),
        e(EscrowEvent::CollateralReturned { task: 0, worker, amount: eur(25) }),
        e(EscrowEvent::CollateralSlashed { task: 0, worker, client, slashed: eur(7), returned: eur(18) }),
        e(EscrowEvent::WorkerPaymentPending { task: 0, worker, amount: eur(250) }),
        e(EscrowEvent::PaymentClawedBack { task: 0, worker, client, amount: eur(250) }),
        e(EscrowEvent::ReleaseScheduled { not_before: t.plus_secs(86_400) }),
        e(EscrowEvent::PendingReleased {
            worker,
            client,
            gross: eur(500),
            commission: eur(40),
            month_index: t.month_index(),
            volume_before: 0,
        }),
        e(EscrowEvent::EscrowRefunded { client, amount: eur(1000) }),
        e(EscrowEvent::EscrowClosed),
        Event::Challenge(
            challenge,
            ChallengeEvent::ChallengeOpened {
                challenge,
                job,
                task: 0,
                challenger: client,
                reason: "wrong".into(),
                bond: eur(250),
            },
        ),
        Event::Challenge(
            challenge,
            ChallengeEvent::ChallengeUpheld { job, task: 0, challenger: client, bond_returned: eur(250) },
        ),
        Event::Challenge(
            challenge,
            ChallengeEvent::ChallengeRejected { job, task: 0, challenger: client, bond_forfeited: eur(250) },
        ),
        Event::Challenge(
            challenge,
            ChallengeEvent::ChallengeEscalated { job, task: 0, challenger: client, dispute, bond_returned: eur(250) },
        ),
        Event::Dispute(
            dispute,
            DisputeEvent::DisputeOpened {
                dispute,
                job,
                task: 1,
                client,
                workers: vec![worker],
                reason: DisputeReason::NoQuorum,
                review_deadline: t.plus_secs(3600),
            },
        ),
        Event::Dispute(dispute, DisputeEvent::ReviewStarted { arbiter: party(9) }),
        Event::Dispute(
            dispute,
            DisputeEvent::DisputeResolved {
                outcome: DisputeOutcome::Split { client_pct: 40 },
                by: Some(party(9)),
                appeal_deadline: t.plus_secs(3600),
            },
        ),
        Event::Dispute(
            dispute,
            DisputeEvent::DisputeAppealed { by: client, reason: "unfair".into(), decision_deadline: t },
        ),
        Event::Dispute(dispute, DisputeEvent::DisputeClosed { job, task: 1, outcome: DisputeOutcome::Refund }),
        Event::Worker(
            worker,
            WorkerEvent::ReputationChanged {
                job,
                task: 0,
                outcome: Outcome::Accepted,
                delta: 2,
                score: 12,
                consecutive_valid: 6,
            },
        ),
        Event::Deposit(
            DepositId::of(Provider::Stripe, "pi_123"),
            DepositEvent::DepositCaptured {
                party: client,
                amount: eur(10_000),
                provider: Provider::Stripe,
                external_ref: "pi_123".into(),
            },
        ),
        Event::Payout(
            PayoutId(Uuid::from_u128(0x40)),
            PayoutEvent::PayoutRequested { party: worker, amount: eur(460), provider: Provider::Stripe },
        ),
        Event::Payout(
            PayoutId(Uuid::from_u128(0x40)),
            PayoutEvent::PayoutCompleted {
                party: worker,
                amount: eur(460),
                provider: Provider::Stripe,
                provider_ref: "po_1".into(),
            },
        ),
        Event::Payout(
            PayoutId(Uuid::from_u128(0x40)),
            PayoutEvent::PayoutFailed { party: worker, amount: eur(460), reason: "account closed".into() },
        ),
    ]
}

fn render() -> String {
    let rows: Vec<serde_json::Value> = samples()
        .iter()
        .map(|e| {
            serde_json::json!({
                "aggregate_type": e.stream().aggregate_type(),
                "event_type": e.event_type(),
                "event_version": e.event_version(),
                "payload": e.payload().expect("serializes"),
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).expect("json") + "\n"
}

#[test]
fn event_wire_format_is_frozen() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/events.json");
    let actual = render();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(path).expect("snapshot exists (run with UPDATE_SNAPSHOTS=1 once)");
    assert!(
        actual == expected,
        "event wire format changed; review the diff and rerun with UPDATE_SNAPSHOTS=1:\n{actual}"
    );
}

#[test]
fn every_sample_round_trips_through_its_stored_form() {
    for event in samples() {
        let back = Event::from_stored(event.stream(), event.payload().expect("payload")).expect("parses back");
        assert_eq!(back, event);
    }
}

#[test]
fn event_types_are_unique_per_aggregate() {
    let mut seen = std::collections::BTreeSet::new();
    for e in samples() {
        // Samples may repeat a type (several Job events), but one type never names two shapes
        // in two aggregates.
        seen.insert((e.event_type(), e.stream().aggregate_type()));
    }
    let types: Vec<_> = seen.iter().map(|(t, _)| *t).collect();
    let unique: std::collections::BTreeSet<_> = types.iter().collect();
    assert_eq!(types.len(), unique.len(), "an event type is used by two aggregates: {seen:?}");
}
