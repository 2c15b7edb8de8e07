//! The Escrow lifecycle as tables: given prior events, when the platform sends a command at
//! an instant, expect exactly these events or this error — and conservation after them.

use uuid::Uuid;

use super::*;
use crate::ctx::{Actor, CommissionSchedule, Facts, Role};
use crate::ledger::Ledger;

const T0_SECS: i64 = 1_795_651_200;
const REWARD: u64 = 1_000;
const BUDGET: u64 = 3 * REWARD;
const COLLATERAL: u64 = 100;
const WINDOW_CLOSES: u64 = 86_600;

const JOB: JobId = JobId(Uuid::from_u128(0x10b));
const CLIENT: PartyId = PartyId(Uuid::from_u128(0xc1));
const W1: PartyId = PartyId(Uuid::from_u128(0x71));
const W2: PartyId = PartyId(Uuid::from_u128(0x72));
const W3: PartyId = PartyId(Uuid::from_u128(0x73));

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0_SECS).plus_secs(secs)
}

fn eur(minor_units: u64) -> Money {
    Money { minor_units, currency: Currency::Eur }
}

fn usd(minor_units: u64) -> Money {
    Money { minor_units, currency: Currency::Usd }
}

const SYSTEM: Actor = Actor::SYSTEM;

fn terms() -> EscrowTerms {
    EscrowTerms { job: JOB, client: CLIENT, reward_per_replica: eur(REWARD), slash_pct: 30 }
}

// ---- facts --------------------------------------------------------------------------------

/// Facts with settable answers: everyone's available balance and the client's month volume.
#[derive(Debug)]
struct World {
    available: u64,
    month_volume: u64,
    schedule: CommissionSchedule,
}

impl Default for World {
    fn default() -> Self {
        World { available: u64::MAX, month_volume: 0, schedule: CommissionSchedule::default() }
    }
}

impl Facts for World {
    fn available(&self, _: PartyId, _: Currency) -> u64 {
        self.available
    }
    fn consecutive_valid(&self, _: PartyId) -> u32 {
        0
    }
    fn client_month_volume(&self, _: PartyId, _: Currency, _: i64) -> u64 {
        self.month_volume
    }
    fn random_u64(&self) -> u64 {
        0
    }
    fn commission(&self) -> &CommissionSchedule {
        &self.schedule
    }
}

fn balance(available: u64) -> World {
    World { available, ..World::default() }
}

fn volume(month_volume: u64) -> World {
    World { month_volume, ..World::default() }
}

// ---- events -------------------------------------------------------------------------------

fn funded(amount: u64) -> EscrowEvent {
    EscrowEvent::EscrowFunded { terms: terms(), amount: eur(amount) }
}

fn locked(task: u32, worker: PartyId) -> EscrowEvent {
    EscrowEvent::CollateralLocked { task, worker, amount: eur(COLLATERAL) }
}

fn returned(task: u32, worker: PartyId) -> EscrowEvent {
    EscrowEvent::CollateralReturned { task, worker, amount: eur(COLLATERAL) }
}

fn slashed(task: u32, worker: PartyId, slashed: u64, returned: u64) -> EscrowEvent {
    EscrowEvent::CollateralSlashed { task, worker, client: CLIENT, slashed: eur(slashed), returned: eur(returned) }
}

fn pending(task: u32, worker: PartyId, amount: u64) -> EscrowEvent {
    EscrowEvent::WorkerPaymentPending { task, worker, amount: eur(amount) }
}

fn clawed(task: u32, worker: PartyId, amount: u64) -> EscrowEvent {
    EscrowEvent::PaymentClawedBack { task, worker, client: CLIENT, amount: eur(amount) }
}

fn released(worker: PartyId, gross: u64, commission: u64, now: Timestamp, volume_before: u64) -> EscrowEvent {
    EscrowEvent::PendingReleased {
        worker,
        client: CLIENT,
        gross: eur(gross),
        commission: eur(commission),
        month_index: now.month_index(),
        volume_before,
    }
}

fn refunded(amount: u64) -> EscrowEvent {
    EscrowEvent::EscrowRefunded { client: CLIENT, amount: eur(amount) }
}

fn scheduled() -> EscrowEvent {
    EscrowEvent::ReleaseScheduled { not_before: at(WINDOW_CLOSES) }
}

// ---- stories ------------------------------------------------------------------------------

