//! Blocking reads (Nomad's blocking queries): a Get or List call with `min_index` waits until
//! what it reads has changed after that index, or until its `wait` has passed, then answers
//! with the index its answer reflects, which the caller passes back as the next `min_index`.
//!
//! "What it reads" is a set of topics (`helios_core::events::Topic`): each topic's latest index
//! is moved by the state machine as it applies (`crate::events::Events`), so a waiting read
//! costs nothing until its topics change.

use std::time::Duration;

use helios_api::blocking::BlockingRead;
use helios_api::convert::duration_from_pb;
use helios_core::events::Topic;
use tonic::{Request, Status};

use super::errors::invalid;
use super::status_codes::{ahead_of, answer_by, grpc_timeout};
use crate::cluster::{Cluster, ClusterError};

/// Nomad's: how long a blocking read waits when `wait` is not given, and the most it waits.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// What a read call asked for: to wait (`min_index`), for how long at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    min_index: Option<u64>,
    wait: Duration,
}

impl Blocking {
    /// The terms of `request`: `wait` is capped at `MAX_WAIT`, and ends early enough to answer
    /// within the call's own deadline.
    pub fn of<T: BlockingRead>(request: &Request<T>) -> Result<Blocking, Status> {
        let min_index = request.get_ref().min_index();
        let wait = match request.get_ref().wait() {
            None => DEFAULT_WAIT,
            Some(wait) => duration_from_pb(wait).map_err(|problem| invalid("wait", problem))?,
        };
        let mut wait = wait.min(MAX_WAIT);
        if let Some(deadline) = grpc_timeout(request.metadata().as_ref()) {
            // The answer must leave before the caller gives up on it, and before `StatusCodes`
            // answers DEADLINE_EXCEEDED in its place (at `answer_by`): as long again earlier.
            wait = wait.min(answer_by(deadline).saturating_sub(ahead_of(deadline)));
        }
        Ok(Blocking { min_index, wait })
    }

    /// Waits as asked (not at all without `min_index`), then catches up with the leader (as a
    /// linearizable read does) and returns the latest index that changed `topics`: tables read
    /// from now on (`Cluster::read_local`) reflect at least it and every write committed before
    /// the call. (A change's index is published after its commit, so an index read before the
    /// tables never runs ahead of them.)
    pub async fn wait(&self, cluster: &Cluster, topics: &[Topic]) -> Result<u64, ClusterError> {
        let events = &cluster.signals.events;
        if let Some(min_index) = self.min_index {
            // A stopping server answers its waiting reads at once rather than hold its shutdown.
            let mut closed = cluster.signals.closed();
            tokio::select! {
                () = events.changed_after(topics, min_index, self.wait) => {}
                _ = closed.wait_for(|closed| *closed) => {}
            }
        }
        cluster.linearize().await?;
        Ok(events.index_of(topics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        timeout: Option<&str>,
        min_index: Option<u64>,
        wait: Option<&helios_api::prost_types::Duration>,
    ) -> Request<helios_api::pb::GetJobRequest> {
        let read = helios_api::pb::GetJobRequest { name: "web".into(), min_index, wait: wait.cloned() };
        let mut request = Request::new(read);
        if let Some(t) = timeout {
            request.metadata_mut().insert("grpc-timeout", t.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn the_wait_defaults_to_five_minutes_is_capped_at_ten_and_ends_before_the_deadline() {
        let unset = Blocking::of(&request(None, Some(3), None)).expect("valid");
        assert_eq!(unset, Blocking { min_index: Some(3), wait: DEFAULT_WAIT });
        let long = helios_api::prost_types::Duration { seconds: 3600, nanos: 0 };
        assert_eq!(Blocking::of(&request(None, Some(3), Some(&long))).expect("valid").wait, MAX_WAIT);
        // A 10 s deadline: answered after 8 s at most (StatusCodes would answer at 9 s).
        assert_eq!(Blocking::of(&request(Some("10S"), Some(3), None)).expect("valid").wait, Duration::from_secs(8));
        assert_eq!(Blocking::of(&request(Some("2000m"), None, None)).expect("valid").wait, Duration::from_millis(1600));
        // A minute: two seconds early, however long the deadline.
        assert_eq!(Blocking::of(&request(Some("60S"), None, None)).expect("valid").wait, Duration::from_secs(58));
        let negative = helios_api::prost_types::Duration { seconds: -5, nanos: 0 };
        let refused = Blocking::of(&request(None, Some(3), Some(&negative))).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("wait"), "{}", refused.message());
    }
}
