//! The one mapping from server errors to gRPC statuses.

use helios_core::validate::check_name;
use helios_core::{Rejection, RejectionKind, ValidationErrors};
use tonic::Status;

use crate::cluster::ClusterError;

pub fn cluster_status(error: ClusterError) -> Status {
    match error {
        ClusterError::NoLeader(_) | ClusterError::NotLeader => Status::unavailable(error.to_string()),
        ClusterError::InvalidMembership(m) | ClusterError::NeedsUpgrade(m) => Status::failed_precondition(m),
        ClusterError::NotFound(m) => Status::not_found(m),
        ClusterError::PermissionDenied(m) => Status::permission_denied(m),
        ClusterError::Rejected(r) => rejection_status(r),
        ClusterError::Storage(_) | ClusterError::Internal(_) => {
            tracing::error!(%error, "request failed");
            Status::internal(error.to_string())
        }
    }
}

pub fn rejection_status(rejection: Rejection) -> Status {
    match rejection.kind {
        RejectionKind::NotFound => Status::not_found(rejection.message),
        RejectionKind::FailedPrecondition => Status::failed_precondition(rejection.message),
        // A check-and-set lost to a concurrent change: read again and retry (AIP-193's ABORTED).
        RejectionKind::Conflict => Status::aborted(rejection.message),
        RejectionKind::RequestIdReused => Status::already_exists(rejection.message),
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