/// Funded for three replicas of one task; W1, W2, W3 hold collateral.
fn collateral_held() -> Vec<EscrowEvent> {
    vec![funded(BUDGET), locked(0, W1), locked(0, W2), locked(0, W3)]
}

/// …and all three were paid into pending; the release waits for the window.
fn all_paid() -> Vec<EscrowEvent> {
    let mut events = collateral_held();
    events.extend([pending(0, W1, REWARD), pending(0, W2, REWARD), pending(0, W3, REWARD), scheduled()]);
    events
}

/// …W1 and W2 were paid, W3 was outvoted and slashed.
fn two_paid_one_slashed() -> Vec<EscrowEvent> {
    let mut events = collateral_held();
    events.extend([pending(0, W1, REWARD), pending(0, W2, REWARD), slashed(0, W3, 30, 70), scheduled()]);
    events
}

fn closed() -> Vec<EscrowEvent> {
    vec![funded(BUDGET), refunded(BUDGET), EscrowEvent::EscrowClosed]
}

fn with(mut events: Vec<EscrowEvent>, more: impl IntoIterator<Item = EscrowEvent>) -> Vec<EscrowEvent> {
    events.extend(more);
    events
}

// ---- the check ----------------------------------------------------------------------------

struct Row {
    name: &'static str,
    given: Vec<EscrowEvent>,
    when: EscrowCommand,
    actor: Actor,
    now: Timestamp,
    world: World,
    expect: Result<Vec<EscrowEvent>, EscrowError>,
}

fn row(
    name: &'static str,
    given: Vec<EscrowEvent>,
    when: EscrowCommand,
    now: Timestamp,
    expect: Result<Vec<EscrowEvent>, EscrowError>,
) -> Row {
    Row { name, given, when, actor: SYSTEM, now, world: World::default(), expect }
}

impl Row {
    fn in_world(self, world: World) -> Row {
        Row { world, ..self }
    }

    fn by(self, actor: Actor) -> Row {
        Row { actor, ..self }
    }
}

/// Given a history, when `when` is handled by `actor` at `now`, expect exactly `expect`; after
/// accepted events the escrow is still conserved and agrees with the ledger's accounts.
#[track_caller]
fn check(
    world: &World,
    name: &str,
    given: &[EscrowEvent],
    when: EscrowCommand,
    actor: Actor,
    now: Timestamp,
    expect: Result<Vec<EscrowEvent>, EscrowError>,
) {
    let escrow = Escrow::from_events(given);
    assert!(escrow.is_conserved(), "row: {name}: the given history is not conserved");
    let ctx = CommandCtx { now, actor, facts: world };
    let got = escrow.handle(when.clone(), &ctx);
    assert_eq!(got, expect, "\nrow: {name}\nwhen: {when:?}\n");
    if let Ok(events) = got {
        let history: Vec<EscrowEvent> = given.iter().chain(&events).cloned().collect();
        assert_agrees_with_ledger(name, &history);
    }
}

/// Conservation, and the escrow's own bookkeeping equals the ledger's job-escrow, collateral
/// and pending accounts.
#[track_caller]
fn assert_agrees_with_ledger(name: &str, history: &[EscrowEvent]) {
    let escrow = Escrow::from_events(history);
    assert!(escrow.is_conserved(), "row: {name}: not conserved: {escrow:?}");
    let ledger =
        Ledger::from_events(history.iter().map(|event| EscrowEventOf { job: JOB, event }).collect::<Vec<_>>().iter());
    assert_eq!(ledger.sum(Currency::Eur), 0, "row: {name}");
    let eur_balance = |account| ledger.balance(account, Currency::Eur);
    assert_eq!(eur_balance(LedgerAccount::JobEscrow { job: JOB }), i128::from(escrow.held), "row: {name}: held");
    for w in [W1, W2, W3] {
        let collateral: u64 = escrow.collateral.iter().filter(|((_, x), _)| *x == w).map(|(_, a)| a).sum();
        let pending: u64 = escrow.pending.iter().filter(|((_, x), _)| *x == w).map(|(_, a)| a).sum();
        assert_eq!(
            eur_balance(LedgerAccount::WorkerCollateral { worker: w }),
            i128::from(collateral),
            "row: {name}: collateral"
        );
        assert_eq!(
            eur_balance(LedgerAccount::WorkerPending { worker: w }),
            i128::from(pending),
            "row: {name}: pending"
        );
    }
    assert_eq!(eur_balance(LedgerAccount::PlatformFees), i128::from(escrow.commission), "row: {name}: fees");
}

