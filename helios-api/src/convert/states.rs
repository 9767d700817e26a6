//! The closed value sets of the API (statuses, triggers, roles) as protobuf enums, and the word
//! each stands for in the CLI, job files and Nomad: `label` is what people read, the enum is
//! what programs compare.

use helios_core::acl::TokenType;
use helios_core::service::{AddressMode, CheckStatus};
use helios_core::{
    AllocClientStatus, AllocDesiredStatus, ConstraintOperator, EvalStatus, EvalTrigger, NodeEligibility, NodeStatus,
    TaskEventKind, TaskRunState,
};

use crate::pb;

pub fn node_status_to_pb(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Initializing => pb::NodeStatus::Initializing,
        NodeStatus::Ready => pb::NodeStatus::Ready,
        NodeStatus::Down => pb::NodeStatus::Down,
    }
}

pub fn node_eligibility_to_pb(eligibility: NodeEligibility) -> pb::NodeEligibility {
    match eligibility {
        NodeEligibility::Eligible => pb::NodeEligibility::Eligible,
        NodeEligibility::Ineligible => pb::NodeEligibility::Ineligible,
    }
}

pub fn eval_status_to_pb(status: EvalStatus) -> pb::EvaluationStatus {
    match status {
        EvalStatus::Pending => pb::EvaluationStatus::Pending,
        EvalStatus::Complete => pb::EvaluationStatus::Complete,
        EvalStatus::Blocked => pb::EvaluationStatus::Blocked,
        EvalStatus::Failed => pb::EvaluationStatus::Failed,
        EvalStatus::Canceled => pb::EvaluationStatus::Canceled,
    }
}

pub fn eval_trigger_to_pb(trigger: EvalTrigger) -> pb::EvaluationTrigger {
    match trigger {
        EvalTrigger::JobRegister => pb::EvaluationTrigger::JobRegister,
        EvalTrigger::JobDeregister => pb::EvaluationTrigger::JobDeregister,
        EvalTrigger::NodeUpdate => pb::EvaluationTrigger::NodeUpdate,
        EvalTrigger::NodeDrain => pb::EvaluationTrigger::NodeDrain,
        EvalTrigger::AllocFailure => pb::EvaluationTrigger::AllocFailure,
        EvalTrigger::RetryFailedPlacement => pb::EvaluationTrigger::RetryFailedPlacement,
        EvalTrigger::AllocStop => pb::EvaluationTrigger::AllocStop,
        EvalTrigger::DeploymentWatcher => pb::EvaluationTrigger::DeploymentWatcher,
    }
}

pub fn alloc_desired_status_to_pb(status: AllocDesiredStatus) -> pb::AllocationDesiredStatus {
    match status {
        AllocDesiredStatus::Run => pb::AllocationDesiredStatus::Run,
        AllocDesiredStatus::Stop => pb::AllocationDesiredStatus::Stop,
        AllocDesiredStatus::Evict => pb::AllocationDesiredStatus::Evict,
    }
}

pub fn alloc_client_status_to_pb(status: AllocClientStatus) -> pb::AllocationClientStatus {
    match status {
        AllocClientStatus::Pending => pb::AllocationClientStatus::Pending,
        AllocClientStatus::Running => pb::AllocationClientStatus::Running,
        AllocClientStatus::Complete => pb::AllocationClientStatus::Complete,
        AllocClientStatus::Failed => pb::AllocationClientStatus::Failed,
        AllocClientStatus::Lost => pb::AllocationClientStatus::Lost,
    }
}

pub fn task_run_state_to_pb(state: TaskRunState) -> pb::TaskRunState {
    match state {
        TaskRunState::Pending => pb::TaskRunState::Pending,
        TaskRunState::Running => pb::TaskRunState::Running,
        TaskRunState::Dead => pb::TaskRunState::Dead,
    }
}

pub fn check_status_to_pb(status: CheckStatus) -> pb::CheckStatus {
    match status {
        CheckStatus::Passing => pb::CheckStatus::Passing,
        CheckStatus::Warning => pb::CheckStatus::Warning,
        CheckStatus::Critical => pb::CheckStatus::Critical,
    }
}

/// A check status a request gave (an initial status); `None` for unset or unknown.
pub fn check_status_from_pb(value: i32) -> Option<CheckStatus> {
    match pb::CheckStatus::try_from(value).ok()? {
        pb::CheckStatus::Unspecified => None,
        pb::CheckStatus::Passing => Some(CheckStatus::Passing),
        pb::CheckStatus::Warning => Some(CheckStatus::Warning),
        pb::CheckStatus::Critical => Some(CheckStatus::Critical),
    }
}

