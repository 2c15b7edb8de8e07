//! The marketplace as one pure state machine: every aggregate, the ledger, and the unit of
//! work that runs a command together with the reactions it causes.
//!
//! [`Marketplace::execute`] is the reference semantics of the command side: decide on a
//! scratch copy, run reactions (FIFO, bounded), and keep the result only if every step was
//! accepted. The services do the same against PostgreSQL in one transaction; the tests use
//! this directly, and so can an embedded mode.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::challenge::{Challenge, ChallengeCommand, ChallengeError, ChallengeEvent, challenge_postings};
use crate::ctx::{Actor, CommandCtx, CommissionSchedule, Facts};
use crate::dispute::{Dispute, DisputeCommand, DisputeError, DisputeEvent};
use crate::escrow::{Escrow, EscrowCommand, EscrowError, EscrowEvent, escrow_postings};
use crate::funds::{
    Deposit, DepositCommand, DepositError, DepositEvent, Payout, PayoutCommand, PayoutError, PayoutEvent,
};
use crate::ids::{ChallengeId, DepositId, DisputeId, JobId, PartyId, PayoutId};
use crate::job::{Job, JobCommand, JobError, JobEvent};
use crate::ledger::{HasPostings, Ledger, Posting};
use crate::money::Currency;
use crate::process::react;
use crate::time::Timestamp;
use crate::worker::{Worker, WorkerCommand, WorkerError, WorkerEvent};

/// At most this many commands (the original and its reactions) in one unit of work.
pub const UNIT_OF_WORK_COMMANDS_MAX: usize = 1_000;

/// Which stream an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "aggregate_type", content = "aggregate_id", rename_all = "snake_case")]
pub enum StreamId {
    Job(JobId),
    Escrow(JobId),
    Challenge(ChallengeId),
    Dispute(DisputeId),
    Worker(PartyId),
    Deposit(DepositId),
    Payout(PayoutId),
}

impl StreamId {
    pub fn aggregate_type(&self) -> &'static str {
        match self {
            StreamId::Job(_) => Job::TYPE,
            StreamId::Escrow(_) => Escrow::TYPE,
            StreamId::Challenge(_) => Challenge::TYPE,
            StreamId::Dispute(_) => Dispute::TYPE,
            StreamId::Worker(_) => Worker::TYPE,
            StreamId::Deposit(_) => Deposit::TYPE,
            StreamId::Payout(_) => Payout::TYPE,
        }
    }

    /// The stream named by a stored event's `aggregate_type` and `aggregate_id`.
    pub fn from_parts(aggregate_type: &str, aggregate_id: &str) -> Option<StreamId> {
        let id: uuid::Uuid = aggregate_id.parse().ok()?;
        Some(match aggregate_type {
            "job" => StreamId::Job(JobId(id)),
            "escrow" => StreamId::Escrow(JobId(id)),
            "challenge" => StreamId::Challenge(ChallengeId(id)),
            "dispute" => StreamId::Dispute(DisputeId(id)),
            "worker" => StreamId::Worker(PartyId(id)),
            "deposit" => StreamId::Deposit(DepositId(id)),
            "payout" => StreamId::Payout(PayoutId(id)),
            _ => return None,
        })
    }

    pub fn aggregate_id(&self) -> uuid::Uuid {
        match self {
            StreamId::Job(id) | StreamId::Escrow(id) => id.0,
            StreamId::Challenge(id) => id.0,
            StreamId::Dispute(id) => id.0,
            StreamId::Worker(id) => id.0,
            StreamId::Deposit(id) => id.0,
            StreamId::Payout(id) => id.0,
        }
    }
}

/// A command addressed to one aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Job(JobId, JobCommand),
    Escrow(JobId, EscrowCommand),
    Challenge(ChallengeId, ChallengeCommand),
    Dispute(DisputeId, DisputeCommand),
    Worker(PartyId, WorkerCommand),
    Deposit(DepositId, DepositCommand),
    Payout(PayoutId, PayoutCommand),
}

impl Command {
    pub fn stream(&self) -> StreamId {
        match self {
            Command::Job(id, _) => StreamId::Job(*id),
            Command::Escrow(id, _) => StreamId::Escrow(*id),
            Command::Challenge(id, _) => StreamId::Challenge(*id),
            Command::Dispute(id, _) => StreamId::Dispute(*id),
            Command::Worker(id, _) => StreamId::Worker(*id),
            Command::Deposit(id, _) => StreamId::Deposit(*id),
            Command::Payout(id, _) => StreamId::Payout(*id),
        }
    }
}