#[track_caller]
fn check_table(rows: Vec<Row>) {
    for r in rows {
        check(&r.world, r.name, &r.given, r.when, r.actor, r.now, r.expect);
    }
}

// ---- the tables ---------------------------------------------------------------------------

#[test]
fn funding_takes_the_budget_from_the_clients_available_balance() {
    use EscrowError as E;
    let fund = |amount| EscrowCommand::Fund { terms: terms(), amount };
    check_table(vec![
        row("the budget is taken when the client has it", vec![], fund(eur(BUDGET)), at(1), Ok(vec![funded(BUDGET)]))
            .in_world(balance(BUDGET)),
        row(
            "a client short by one cent is refused",
            vec![],
            fund(eur(BUDGET)),
            at(1),
            Err(E::InsufficientFunds { available: eur(BUDGET - 1), requested: eur(BUDGET) }),
        )
        .in_world(balance(BUDGET - 1)),
        row(
            "another currency than the reward's is refused",
            vec![],
            fund(usd(BUDGET)),
            at(1),
            Err(E::WrongCurrency { expected: Currency::Eur, got: Currency::Usd }),
        ),
        row("a zero budget is refused", vec![], fund(eur(0)), at(1), Err(E::ZeroAmount)),
        row("an escrow is funded once", vec![funded(BUDGET)], fund(eur(BUDGET)), at(1), Err(E::AlreadyFunded)),
        row("a closed escrow is not funded again", closed(), fund(eur(BUDGET)), at(1), Err(E::Closed)),
        row("a client cannot move escrowed money itself", vec![], fund(eur(BUDGET)), at(1), Err(E::NotTheSystem))
            .by(Actor { party: CLIENT, role: Role::Client }),
        row("nor can an admin", vec![], fund(eur(BUDGET)), at(1), Err(E::NotTheSystem))
            .by(Actor { party: CLIENT, role: Role::Admin }),
    ]);
}