pub fn constraint_operator_to_pb(operator: ConstraintOperator) -> pb::ConstraintOperator {
    match operator {
        ConstraintOperator::Equal => pb::ConstraintOperator::Equal,
        ConstraintOperator::NotEqual => pb::ConstraintOperator::NotEqual,
        ConstraintOperator::Regexp => pb::ConstraintOperator::Regexp,
        ConstraintOperator::Version => pb::ConstraintOperator::Version,
        ConstraintOperator::DistinctHosts => pb::ConstraintOperator::DistinctHosts,
        ConstraintOperator::DistinctProperty => pb::ConstraintOperator::DistinctProperty,
    }
}

/// An operator a request gave; `None` for unset or unknown (a problem: no default is assumed).
pub fn constraint_operator_from_pb(value: i32) -> Option<ConstraintOperator> {
    match pb::ConstraintOperator::try_from(value).ok()? {
        pb::ConstraintOperator::Unspecified => None,
        pb::ConstraintOperator::Equal => Some(ConstraintOperator::Equal),
        pb::ConstraintOperator::NotEqual => Some(ConstraintOperator::NotEqual),
        pb::ConstraintOperator::Regexp => Some(ConstraintOperator::Regexp),
        pb::ConstraintOperator::Version => Some(ConstraintOperator::Version),
        pb::ConstraintOperator::DistinctHosts => Some(ConstraintOperator::DistinctHosts),
        pb::ConstraintOperator::DistinctProperty => Some(ConstraintOperator::DistinctProperty),
    }
}

pub fn address_mode_to_pb(mode: AddressMode) -> pb::ServiceAddressMode {
    match mode {
        AddressMode::Auto => pb::ServiceAddressMode::Auto,
        AddressMode::Host => pb::ServiceAddressMode::Host,
    }
}

/// An address mode a request gave (unset: auto); `None` for an unknown number.
pub fn address_mode_from_pb(value: i32) -> Option<AddressMode> {
    match pb::ServiceAddressMode::try_from(value).ok()? {
        pb::ServiceAddressMode::Unspecified | pb::ServiceAddressMode::Auto => Some(AddressMode::Auto),
        pb::ServiceAddressMode::Host => Some(AddressMode::Host),
    }
}

pub fn task_event_kind_to_pb(kind: TaskEventKind) -> pb::TaskEventKind {
    match kind {
        TaskEventKind::Received => pb::TaskEventKind::Received,
        TaskEventKind::Started => pb::TaskEventKind::Started,
        TaskEventKind::Terminated => pb::TaskEventKind::Terminated,
        TaskEventKind::Restarting => pb::TaskEventKind::Restarting,
        TaskEventKind::NotRestarting => pb::TaskEventKind::NotRestarting,
        TaskEventKind::RestartSignaled => pb::TaskEventKind::RestartSignaled,
        TaskEventKind::Killing => pb::TaskEventKind::Killing,
        TaskEventKind::Killed => pb::TaskEventKind::Killed,
        TaskEventKind::OomKilled => pb::TaskEventKind::OomKilled,
        TaskEventKind::DriverFailure => pb::TaskEventKind::DriverFailure,
        TaskEventKind::SetupFailure => pb::TaskEventKind::SetupFailure,
        TaskEventKind::DownloadingImage => pb::TaskEventKind::DownloadingImage,
        TaskEventKind::ImagePulled => pb::TaskEventKind::ImagePulled,
        TaskEventKind::NotStarted => pb::TaskEventKind::NotStarted,
        TaskEventKind::Adopted => pb::TaskEventKind::Adopted,
    }
}

/// A task event's kind as the core keeps it (its word); unspecified for a word this build does
/// not know (an agent of a later build may add kinds; the event's message still says what).
pub fn task_event_word_to_pb(word: &str) -> pb::TaskEventKind {
    TaskEventKind::parse(word).map_or(pb::TaskEventKind::Unspecified, task_event_kind_to_pb)
}

pub fn token_type_to_pb(token_type: TokenType) -> pb::AclTokenType {
    match token_type {
        TokenType::Client => pb::AclTokenType::Client,
        TokenType::Management => pb::AclTokenType::Management,
    }
}

/// The word a value stands for, as the CLI prints it (Nomad's words, lower case); `unknown` for
/// an unset value or one this build does not know (a newer server's).
pub trait Label {
    fn label(&self) -> &'static str;
}

const UNKNOWN: &str = "unknown";

impl Label for pb::NodeStatus {
    fn label(&self) -> &'static str {
        match self {
            pb::NodeStatus::Unspecified => UNKNOWN,
            pb::NodeStatus::Initializing => NodeStatus::Initializing.as_str(),
            pb::NodeStatus::Ready => NodeStatus::Ready.as_str(),
            pb::NodeStatus::Down => NodeStatus::Down.as_str(),
        }
    }
}