/// An event with the stream it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Job(JobId, JobEvent),
    Escrow(JobId, EscrowEvent),
    Challenge(ChallengeId, ChallengeEvent),
    Dispute(DisputeId, DisputeEvent),
    Worker(PartyId, WorkerEvent),
    Deposit(DepositId, DepositEvent),
    Payout(PayoutId, PayoutEvent),
}

impl Event {
    pub fn stream(&self) -> StreamId {
        match self {
            Event::Job(id, _) => StreamId::Job(*id),
            Event::Escrow(id, _) => StreamId::Escrow(*id),
            Event::Challenge(id, _) => StreamId::Challenge(*id),
            Event::Dispute(id, _) => StreamId::Dispute(*id),
            Event::Worker(id, _) => StreamId::Worker(*id),
            Event::Deposit(id, _) => StreamId::Deposit(*id),
            Event::Payout(id, _) => StreamId::Payout(*id),
        }
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Job(_, e) => e.event_type(),
            Event::Escrow(_, e) => e.event_type(),
            Event::Challenge(_, e) => e.event_type(),
            Event::Dispute(_, e) => e.event_type(),
            Event::Worker(_, e) => e.event_type(),
            Event::Deposit(_, e) => e.event_type(),
            Event::Payout(_, e) => e.event_type(),
        }
    }

    pub fn event_version(&self) -> u32 {
        match self {
            Event::Job(_, e) => e.event_version(),
            Event::Escrow(_, e) => e.event_version(),
            Event::Challenge(_, e) => e.event_version(),
            Event::Dispute(_, e) => e.event_version(),
            Event::Worker(_, e) => e.event_version(),
            Event::Deposit(_, e) => e.event_version(),
            Event::Payout(_, e) => e.event_version(),
        }
    }

    /// The event's own payload (what is stored; the stream id is stored beside it).
    pub fn payload(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Event::Job(_, e) => serde_json::to_value(e),
            Event::Escrow(_, e) => serde_json::to_value(e),
            Event::Challenge(_, e) => serde_json::to_value(e),
            Event::Dispute(_, e) => serde_json::to_value(e),
            Event::Worker(_, e) => serde_json::to_value(e),
            Event::Deposit(_, e) => serde_json::to_value(e),
            Event::Payout(_, e) => serde_json::to_value(e),
        }
    }

    /// Rebuild an event from its stored parts (stream, payload).
    pub fn from_stored(stream: StreamId, payload: serde_json::Value) -> Result<Event, serde_json::Error> {
        Ok(match stream {
            StreamId::Job(id) => Event::Job(id, serde_json::from_value(payload)?),
            StreamId::Escrow(id) => Event::Escrow(id, serde_json::from_value(payload)?),
            StreamId::Challenge(id) => Event::Challenge(id, serde_json::from_value(payload)?),
            StreamId::Dispute(id) => Event::Dispute(id, serde_json::from_value(payload)?),
            StreamId::Worker(id) => Event::Worker(id, serde_json::from_value(payload)?),
            StreamId::Deposit(id) => Event::Deposit(id, serde_json::from_value(payload)?),
            StreamId::Payout(id) => Event::Payout(id, serde_json::from_value(payload)?),
        })
    }
}

impl HasPostings for Event {
    fn postings(&self) -> Vec<Posting> {
        match self {
            Event::Escrow(job, e) => escrow_postings(*job, e),
            Event::Challenge(id, e) => challenge_postings(*id, e),
            Event::Deposit(_, e) => e.postings(),
            Event::Payout(_, e) => e.postings(),
            Event::Job(_, e) => e.postings(),
            Event::Dispute(_, e) => e.postings(),
            Event::Worker(_, e) => e.postings(),
        }
    }
}

/// A refused command, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Escrow(#[from] EscrowError),
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error(transparent)]
    Dispute(#[from] DisputeError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Deposit(#[from] DepositError),
    #[error(transparent)]
    Payout(#[from] PayoutError),
    #[error("a command caused more than {max} reactions", max = UNIT_OF_WORK_COMMANDS_MAX)]
    TooManyReactions,
}

/// Every aggregate of the marketplace, the ledger and the event log, in memory.
#[derive(Debug, Clone, Default)]
pub struct Marketplace {
    pub jobs: BTreeMap<JobId, Job>,
    pub escrows: BTreeMap<JobId, Escrow>,
    pub challenges: BTreeMap<ChallengeId, Challenge>,
    pub disputes: BTreeMap<DisputeId, Dispute>,
    pub workers: BTreeMap<PartyId, Worker>,
    pub deposits: BTreeMap<DepositId, Deposit>,
    pub payouts: BTreeMap<PayoutId, Payout>,
    pub ledger: Ledger,
    pub log: Vec<Event>,
    /// Settled gross volume per (client, currency, month), for the commission tiers.
    pub month_volume: BTreeMap<(PartyId, Currency, i64), u64>,
    pub schedule: CommissionSchedule,
    /// Seed of the per-command random draw (adaptive replication).
    pub seed: u64,
    /// `None`: this marketplace holds everything (tests, replay, embedded mode). `Some`: it
    /// holds only what a service loaded for one unit of work; see [`Marketplace::execute_loaded`].
    pub partial: Option<Partial>,
}

/// Something a partially loaded marketplace must load before its decision can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    Stream(StreamId),
    Balance(PartyId, Currency),
    MonthVolume(PartyId, Currency, i64),
}