#[test]
fn collateral_is_held_per_task_and_worker_then_returned_or_slashed_once() {
    use EscrowError as E;
    let lock = |task, worker, amount| EscrowCommand::LockCollateral { task, worker, amount };
    let slash = |task, worker| EscrowCommand::SlashCollateral { task, worker };
    let give_back = |task, worker| EscrowCommand::ReturnCollateral { task, worker };
    let with_slash_pct = |slash_pct| {
        vec![
            EscrowEvent::EscrowFunded { terms: EscrowTerms { slash_pct, ..terms() }, amount: eur(BUDGET) },
            locked(0, W1),
        ]
    };
    check_table(vec![
        row(
            "a worker's collateral is held",
            vec![funded(BUDGET)],
            lock(0, W1, eur(COLLATERAL)),
            at(10),
            Ok(vec![locked(0, W1)]),
        )
        .in_world(balance(COLLATERAL)),
        row(
            "a worker short of the collateral is refused",
            vec![funded(BUDGET)],
            lock(0, W1, eur(COLLATERAL)),
            at(10),
            Err(E::InsufficientFunds { available: eur(COLLATERAL - 1), requested: eur(COLLATERAL) }),
        )
        .in_world(balance(COLLATERAL - 1)),
        row("zero collateral holds nothing", vec![funded(BUDGET)], lock(0, W1, eur(0)), at(10), Ok(vec![]))
            .in_world(balance(0)),
        row(
            "collateral is held once per task and worker",
            collateral_held(),
            lock(0, W1, eur(COLLATERAL)),
            at(10),
            Err(E::CollateralAlreadyHeld { task: 0 }),
        ),
        row(
            "the same worker on another task holds collateral again",
            collateral_held(),
            lock(1, W1, eur(COLLATERAL)),
            at(10),
            Ok(vec![EscrowEvent::CollateralLocked { task: 1, worker: W1, amount: eur(COLLATERAL) }]),
        ),
        row(
            "collateral in another currency is refused",
            vec![funded(BUDGET)],
            lock(0, W1, usd(COLLATERAL)),
            at(10),
            Err(E::WrongCurrency { expected: Currency::Eur, got: Currency::Usd }),
        ),
        row("no collateral before funding", vec![], lock(0, W1, eur(COLLATERAL)), at(10), Err(E::NotFunded)),
        row("no collateral after closing", closed(), lock(0, W1, eur(COLLATERAL)), at(10), Err(E::Closed)),
        row(
            "held collateral is returned in full",
            collateral_held(),
            give_back(0, W1),
            at(20),
            Ok(vec![returned(0, W1)]),
        ),
        row("returning collateral nobody holds does nothing", collateral_held(), give_back(1, W1), at(20), Ok(vec![])),
        row(
            "returned collateral is not returned twice",
            with(collateral_held(), [returned(0, W1)]),
            give_back(0, W1),
            at(20),
            Ok(vec![]),
        ),
        row(
            "slashing takes ⌊30 %⌋ to the client and returns the rest",
            collateral_held(),
            slash(0, W3),
            at(20),
            Ok(vec![slashed(0, W3, 30, 70)]),
        ),
        row(
            "slashing takes at least one cent",
            vec![funded(BUDGET), EscrowEvent::CollateralLocked { task: 0, worker: W1, amount: eur(2) }],
            slash(0, W1),
            at(20),
            Ok(vec![slashed(0, W1, 1, 1)]),
        ),
        row(
            "a 0 % slash returns everything",
            with_slash_pct(0),
            slash(0, W1),
            at(20),
            Ok(vec![slashed(0, W1, 0, COLLATERAL)]),
        ),
        row(
            "a 100 % slash takes everything",
            with_slash_pct(100),
            slash(0, W1),
            at(20),
            Ok(vec![slashed(0, W1, COLLATERAL, 0)]),
        ),
        row(
            "slashed collateral is not slashed twice",
            with(collateral_held(), [slashed(0, W3, 30, 70)]),
            slash(0, W3),
            at(20),
            Ok(vec![]),
        ),
        row(
            "returned collateral cannot be slashed",
            with(collateral_held(), [returned(0, W3)]),
            slash(0, W3),
            at(20),
            Ok(vec![]),
        ),
        row("nothing is slashed after closing", closed(), slash(0, W1), at(20), Err(E::Closed)),
        row(
            "a worker cannot return its own collateral",
            collateral_held(),
            give_back(0, W1),
            at(20),
            Err(E::NotTheSystem),
        )
        .by(Actor { party: W1, role: Role::Worker }),
    ]);
}

#[test]
fn verified_workers_are_paid_into_pending_once_and_an_upheld_challenge_claws_it_back() {
    use EscrowError as E;
    let pay = |workers: &[PartyId]| EscrowCommand::PayWorkers { task: 0, workers: workers.to_vec() };
    let claw = |workers: &[PartyId]| EscrowCommand::ClawBack { task: 0, workers: workers.to_vec() };
    check_table(vec![
        row(
            "each accepted worker's reward moves to pending",
            collateral_held(),
            pay(&[W1, W2, W3]),
            at(200),
            Ok(vec![pending(0, W1, REWARD), pending(0, W2, REWARD), pending(0, W3, REWARD)]),
        ),
        row(
            "a worker is paid once per task",
            with(collateral_held(), [pending(0, W1, REWARD)]),
            pay(&[W2, W1]),
            at(200),
            Err(E::AlreadyPaid { task: 0 }),
        ),
        row(
            "the escrow cannot pay more than it holds",
            vec![funded(REWARD)],
            pay(&[W1, W2]),
            at(200),
            Err(E::EscrowExhausted { held: eur(0), requested: eur(REWARD) }),
        ),
        row("nobody is paid before funding", vec![], pay(&[W1]), at(200), Err(E::NotFunded)),
        row(
            "an upheld challenge claws the accused workers' pending back to the client",
            all_paid(),
            claw(&[W1, W2]),
            at(1_000),
            Ok(vec![clawed(0, W1, REWARD), clawed(0, W2, REWARD)]),
        ),
        row(
            "a worker with nothing pending has nothing to claw back",
            two_paid_one_slashed(),
            claw(&[W3]),
            at(1_000),
            Ok(vec![]),
        ),
        row(
            "clawed-back pending is not clawed twice",
            with(all_paid(), [clawed(0, W1, REWARD)]),
            claw(&[W1]),
            at(1_000),
            Ok(vec![]),
        ),
    ]);
}