impl Label for pb::NodeEligibility {
    fn label(&self) -> &'static str {
        match self {
            pb::NodeEligibility::Unspecified => UNKNOWN,
            pb::NodeEligibility::Eligible => NodeEligibility::Eligible.as_str(),
            pb::NodeEligibility::Ineligible => NodeEligibility::Ineligible.as_str(),
        }
    }
}

impl Label for pb::EvaluationStatus {
    fn label(&self) -> &'static str {
        match self {
            pb::EvaluationStatus::Unspecified => UNKNOWN,
            pb::EvaluationStatus::Pending => EvalStatus::Pending.as_str(),
            pb::EvaluationStatus::Complete => EvalStatus::Complete.as_str(),
            pb::EvaluationStatus::Blocked => EvalStatus::Blocked.as_str(),
            pb::EvaluationStatus::Failed => EvalStatus::Failed.as_str(),
            pb::EvaluationStatus::Canceled => EvalStatus::Canceled.as_str(),
        }
    }
}

impl Label for pb::EvaluationTrigger {
    fn label(&self) -> &'static str {
        match self {
            pb::EvaluationTrigger::Unspecified => UNKNOWN,
            pb::EvaluationTrigger::JobRegister => EvalTrigger::JobRegister.as_str(),
            pb::EvaluationTrigger::JobDeregister => EvalTrigger::JobDeregister.as_str(),
            pb::EvaluationTrigger::NodeUpdate => EvalTrigger::NodeUpdate.as_str(),
            pb::EvaluationTrigger::NodeDrain => EvalTrigger::NodeDrain.as_str(),
            pb::EvaluationTrigger::AllocFailure => EvalTrigger::AllocFailure.as_str(),
            pb::EvaluationTrigger::RetryFailedPlacement => EvalTrigger::RetryFailedPlacement.as_str(),
            pb::EvaluationTrigger::AllocStop => EvalTrigger::AllocStop.as_str(),
            pb::EvaluationTrigger::DeploymentWatcher => EvalTrigger::DeploymentWatcher.as_str(),
        }
    }
}

impl Label for pb::MemberRole {
    fn label(&self) -> &'static str {
        match self {
            pb::MemberRole::Unspecified => UNKNOWN,
            pb::MemberRole::Leader => "leader",
            pb::MemberRole::Follower => "follower",
            pb::MemberRole::Candidate => "candidate",
            pb::MemberRole::Learner => "learner",
            pb::MemberRole::Unreachable => "unreachable",
        }
    }
}

impl Label for pb::AllocationDesiredStatus {
    fn label(&self) -> &'static str {
        match self {
            pb::AllocationDesiredStatus::Unspecified => UNKNOWN,
            pb::AllocationDesiredStatus::Run => AllocDesiredStatus::Run.as_str(),
            pb::AllocationDesiredStatus::Stop => AllocDesiredStatus::Stop.as_str(),
            pb::AllocationDesiredStatus::Evict => AllocDesiredStatus::Evict.as_str(),
        }
    }
}

impl Label for pb::AllocationClientStatus {
    fn label(&self) -> &'static str {
        match self {
            pb::AllocationClientStatus::Unspecified => UNKNOWN,
            pb::AllocationClientStatus::Pending => AllocClientStatus::Pending.as_str(),
            pb::AllocationClientStatus::Running => AllocClientStatus::Running.as_str(),
            pb::AllocationClientStatus::Complete => AllocClientStatus::Complete.as_str(),
            pb::AllocationClientStatus::Failed => AllocClientStatus::Failed.as_str(),
            pb::AllocationClientStatus::Lost => AllocClientStatus::Lost.as_str(),
        }
    }
}

impl Label for pb::TaskRunState {
    fn label(&self) -> &'static str {
        match self {
            pb::TaskRunState::Unspecified => UNKNOWN,
            pb::TaskRunState::Pending => TaskRunState::Pending.as_str(),
            pb::TaskRunState::Running => TaskRunState::Running.as_str(),
            pb::TaskRunState::Dead => TaskRunState::Dead.as_str(),
        }
    }
}

impl Label for pb::CheckStatus {
    fn label(&self) -> &'static str {
        match self {
            pb::CheckStatus::Unspecified => UNKNOWN,
            pb::CheckStatus::Passing => CheckStatus::Passing.as_str(),
            pb::CheckStatus::Warning => CheckStatus::Warning.as_str(),
            pb::CheckStatus::Critical => CheckStatus::Critical.as_str(),
        }
    }
}

