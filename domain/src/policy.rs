//! A job's verification policy: how many replicas, how many must agree, how results are
//! compared, how long the challenge window is, and what the workers put at stake.

use serde::{Deserialize, Serialize};

/// How two revealed results are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Verification {
    /// The SHA-256 digests of the result manifests must be equal.
    Exact,
    /// The reported metric values (integers in millionths) must lie within `tolerance`.
    Metric { tolerance_micros: u64 },
}

/// The named task classes and their defaults (from the seed's policy profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskClass {
    /// The TZ's "3×, 2/3, 24 h": N=3, M=2, 24 h window, collateral 10 %, slash 30 %.
    DscmVerified,
    ScientificSimulation,
    BiomedicalModeling,
    DataAnalytics,
    /// One replica, no window, no collateral: for trusted deterministic baselines.
    DeterministicBaseline,
}

impl TaskClass {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskClass::DscmVerified => "dscm_verified",
            TaskClass::ScientificSimulation => "scientific_simulation",
            TaskClass::BiomedicalModeling => "biomedical_modeling",
            TaskClass::DataAnalytics => "data_analytics",
            TaskClass::DeterministicBaseline => "deterministic_baseline",
        }
    }

    pub fn defaults(self) -> VerificationPolicy {
        let p = |replication, quorum, window_secs, collateral_pct, slash_pct| VerificationPolicy {
            replication,
            quorum,
            verification: Verification::Exact,
            window_secs,
            collateral_pct,
            slash_pct,
        };
        match self {
            TaskClass::DscmVerified => p(3, 2, 86_400, 10, 30),
            TaskClass::ScientificSimulation => p(2, 2, 7_200, 5, 25),
            TaskClass::BiomedicalModeling => p(2, 2, 14_400, 8, 30),
            TaskClass::DataAnalytics => p(2, 2, 0, 4, 20),
            TaskClass::DeterministicBaseline => p(1, 1, 0, 0, 0),
        }
    }
}

/// The rules a job's results are verified and paid by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationPolicy {
    /// N: replicas per task, 1..=5.
    pub replication: u8,
    /// M: how many replicas must agree, 1..=N (default ⌊N/2⌋+1).
    pub quorum: u8,
    pub verification: Verification,
    /// The challenge window after verification, 0..=7 days.
    pub window_secs: u64,
    /// Collateral per replica, as a percentage of the replica's reward.
    pub collateral_pct: u8,
    /// The share of a wrong worker's collateral that is slashed.
    pub slash_pct: u8,
}

/// Why a policy is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("replication must be 1..=5, got {0}")]
    Replication(u8),
    #[error("quorum must be 1..={replication}, got {quorum}")]
    Quorum { quorum: u8, replication: u8 },
    #[error("challenge window must be at most {max} s, got {0}", max = VerificationPolicy::WINDOW_SECS_MAX)]
    Window(u64),
    #[error("collateral percentage must be 0..=100, got {0}")]
    CollateralPct(u8),
    #[error("slash percentage must be 0..=100, got {0}")]
    SlashPct(u8),
    #[error("metric tolerance must be at most {max} millionths, got {0}", max = VerificationPolicy::TOLERANCE_MICROS_MAX)]
    Tolerance(u64),
}

impl VerificationPolicy {
    pub const REPLICATION_MAX: u8 = 5;
    pub const WINDOW_SECS_MAX: u64 = 7 * 86_400;
    pub const WINDOW_SECS_DEFAULT: u64 = 86_400;
    pub const TOLERANCE_MICROS_MAX: u64 = 1_000_000_000_000;

    /// ⌊N/2⌋+1.
    pub fn default_quorum(replication: u8) -> u8 {
        replication / 2 + 1
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(1..=Self::REPLICATION_MAX).contains(&self.replication) {
            return Err(PolicyError::Replication(self.replication));
        }
        if !(1..=self.replication).contains(&self.quorum) {
            return Err(PolicyError::Quorum { quorum: self.quorum, replication: self.replication });
        }
        if self.window_secs > Self::WINDOW_SECS_MAX {
            return Err(PolicyError::Window(self.window_secs));
        }
        if self.collateral_pct > 100 {
            return Err(PolicyError::CollateralPct(self.collateral_pct));
        }
        if self.slash_pct > 100 {
            return Err(PolicyError::SlashPct(self.slash_pct));
        }
        if let Verification::Metric { tolerance_micros } = self.verification
            && tolerance_micros > Self::TOLERANCE_MICROS_MAX
        {
            return Err(PolicyError::Tolerance(tolerance_micros));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_default_is_valid_and_dscm_verified_matches_the_seed() {
        for class in [
            TaskClass::DscmVerified,
            TaskClass::ScientificSimulation,
            TaskClass::BiomedicalModeling,
            TaskClass::DataAnalytics,
            TaskClass::DeterministicBaseline,
        ] {
            assert_eq!(class.defaults().validate(), Ok(()), "{class:?}");
        }
        let p = TaskClass::DscmVerified.defaults();
        assert_eq!((p.replication, p.quorum, p.window_secs, p.collateral_pct, p.slash_pct), (3, 2, 86_400, 10, 30));
    }

    #[test]
    fn out_of_range_policies_are_refused() {
        let ok = TaskClass::DscmVerified.defaults();
        assert_eq!(VerificationPolicy { replication: 0, ..ok }.validate(), Err(PolicyError::Replication(0)));
        assert_eq!(VerificationPolicy { replication: 6, ..ok }.validate(), Err(PolicyError::Replication(6)));
        assert_eq!(
            VerificationPolicy { quorum: 4, ..ok }.validate(),
            Err(PolicyError::Quorum { quorum: 4, replication: 3 })
        );
        assert_eq!(VerificationPolicy { window_secs: 604_801, ..ok }.validate(), Err(PolicyError::Window(604_801)));
        assert_eq!(VerificationPolicy { slash_pct: 101, ..ok }.validate(), Err(PolicyError::SlashPct(101)));
        assert_eq!(VerificationPolicy::default_quorum(3), 2);
        assert_eq!(VerificationPolicy::default_quorum(4), 3);
        assert_eq!(VerificationPolicy::default_quorum(1), 1);
    }
}