/// What a service has loaded into a partial marketplace, and what a decision asked for that
/// was not there.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    pub streams: BTreeSet<StreamId>,
    pub balances: BTreeSet<(PartyId, Currency)>,
    pub volumes: BTreeSet<(PartyId, Currency, i64)>,
    misses: RefCell<BTreeSet<Need>>,
}

impl Partial {
    fn miss(&self, need: Need) {
        self.misses.borrow_mut().insert(need);
    }
}

impl Facts for Marketplace {
    fn available(&self, party: PartyId, currency: Currency) -> u64 {
        if let Some(p) = &self.partial
            && !p.balances.contains(&(party, currency))
        {
            p.miss(Need::Balance(party, currency));
        }
        self.ledger.available(party, currency)
    }
    fn consecutive_valid(&self, worker: PartyId) -> u32 {
        if let Some(p) = &self.partial
            && !p.streams.contains(&StreamId::Worker(worker))
        {
            p.miss(Need::Stream(StreamId::Worker(worker)));
        }
        self.workers.get(&worker).map_or(0, |w| w.consecutive_valid)
    }
    fn client_month_volume(&self, client: PartyId, currency: Currency, month_index: i64) -> u64 {
        if let Some(p) = &self.partial
            && !p.volumes.contains(&(client, currency, month_index))
        {
            p.miss(Need::MonthVolume(client, currency, month_index));
        }
        self.month_volume.get(&(client, currency, month_index)).copied().unwrap_or(0)
    }
    fn random_u64(&self) -> u64 {
        splitmix64(self.seed ^ (self.log.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    fn commission(&self) -> &CommissionSchedule {
        &self.schedule
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn decide_on<K: Ord, A: Aggregate>(
    map: &BTreeMap<K, A>,
    key: &K,
    cmd: A::Command,
    ctx: &CommandCtx<'_>,
) -> Result<Vec<A::Event>, A::Error> {
    match map.get(key) {
        Some(agg) => agg.handle(cmd, ctx),
        None => A::default().handle(cmd, ctx),
    }
}

impl Marketplace {
    pub fn new(seed: u64) -> Marketplace {
        Marketplace { seed, ..Marketplace::default() }
    }

    /// Run `cmd` and every reaction it causes as one unit: all of it, or (on the first refusal)
    /// none of it. Returns the events written, in order.
    pub fn execute(&mut self, cmd: Command, actor: Actor, now: Timestamp) -> Result<Vec<Event>, MarketError> {
        match self.run_unit(cmd, actor, now) {
            Ok(result) => result,
            // A complete marketplace never misses anything.
            Err(_) => Err(MarketError::TooManyReactions),
        }
    }

    /// The same unit of work on a partially loaded marketplace. `Err(needs)` means the
    /// decision touched streams, balances or volumes that were not loaded: load them and run
    /// again (nothing was changed). `Ok(result)` is the trustworthy domain answer.
    pub fn execute_loaded(
        &mut self,
        cmd: Command,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Result<Vec<Event>, MarketError>, BTreeSet<Need>> {
        if let Some(p) = &self.partial {
            p.misses.borrow_mut().clear();
        }
        self.run_unit(cmd, actor, now)
    }

    fn run_unit(
        &mut self,
        cmd: Command,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Result<Vec<Event>, MarketError>, BTreeSet<Need>> {
        let mut scratch = self.clone();
        let mut produced = Vec::new();
        let mut queue = VecDeque::from([(cmd, actor)]);
        let mut steps = 0;
        let outcome = loop {
            let Some((cmd, actor)) = queue.pop_front() else { break Ok(()) };
            steps += 1;
            if steps > UNIT_OF_WORK_COMMANDS_MAX {
                break Err(MarketError::TooManyReactions);
            }
            if let Some(p) = &scratch.partial {
                let stream = cmd.stream();
                if !p.streams.contains(&stream) {
                    p.miss(Need::Stream(stream));
                    break Ok(());
                }
            }
            match scratch.decide(cmd, actor, now) {
                Ok(events) => {
                    for event in events {
                        scratch.apply(&event);
                        queue.extend(react(&event).into_iter().map(|c| (c, Actor::SYSTEM)));
                        produced.push(event);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if let Some(p) = &scratch.partial {
            let misses = std::mem::take(&mut *p.misses.borrow_mut());
            if !misses.is_empty() {
                return Err(misses);
            }
        }
        Ok(match outcome {
            Ok(()) => {
                *self = scratch;
                Ok(produced)
            }
            Err(e) => Err(e),
        })
    }

    /// A marketplace that holds only what will be loaded into it.
    pub fn partial(seed: u64, schedule: CommissionSchedule) -> Marketplace {
        Marketplace { seed, schedule, partial: Some(Partial::default()), ..Marketplace::default() }
    }

    /// Load a stream's history (aggregate state only: balances are loaded separately).
    pub fn load_stream<'a>(&mut self, stream: StreamId, history: impl IntoIterator<Item = &'a Event>) {
        for event in history {
            self.apply_to_aggregate(event);
        }
        if let Some(p) = &mut self.partial {
            p.streams.insert(stream);
        }
    }

    /// Load a party's available balance as it stands in storage.
    pub fn load_balance(&mut self, party: PartyId, currency: Currency, available: u64) {
        self.ledger.set_opening(crate::ledger::LedgerAccount::Available { party }, currency, i128::from(available));
        if let Some(p) = &mut self.partial {
            p.balances.insert((party, currency));
        }
    }

    /// Load a client's settled volume for one month.
    pub fn load_month_volume(&mut self, client: PartyId, currency: Currency, month_index: i64, volume: u64) {
        self.month_volume.insert((client, currency, month_index), volume);
        if let Some(p) = &mut self.partial {
            p.volumes.insert((client, currency, month_index));
        }
    }

    /// One aggregate's decision, with this marketplace as the source of facts.
    pub fn decide(&self, cmd: Command, actor: Actor, now: Timestamp) -> Result<Vec<Event>, MarketError> {
        let ctx = CommandCtx { now, actor, facts: self };
        Ok(match cmd {
            Command::Job(id, c) => {
                decide_on(&self.jobs, &id, c, &ctx)?.into_iter().map(|e| Event::Job(id, e)).collect()
            }
            Command::Escrow(id, c) => {
                decide_on(&self.escrows, &id, c, &ctx)?.into_iter().map(|e| Event::Escrow(id, e)).collect()
            }
            Command::Challenge(id, c) => {
                decide_on(&self.challenges, &id, c, &ctx)?.into_iter().map(|e| Event::Challenge(id, e)).collect()
            }
            Command::Dispute(id, c) => {
                decide_on(&self.disputes, &id, c, &ctx)?.into_iter().map(|e| Event::Dispute(id, e)).collect()
            }
            Command::Worker(id, c) => {
                decide_on(&self.workers, &id, c, &ctx)?.into_iter().map(|e| Event::Worker(id, e)).collect()
            }
            Command::Deposit(id, c) => {
                decide_on(&self.deposits, &id, c, &ctx)?.into_iter().map(|e| Event::Deposit(id, e)).collect()
            }
            Command::Payout(id, c) => {
                decide_on(&self.payouts, &id, c, &ctx)?.into_iter().map(|e| Event::Payout(id, e)).collect()
            }
        })
    }

    /// Fold one event into the aggregates, the ledger, the monthly volumes and the log.
    pub fn apply(&mut self, event: &Event) {
        for posting in event.postings() {
            self.ledger.post(&posting);
        }
        if let Event::Escrow(_, EscrowEvent::PendingReleased { client, gross, month_index, .. }) = event {
            *self.month_volume.entry((*client, gross.currency, *month_index)).or_default() += gross.minor_units;
        }
        self.apply_to_aggregate(event);
        self.log.push(event.clone());
    }

    /// Fold one event into its aggregate only.
    pub fn apply_to_aggregate(&mut self, event: &Event) {
        match event {
            Event::Job(id, e) => self.jobs.entry(*id).or_default().apply(e),
            Event::Escrow(id, e) => self.escrows.entry(*id).or_default().apply(e),
            Event::Challenge(id, e) => self.challenges.entry(*id).or_default().apply(e),
            Event::Dispute(id, e) => self.disputes.entry(*id).or_default().apply(e),
            Event::Worker(id, e) => self.workers.entry(*id).or_default().apply(e),
            Event::Deposit(id, e) => self.deposits.entry(*id).or_default().apply(e),
            Event::Payout(id, e) => self.payouts.entry(*id).or_default().apply(e),
        }
    }

    /// Rebuild everything from a log (what an auditor's replay does).
    pub fn replay<'a>(seed: u64, events: impl IntoIterator<Item = &'a Event>) -> Marketplace {
        let mut m = Marketplace::new(seed);
        for e in events {
            m.apply(e);
        }
        m
    }
}
