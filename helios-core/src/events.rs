//! The event stream's pure parts: the topics, what a subscriber asked for, and the bounded log of
//! recent batches that a reconnecting subscriber resumes from.
//!
//! Every write of a job, allocation, node, evaluation or deployment row is an event, stamped
//! with the Raft index of the entry that made it; a batch is one index's events. Every server
//! applies the same entries, so an index means the same batch on each of them, and a subscriber
//! may resume on any server whose log still holds what it missed.

use std::collections::VecDeque;

/// What an event is about (Nomad's event topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    Job,
    Allocation,
    Node,
    Evaluation,
    Deployment,
}

impl Topic {
    pub const ALL: [Topic; 5] = [Topic::Job, Topic::Allocation, Topic::Node, Topic::Evaluation, Topic::Deployment];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Job => "Job",
            Topic::Allocation => "Allocation",
            Topic::Node => "Node",
            Topic::Evaluation => "Evaluation",
            Topic::Deployment => "Deployment",
        }
    }

    /// A topic by its name, in any case (`job`, `Job`).
    pub fn parse(text: &str) -> Result<Topic, String> {
        Topic::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(text)).ok_or_else(|| {
            let names: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
            format!("unknown topic {text:?}: one of {}", names.join(", "))
        })
    }

    /// Its place in `Topic::ALL`: indexes kept per topic are arrays.
    pub fn position(self) -> usize {
        self as usize
    }
}

/// What a subscriber wants: per topic, every event (no keys) or those with one of the keys (an
/// event's keys are its object's id and the ids it belongs to: an allocation's are its id, its
/// job's name and its node's id). No filter at all: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    filters: Vec<(Topic, Vec<String>)>,
}

impl Subscription {
    /// Filters of the same topic merge; a topic asked for without keys takes all of its events.
    pub fn new(filters: impl IntoIterator<Item = (Topic, Vec<String>)>) -> Subscription {
        let mut merged: Vec<(Topic, Vec<String>)> = Vec::new();
        for (topic, keys) in filters {
            match merged.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, held)) if held.is_empty() || keys.is_empty() => held.clear(),
                Some((_, held)) => held.extend(keys),
                None => merged.push((topic, keys)),
            }
        }
        Subscription { filters: merged }
    }

    /// The topics it may receive events of.
    pub fn topics(&self) -> Vec<Topic> {
        if self.filters.is_empty() {
            Topic::ALL.to_vec()
        } else {
            self.filters.iter().map(|(t, _)| *t).collect()
        }
    }

    /// Whether an event of `topic` with `keys` is for it.
    pub fn wants(&self, topic: Topic, keys: &[String]) -> bool {
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|(t, wanted)| *t == topic && (wanted.is_empty() || wanted.iter().any(|w| keys.contains(w))))
    }
}

/// The log no longer holds everything after the index asked for: the subscriber must read the
/// state afresh and subscribe from the index that read reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    /// The oldest index the log can resume from now.
    pub first_available: u64,
}

/// The most recent batches of events, at most `capacity` events and `max_bytes` of them (always
/// the latest batch), oldest dropped first.
#[derive(Debug)]
pub struct EventLog<T> {
    /// Each batch with its index and its weight in bytes.
    batches: VecDeque<(u64, Vec<T>, usize)>,
    events: usize,
    bytes: usize,
    capacity: usize,
    max_bytes: usize,
    /// Every batch from this index on is held (a batch of no events is none).
    first_available: u64,
    /// The latest index seen, with or without events.
    latest: u64,
}

impl<T: Clone> EventLog<T> {
    /// An empty log of state that reflects every index up to `applied`: what came before it is
    /// not known (a server that starts has only its tables, not their history).
    pub fn new(capacity: usize, max_bytes: usize, applied: u64) -> EventLog<T> {
        EventLog {
            batches: VecDeque::new(),
            events: 0,
            bytes: 0,
            capacity: capacity.max(1),
            max_bytes,
            first_available: applied + 1,
            latest: applied,
        }
    }

    /// Adds the events of entry `index`, later than any added before, weighing `bytes`.
    pub fn push(&mut self, index: u64, events: Vec<T>, bytes: usize) {
        debug_assert!(self.batches.back().is_none_or(|(last, _, _)| *last < index), "indexes only grow");
        self.seen(index);
        if events.is_empty() {
            return;
        }
        self.events += events.len();
        self.bytes += bytes;
        self.batches.push_back((index, events, bytes));
        while (self.events > self.capacity || self.bytes > self.max_bytes) && self.batches.len() > 1 {
            if let Some((dropped, events, bytes)) = self.batches.pop_front() {
                self.events -= events.len();
                self.bytes -= bytes;
                self.first_available = dropped + 1;
            }
        }
    }

    /// Entries up to `index` were applied (most make no events).
    pub fn seen(&mut self, index: u64) {
        self.latest = self.latest.max(index);
    }

