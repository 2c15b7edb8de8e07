//! A partially loaded marketplace (what a service builds per unit of work) must ask for
//! everything its decision touches, and once given it, decide exactly as the complete one.

use std::collections::BTreeSet;

use domain::ctx::CommissionSchedule;
use domain::funds::DepositCommand;
use domain::ids::{DepositId, JobId, PartyId};
use domain::job::{JobCommand, WorkloadSpec};
use domain::ledger::Provider;
use domain::market::Need;
use domain::policy::TaskClass;
use domain::{Actor, Command, Currency, Event, MarketError, Marketplace, Money, Role, StreamId, Timestamp};
use uuid::Uuid;

const T0: Timestamp = Timestamp(1_795_651_200_000);

fn eur(minor: u64) -> Money {
    Money { minor_units: minor, currency: Currency::Eur }
}

/// Run `cmd` on a partial marketplace built from `full`'s log, loading whatever it asks for,
/// and return the answer plus every need it reported.
fn run_partially(full: &Marketplace, cmd: Command, actor: Actor) -> (Result<Vec<Event>, MarketError>, BTreeSet<Need>) {
    let mut partial = Marketplace::partial(full.seed, CommissionSchedule::default());
    let mut asked = BTreeSet::new();
    for _round in 0..16 {
        match partial.execute_loaded(cmd.clone(), actor, T0) {
            Ok(result) => return (result, asked),
            Err(needs) => {
                for need in needs {
                    asked.insert(need);
                    match need {
                        Need::Stream(stream) => {
                            let history: Vec<&Event> = full.log.iter().filter(|e| e.stream() == stream).collect();
                            partial.load_stream(stream, history);
                        }
                        Need::Balance(party, currency) => {
                            partial.load_balance(party, currency, full.ledger.available(party, currency))
                        }
                        Need::MonthVolume(client, currency, month) => partial.load_month_volume(
                            client,
                            currency,
                            month,
                            full.month_volume.get(&(client, currency, month)).copied().unwrap_or(0),
                        ),
                    }
                }
            }
        }
    }
    panic!("never converged");
}

#[test]
fn a_partial_marketplace_asks_for_what_it_needs_and_then_decides_like_the_full_one() {
    let client = Actor { party: PartyId(Uuid::from_u128(1)), role: Role::Client };
    let finance = Actor { party: PartyId(Uuid::from_u128(2)), role: Role::Finance };
    let job = JobId(Uuid::from_u128(10));
    let mut full = Marketplace::new(7);
    let deposit = Command::Deposit(
        DepositId::of(Provider::Manual, "wire-1"),
        DepositCommand::RecordCaptured {
            party: client.party,
            amount: eur(10_000),
            provider: Provider::Manual,
            external_ref: "wire-1".into(),
        },
    );
    full.execute(deposit, finance, T0).expect("deposit");
    let post = Command::Job(
        job,
        JobCommand::Post {
            job,
            class: TaskClass::DscmVerified,
            policy: TaskClass::DscmVerified.defaults(),
            reward_per_replica: eur(1_000),
            task_count: 2,
            workload: WorkloadSpec { name: "monte_carlo_pi".into(), params: String::new(), input_digest: None },
            expires_in_secs: 86_400,
        },
    );
    full.execute(post, client, T0).expect("post");

    // Funding 6 000 of 10 000: needs the job, the escrow and the client's balance.
    let fund = Command::Job(job, JobCommand::Fund);
    let (answer, asked) = run_partially(&full, fund.clone(), client);
    assert!(asked.contains(&Need::Stream(StreamId::Job(job))));
    assert!(asked.contains(&Need::Stream(StreamId::Escrow(job))));
    assert!(asked.contains(&Need::Balance(client.party, Currency::Eur)));
    let expected = full.clone().execute(fund, client, T0);
    assert_eq!(answer, expected);
    assert!(answer.is_ok());
}

#[test]
fn an_unloaded_balance_is_never_read_as_money() {
    // With nothing loaded, the balance reads as zero and the decision is not returned at all:
    // the caller is told to load first.
    let client = Actor { party: PartyId(Uuid::from_u128(1)), role: Role::Client };
    let mut partial = Marketplace::partial(1, CommissionSchedule::default());
    let payout = Command::Payout(
        domain::ids::PayoutId(Uuid::from_u128(5)),
        domain::funds::PayoutCommand::Request { amount: eur(1), provider: Provider::Stripe },
    );
    let needs = partial.execute_loaded(payout.clone(), client, T0).expect_err("must ask for the stream");
    assert_eq!(needs.len(), 1);
    partial.load_stream(payout.stream(), []);
    let needs = partial.execute_loaded(payout.clone(), client, T0).expect_err("must ask for the balance");
    assert_eq!(needs, BTreeSet::from([Need::Balance(client.party, Currency::Eur)]));
    partial.load_balance(client.party, Currency::Eur, 0);
    let answer = partial.execute_loaded(payout, client, T0).expect("all loaded");
    assert!(matches!(answer, Err(MarketError::Payout(domain::funds::PayoutError::InsufficientFunds { .. }))));
    assert!(partial.log.is_empty(), "a refused command wrote nothing");
}
