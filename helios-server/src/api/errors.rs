//! The one mapping from server errors to gRPC statuses, each with its stable reason
//! (`helios_api::errors`; any other error gets its code's name from `status_codes`).

use helios_api::errors::{coded, reason, status};
use helios_core::validate::check_name;
use helios_core::{Rejection, RejectionKind, ValidationErrors};
use tonic::{Code, Status};

use crate::cluster::ClusterError;

pub fn cluster_status(error: ClusterError) -> Status {
    match error {
        ClusterError::NoLeader(_) | ClusterError::NotLeader => {
            status(Code::Unavailable, reason::NO_LEADER, error.to_string())
        }
        ClusterError::InvalidMembership(m) => coded(Code::FailedPrecondition, m),
        ClusterError::NeedsUpgrade(m) => status(Code::FailedPrecondition, reason::NEEDS_UPGRADE, m),
        ClusterError::NotFound(m) => coded(Code::NotFound, m),
        ClusterError::PermissionDenied(m) => coded(Code::PermissionDenied, m),
        ClusterError::Rejected(r) => rejection_status(r),
        ClusterError::Storage(_) | ClusterError::Internal(_) => {
            tracing::error!(%error, "request failed");
            coded(Code::Internal, error.to_string())
        }
    }
}

pub fn rejection_status(rejection: Rejection) -> Status {
    match rejection.kind {
        RejectionKind::NotFound => coded(Code::NotFound, rejection.message),
        RejectionKind::FailedPrecondition => coded(Code::FailedPrecondition, rejection.message),
        // A check-and-set lost to a concurrent change: read again and retry (AIP-193's ABORTED).
        RejectionKind::Conflict => status(Code::Aborted, reason::VERSION_CONFLICT, rejection.message),
        RejectionKind::RequestIdReused => status(Code::AlreadyExists, reason::REQUEST_ID_REUSED, rejection.message),
    }
}

/// Checks a name given as a request field (`field` names it in the error).
/// A job's name (which may hold ':', as Helios's `NAME:VERSION` ids do).
pub fn require_job_name(field: &str, value: &str) -> Result<(), Status> {
    helios_core::validate::check_job_name(value)
        .map_err(|problem| helios_api::invalid_argument(&ValidationErrors::single(field, problem)))
}

pub fn require_name(field: &str, value: &str) -> Result<(), Status> {
    check_name(value).map_err(|problem| helios_api::invalid_argument(&ValidationErrors::single(field, problem)))
}

pub fn invalid(field: &str, problem: impl Into<String>) -> Status {
    helios_api::invalid_argument(&ValidationErrors::single(field, problem))
}