    /// The latest index seen: a subscription from now on starts after it.
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// The state was replaced whole at `index` (a snapshot installed or restored): the history
    /// before it no longer leads to the state.
    pub fn reset(&mut self, index: u64) {
        self.batches.clear();
        self.events = 0;
        self.bytes = 0;
        self.first_available = self.first_available.max(index + 1);
        self.seen(index);
    }

    /// Every batch of index `from` or later, oldest first; `TooOld` when some may be missing.
    pub fn since(&self, from: u64) -> Result<Vec<(u64, Vec<T>)>, TooOld> {
        if from < self.first_available {
            return Err(TooOld { first_available: self.first_available });
        }
        let start = self.batches.partition_point(|(index, _, _)| *index < from);
        Ok(self.batches.range(start..).map(|(index, events, _)| (*index, events.clone())).collect())
    }

    pub fn first_available(&self) -> u64 {
        self.first_available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_resumes_from_any_index_the_log_still_holds() {
        let mut log = EventLog::new(4, usize::MAX, 10);
        log.push(11, vec!["a", "b"], 0);
        log.push(12, Vec::new(), 0);
        log.push(13, vec!["c"], 0);
        assert_eq!(log.since(11), Ok(vec![(11, vec!["a", "b"]), (13, vec!["c"])]));
        assert_eq!(log.since(12), Ok(vec![(13, vec!["c"])]));
        assert_eq!(log.since(14), Ok(Vec::new()), "nothing yet after the latest");
        // Before the log's start: the server knows only its tables as of index 10.
        assert_eq!(log.since(10), Err(TooOld { first_available: 11 }));
        assert_eq!(log.latest(), 13);
        log.seen(15);
        assert_eq!((log.latest(), log.since(14)), (15, Ok(Vec::new())));
    }

    #[test]
    fn the_oldest_batches_go_first_and_a_subscriber_behind_them_is_told() {
        let mut log = EventLog::new(3, usize::MAX, 0);
        log.push(1, vec![1, 2], 0);
        log.push(2, vec![3], 0);
        log.push(3, vec![4], 0);
        assert_eq!(log.since(1), Err(TooOld { first_available: 2 }));
        assert_eq!(log.since(2), Ok(vec![(2, vec![3]), (3, vec![4])]));
        // A batch larger than the whole capacity is still kept: the latest always is.
        log.push(4, vec![5, 6, 7, 8], 0);
        assert_eq!(log.since(4), Ok(vec![(4, vec![5, 6, 7, 8])]));
        assert_eq!(log.first_available(), 4);
    }

    #[test]
    fn the_log_holds_no_more_bytes_than_its_bound_but_always_the_latest_batch() {
        let mut log = EventLog::new(100, 1000, 0);
        log.push(1, vec!["a"], 600);
        log.push(2, vec!["b"], 300);
        assert_eq!(log.since(1), Ok(vec![(1, vec!["a"]), (2, vec!["b"])]));
        log.push(3, vec!["c"], 200);
        assert_eq!(log.since(1), Err(TooOld { first_available: 2 }), "1,100 bytes: the oldest went");
        log.push(4, vec!["d"], 5000);
        assert_eq!(log.since(4), Ok(vec![(4, vec!["d"])]), "alone past the bound, it is kept");
        assert_eq!(log.first_available(), 4);
    }

    #[test]
    fn a_replaced_state_ends_every_resumption_from_before_it() {
        let mut log = EventLog::new(10, usize::MAX, 0);
        log.push(1, vec!["a"], 0);
        log.reset(5);
        assert_eq!(log.since(1), Err(TooOld { first_available: 6 }));
        log.push(6, vec!["b"], 0);
        assert_eq!(log.since(6), Ok(vec![(6, vec!["b"])]));
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn filters_select_topics_and_keys() {
        let all = Subscription::default();
        assert!(all.wants(Topic::Node, &keys(&["n1"])));
        assert_eq!(all.topics(), Topic::ALL);
        let some = Subscription::new([(Topic::Job, vec!["web".to_string()]), (Topic::Node, Vec::new())]);
        assert!(some.wants(Topic::Job, &keys(&["web"])));
        assert!(!some.wants(Topic::Job, &keys(&["db"])));
        assert!(some.wants(Topic::Node, &keys(&["any"])));
        assert!(!some.wants(Topic::Allocation, &keys(&["web"])));
        // The same topic twice: its keys merge, and a bare topic takes everything.
        let merged = Subscription::new([(Topic::Job, vec!["a".to_string()]), (Topic::Job, vec!["b".to_string()])]);
        assert!(merged.wants(Topic::Job, &keys(&["b"])) && !merged.wants(Topic::Job, &keys(&["c"])));
        let widened = Subscription::new([(Topic::Job, vec!["a".to_string()]), (Topic::Job, Vec::new())]);
        assert!(widened.wants(Topic::Job, &keys(&["c"])));
        assert_eq!(Topic::parse("allocation"), Ok(Topic::Allocation));
        assert!(Topic::parse("jobs").unwrap_err().contains("one of Job, Allocation"));
    }
}