impl Label for pb::TaskEventKind {
    fn label(&self) -> &'static str {
        match self {
            pb::TaskEventKind::Unspecified => UNKNOWN,
            pb::TaskEventKind::Received => TaskEventKind::Received.as_str(),
            pb::TaskEventKind::Started => TaskEventKind::Started.as_str(),
            pb::TaskEventKind::Terminated => TaskEventKind::Terminated.as_str(),
            pb::TaskEventKind::Restarting => TaskEventKind::Restarting.as_str(),
            pb::TaskEventKind::NotRestarting => TaskEventKind::NotRestarting.as_str(),
            pb::TaskEventKind::RestartSignaled => TaskEventKind::RestartSignaled.as_str(),
            pb::TaskEventKind::Killing => TaskEventKind::Killing.as_str(),
            pb::TaskEventKind::Killed => TaskEventKind::Killed.as_str(),
            pb::TaskEventKind::OomKilled => TaskEventKind::OomKilled.as_str(),
            pb::TaskEventKind::DriverFailure => TaskEventKind::DriverFailure.as_str(),
            pb::TaskEventKind::SetupFailure => TaskEventKind::SetupFailure.as_str(),
            pb::TaskEventKind::DownloadingImage => TaskEventKind::DownloadingImage.as_str(),
            pb::TaskEventKind::ImagePulled => TaskEventKind::ImagePulled.as_str(),
            pb::TaskEventKind::NotStarted => TaskEventKind::NotStarted.as_str(),
            pb::TaskEventKind::Adopted => TaskEventKind::Adopted.as_str(),
        }
    }
}

impl Label for pb::AclTokenType {
    fn label(&self) -> &'static str {
        match self {
            pb::AclTokenType::Unspecified => UNKNOWN,
            pb::AclTokenType::Client => TokenType::Client.as_str(),
            pb::AclTokenType::Management => TokenType::Management.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_converts_to_the_enum_whose_label_is_its_word() {
        for status in NodeStatus::ALL {
            assert_eq!(node_status_to_pb(status).label(), status.as_str());
        }
        for e in [NodeEligibility::Eligible, NodeEligibility::Ineligible] {
            assert_eq!(node_eligibility_to_pb(e).label(), e.as_str());
        }
        for s in EvalStatus::ALL {
            assert_eq!(eval_status_to_pb(s).label(), s.as_str());
        }
        for t in EvalTrigger::ALL {
            assert_eq!(eval_trigger_to_pb(t).label(), t.as_str());
        }
        for t in [TokenType::Client, TokenType::Management] {
            assert_eq!(token_type_to_pb(t).label(), t.as_str());
        }
        for s in [AllocDesiredStatus::Run, AllocDesiredStatus::Stop, AllocDesiredStatus::Evict] {
            assert_eq!(alloc_desired_status_to_pb(s).label(), s.as_str());
        }
        let client = [
            AllocClientStatus::Pending,
            AllocClientStatus::Running,
            AllocClientStatus::Complete,
            AllocClientStatus::Failed,
            AllocClientStatus::Lost,
        ];
        for s in client {
            assert_eq!(alloc_client_status_to_pb(s).label(), s.as_str());
        }
        for s in [TaskRunState::Pending, TaskRunState::Running, TaskRunState::Dead] {
            assert_eq!(task_run_state_to_pb(s).label(), s.as_str());
        }
        for s in [CheckStatus::Passing, CheckStatus::Warning, CheckStatus::Critical] {
            assert_eq!(check_status_to_pb(s).label(), s.as_str());
            assert_eq!(check_status_from_pb(check_status_to_pb(s).into()), Some(s));
        }
        let operators = [
            ConstraintOperator::Equal,
            ConstraintOperator::NotEqual,
            ConstraintOperator::Regexp,
            ConstraintOperator::Version,
            ConstraintOperator::DistinctHosts,
            ConstraintOperator::DistinctProperty,
        ];
        for o in operators {
            assert_eq!(constraint_operator_from_pb(constraint_operator_to_pb(o).into()), Some(o));
        }
        for m in [AddressMode::Auto, AddressMode::Host] {
            assert_eq!(address_mode_from_pb(address_mode_to_pb(m).into()), Some(m));
        }
        for k in TaskEventKind::ALL {
            assert_eq!(task_event_word_to_pb(k.as_str()).label(), k.as_str());
        }
        assert_eq!(task_event_word_to_pb("Sleeping"), pb::TaskEventKind::Unspecified);
        assert_eq!(constraint_operator_from_pb(0), None, "an operator is never assumed");
        assert_eq!(address_mode_from_pb(0), Some(AddressMode::Auto));
    }

    #[test]
    fn an_unset_value_is_unknown() {
        assert_eq!(pb::NodeStatus::Unspecified.label(), "unknown");
        assert_eq!(pb::MemberRole::Unspecified.label(), "unknown");
    }
}