#[test]
fn a_dispute_outcome_splits_each_workers_stake_by_the_client_percentage() {
    use EscrowError as E;
    let decide = |workers: &[PartyId], client_pct| EscrowCommand::ApplyDisputeOutcome {
        task: 0,
        workers: workers.to_vec(),
        client_pct,
    };
    check_table(vec![
        row(
            "unpaid workers: the workers' share moves to pending, the client's stays to be refunded",
            collateral_held(),
            decide(&[W1, W2, W3], 30),
            at(9_000),
            Ok(vec![pending(0, W1, 700), pending(0, W2, 700), pending(0, W3, 700)]),
        ),
        row(
            "unpaid workers, refund: nothing moves now",
            collateral_held(),
            decide(&[W1, W2, W3], 100),
            at(9_000),
            Ok(vec![]),
        ),
        row(
            "unpaid workers, payout: the whole reward moves to pending",
            collateral_held(),
            decide(&[W1, W2], 0),
            at(9_000),
            Ok(vec![pending(0, W1, REWARD), pending(0, W2, REWARD)]),
        ),
        row(
            "the client's share is rounded down: 33 % of 10.00 leaves 6.70 to the worker",
            collateral_held(),
            decide(&[W1], 33),
            at(9_000),
            Ok(vec![pending(0, W1, 670)]),
        ),
        row(
            "paid workers: the client's share comes back from pending",
            all_paid(),
            decide(&[W1, W2, W3], 30),
            at(9_000),
            Ok(vec![clawed(0, W1, 300), clawed(0, W2, 300), clawed(0, W3, 300)]),
        ),
        row("paid workers, payout: nothing moves", all_paid(), decide(&[W1, W2, W3], 0), at(9_000), Ok(vec![])),
        row(
            "a worker paid and clawed back in full gets nothing again",
            with(all_paid(), [clawed(0, W1, REWARD)]),
            decide(&[W1], 0),
            at(9_000),
            Ok(vec![]),
        ),
        row("a percentage above 100 is refused", all_paid(), decide(&[W1], 101), at(9_000), Err(E::Percentage)),
    ]);
}

#[test]
fn release_waits_for_the_window_then_pays_pending_minus_commission_and_refunds_the_rest() {
    use EscrowError as E;
    let now = at(WINDOW_CLOSES);
    check_table(vec![
        row(
            "the release is scheduled for the window's end",
            collateral_held(),
            EscrowCommand::ScheduleRelease { not_before: at(WINDOW_CLOSES) },
            at(200),
            Ok(vec![scheduled()]),
        ),
        row(
            "no release before the window closes",
            all_paid(),
            EscrowCommand::Release,
            at(WINDOW_CLOSES - 1),
            Err(E::ReleaseBeforeWindowClosed { not_before: at(WINDOW_CLOSES) }),
        ),
        row(
            "at the window's end: pending to available minus 8 %, collateral back, escrow closed",
            all_paid(),
            EscrowCommand::Release,
            now,
            Ok(vec![
                released(W1, REWARD, 80, now, 0),
                released(W2, REWARD, 80, now, REWARD),
                released(W3, REWARD, 80, now, 2 * REWARD),
                returned(0, W1),
                returned(0, W2),
                returned(0, W3),
                EscrowEvent::EscrowClosed,
            ]),
        ),
        row(
            "the outvoted worker's unpaid reward is refunded to the client",
            two_paid_one_slashed(),
            EscrowCommand::Release,
            now,
            Ok(vec![
                released(W1, REWARD, 80, now, 0),
                released(W2, REWARD, 80, now, REWARD),
                returned(0, W1),
                returned(0, W2),
                refunded(REWARD),
                EscrowEvent::EscrowClosed,
            ]),
        ),
        row(
            "the commission crosses into 12 % at the client's monthly threshold",
            all_paid(),
            EscrowCommand::Release,
            now,
            Ok(vec![
                released(W1, REWARD, 40 + 60, now, 999_500),
                released(W2, REWARD, 120, now, 1_000_500),
                released(W3, REWARD, 120, now, 1_001_500),
                returned(0, W1),
                returned(0, W2),
                returned(0, W3),
                EscrowEvent::EscrowClosed,
            ]),
        )
        .in_world(volume(999_500)),
        row(
            "a worker paid on two tasks is released once, for the sum",
            vec![funded(2 * REWARD), pending(0, W1, REWARD), pending(1, W1, REWARD)],
            EscrowCommand::Release,
            now,
            Ok(vec![released(W1, 2 * REWARD, 160, now, 0), EscrowEvent::EscrowClosed]),
        ),
        row(
            "without a schedule the release may run at once",
            vec![funded(BUDGET)],
            EscrowCommand::Release,
            at(5),
            Ok(vec![refunded(BUDGET), EscrowEvent::EscrowClosed]),
        ),
        row("a closed escrow is not released again", closed(), EscrowCommand::Release, now, Err(E::Closed)),
        row("an unfunded escrow has nothing to release", vec![], EscrowCommand::Release, now, Err(E::NotFunded)),
    ]);
}

