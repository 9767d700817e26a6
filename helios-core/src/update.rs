//! Rolling updates (Nomad's `update` block): when a service job's new version replaces its
//! allocations, at most `max_parallel` of a group are being replaced at once, and the next ones
//! only once the new ones are healthy, so an update never takes more of a service down than its
//! owner allows, and a version that does not come up healthy stops the rollout. A rolling
//! update is watched by a deployment (`crate::deployment`), which adds canaries, promotion,
//! a progress deadline and reverting to the last stable version.

use serde::{Deserialize, Serialize};

use crate::migrate::{HealthCheck, MigrateStrategy};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpdateStrategy {
    /// Allocations of the group replaced at once; 0: all at once (no `update` block).
    pub max_parallel: u32,
    pub health_check: HealthCheck,
    /// How long every task of a new allocation must have run to count as healthy.
    pub min_healthy_time_secs: u64,
    /// A new allocation not healthy by then is unhealthy: the rollout stops there.
    pub healthy_deadline_secs: u64,
    /// The deployment fails when no new allocation has become healthy for this long; 0: never.
    pub progress_deadline_secs: u64,
    /// A failed deployment registers the job's last stable version again.
    pub auto_revert: bool,
    /// The deployment promotes itself once every canary is healthy.
    pub auto_promote: bool,
    /// New-version allocations placed beside the old ones, which keep running until the
    /// deployment is promoted.
    pub canary: u32,
    /// A system job's rolling update: the wait between sets of `max_parallel` replacements
    /// (Nomad's; service jobs pace their waves by health instead, and ignore it as Nomad does).
    pub stagger_secs: u64,
}

impl Default for UpdateStrategy {
    /// No `update` block: a new version replaces every allocation at once.
    fn default() -> UpdateStrategy {
        UpdateStrategy {
            max_parallel: 0,
            health_check: HealthCheck::Checks,
            min_healthy_time_secs: 10,
            healthy_deadline_secs: 300,
            progress_deadline_secs: 600,
            auto_revert: false,
            auto_promote: false,
            canary: 0,
            stagger_secs: 30,
        }
    }
}

impl UpdateStrategy {
    /// Nomad's defaults for an `update` block that names none: one at a time, healthy after
    /// 10 s, unhealthy after 5 minutes, the deployment failing after 10 minutes without progress.
    pub fn nomad_block_defaults() -> UpdateStrategy {
        UpdateStrategy { max_parallel: 1, ..UpdateStrategy::default() }
    }

    pub fn is_rolling(&self) -> bool {
        self.max_parallel > 0
    }

    /// Nomad's rules, as (field, problem); field names as in the job file: those of its
    /// health rule (the same as a drain's) when it rolls.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let defaults = UpdateStrategy::default();
        let deployment_fields = self.canary > 0
            || self.auto_revert
            || self.auto_promote
            || self.progress_deadline_secs != defaults.progress_deadline_secs
            || self.health_check == HealthCheck::Manual;
        if self.is_rolling() {
            out = self.health_rule().problems();
        } else if deployment_fields {
            // Without waves there is no deployment to honour them.
            out.push((
                "max_parallel",
                "must be at least 1 for canary, auto_revert, auto_promote, progress_deadline or manual health"
                    .to_string(),
            ));
        }
        if self.progress_deadline_secs != 0 && self.progress_deadline_secs <= self.healthy_deadline_secs {
            out.push((
                "progress_deadline",
                format!(
                    "must be 0 or more than healthy_deadline ({}s), got {}s",
                    self.healthy_deadline_secs, self.progress_deadline_secs
                ),
            ));
        }
        if self.auto_promote && self.canary == 0 {
            out.push(("auto_promote", "needs canary greater than 0".to_string()));
        }
        out
    }

    /// Whether a new version of the group is rolled out under a deployment (a service's).
    pub fn has_deployment(&self) -> bool {
        self.is_rolling()
    }

    /// What a system job's `update` may not ask for, as (field, problem): Nomad rolls system
    /// jobs by `max_parallel` and `stagger` alone, with no deployment, so canaries, promotion,
    /// reverts and manual health cannot be honoured (the health timings do not apply, as in
    /// Nomad, and are ignored: a job file says so).
    pub fn system_problems(&self) -> Vec<(&'static str, String)> {
        let fields = [
            ("canary", self.canary > 0),
            ("auto_promote", self.auto_promote),
            ("auto_revert", self.auto_revert),
            ("health_check", self.health_check == HealthCheck::Manual),
        ];
        fields
            .into_iter()
            .filter(|(_, asked)| *asked)
            .map(|(field, _)| {
                (
                    field,
                    "a system job rolls by max_parallel and stagger only, with no deployment: leave it out".to_string(),
                )
            })
            .collect()
    }

    /// The health rule a new allocation is judged by (the same as a drain's).
    pub fn health_rule(&self) -> MigrateStrategy {
        MigrateStrategy {
            max_parallel: self.max_parallel,
            health_check: self.health_check,
            min_healthy_time_secs: self.min_healthy_time_secs,
            healthy_deadline_secs: self.healthy_deadline_secs,
        }
    }
}