#[test]
fn a_refund_returns_everything_before_anyone_was_paid() {
    use EscrowError as E;
    check_table(vec![
        row("an unfunded escrow refunds nothing", vec![], EscrowCommand::Refund, at(5), Ok(vec![])),
        row(
            "a funded escrow refunds the budget and closes",
            vec![funded(BUDGET)],
            EscrowCommand::Refund,
            at(5),
            Ok(vec![refunded(BUDGET), EscrowEvent::EscrowClosed]),
        ),
        row(
            "held collateral is returned with the refund",
            with(vec![funded(BUDGET)], [locked(0, W1)]),
            EscrowCommand::Refund,
            at(5),
            Ok(vec![returned(0, W1), refunded(BUDGET), EscrowEvent::EscrowClosed]),
        ),
        row(
            "pending payments are released, not refunded",
            all_paid(),
            EscrowCommand::Refund,
            at(5),
            Err(E::PendingPayments),
        ),
        row("a closed escrow refunds nothing twice", closed(), EscrowCommand::Refund, at(5), Err(E::Closed)),
        row("a client cannot refund itself", vec![funded(BUDGET)], EscrowCommand::Refund, at(5), Err(E::NotTheSystem))
            .by(Actor { party: CLIENT, role: Role::Client }),
    ]);
}

#[test]
fn each_money_event_posts_between_the_accounts_it_names() {
    use LedgerAccount as L;
    let escrow = L::JobEscrow { job: JOB };
    let post = |from, to, amount| Posting::new(from, to, eur(amount));
    let rows: Vec<(&str, EscrowEvent, Vec<Posting>)> = vec![
        ("funding", funded(BUDGET), vec![post(L::Available { party: CLIENT }, escrow, BUDGET)]),
        (
            "collateral held",
            locked(0, W1),
            vec![post(L::Available { party: W1 }, L::WorkerCollateral { worker: W1 }, COLLATERAL)],
        ),
        (
            "collateral returned",
            returned(0, W1),
            vec![post(L::WorkerCollateral { worker: W1 }, L::Available { party: W1 }, COLLATERAL)],
        ),
        (
            "collateral slashed: one debit, two destinations",
            slashed(0, W1, 30, 70),
            vec![
                post(L::WorkerCollateral { worker: W1 }, L::Available { party: CLIENT }, 30),
                post(L::WorkerCollateral { worker: W1 }, L::Available { party: W1 }, 70),
            ],
        ),
        (
            "a full slash posts no zero remainder",
            slashed(0, W1, 100, 0),
            vec![post(L::WorkerCollateral { worker: W1 }, L::Available { party: CLIENT }, 100)],
        ),
        ("payment pending", pending(0, W1, REWARD), vec![post(escrow, L::WorkerPending { worker: W1 }, REWARD)]),
        (
            "clawed back",
            clawed(0, W1, REWARD),
            vec![post(L::WorkerPending { worker: W1 }, L::Available { party: CLIENT }, REWARD)],
        ),
        (
            "released: net to the worker, commission to the platform",
            released(W1, REWARD, 80, at(0), 0),
            vec![
                post(L::WorkerPending { worker: W1 }, L::Available { party: W1 }, 920),
                post(L::WorkerPending { worker: W1 }, L::PlatformFees, 80),
            ],
        ),
        ("refunded", refunded(REWARD), vec![post(escrow, L::Available { party: CLIENT }, REWARD)]),
        ("scheduled", scheduled(), vec![]),
        ("closed", EscrowEvent::EscrowClosed, vec![]),
    ];
    for (name, event, expected) in rows {
        assert_eq!(escrow_postings(JOB, &event), expected, "{name}");
    }
}
