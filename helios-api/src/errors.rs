//! Typed errors (Google's AIP-193): every error a Helios server answers carries
//! `grpc-status-details-bin` with a `google.rpc.ErrorInfo` whose `reason` is stable (clients
//! branch on it, never on the message), and bad input also a `google.rpc.BadRequest` naming
//! each field by its path in the request message.

use std::collections::HashMap;

use helios_core::ValidationErrors;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every Helios error.
pub const DOMAIN: &str = "helios.v1";

/// The reasons a caller may branch on, beyond the status code. Any other error's reason is its
/// code's name (`NOT_FOUND`, `PERMISSION_DENIED`, ...).
pub mod reason {
    /// INVALID_ARGUMENT: fields named in `BadRequest` are wrong.
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// INVALID_ARGUMENT: the request's bytes are not a message of its type.
    pub const UNDECODABLE_REQUEST: &str = "UNDECODABLE_REQUEST";
    /// ABORTED: `expected_version`/`create_only` did not hold; read again and retry.
    pub const VERSION_CONFLICT: &str = "VERSION_CONFLICT";
    /// ALREADY_EXISTS: the `request_id` was used for a different request.
    pub const REQUEST_ID_REUSED: &str = "REQUEST_ID_REUSED";
    /// UNAVAILABLE: no leader right now (an election); retry shortly, through any server.
    pub const NO_LEADER: &str = "NO_LEADER";
    /// FAILED_PRECONDITION: the cluster's stored format is older than what the request needs;
    /// finish the upgrade.
    pub const NEEDS_UPGRADE: &str = "NEEDS_UPGRADE";
    /// OUT_OF_RANGE: the event stream no longer holds `from_index`; read the state and
    /// subscribe again from the index it reflects.
    pub const EVENTS_TOO_OLD: &str = "EVENTS_TOO_OLD";
}

/// A status with an `ErrorInfo` of `reason`.
pub fn status(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new()))
}

/// The reason of an error that states none but its code.
pub fn code_reason(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `status`, with its code's own reason: for an error that has no reason of its own.
pub fn coded(code: Code, message: impl Into<String>) -> Status {
    status(code, code_reason(code), message)
}

/// Whether `status` already carries `ErrorInfo`.
pub fn has_reason(status: &Status) -> bool {
    status.get_details_error_info().is_some()
}

/// INVALID_ARGUMENT for every problem in `errors`, each a `BadRequest` field violation whose
/// path is `prefix` (the request field holding the checked message, such as `job`; empty: the
/// request itself) joined to the problem's path.
pub fn invalid_fields(prefix: &str, errors: &ValidationErrors) -> Status {
    let mut details = ErrorDetails::with_error_info(reason::INVALID_FIELD, DOMAIN, HashMap::new());
    for problem in &errors.0 {
        let field = match (prefix, problem.field.as_str()) {
            ("", field) => field.to_string(),
            (prefix, "") => prefix.to_string(),
            (prefix, field) => format!("{prefix}.{field}"),
        };
        details.add_bad_request_violation(field, &problem.problem);
    }
    Status::with_error_details(Code::InvalidArgument, format!("invalid request: {errors}"), details)
}

#[cfg(test)]
mod tests {
    use helios_core::validate::FieldError;

    use super::*;

    #[test]
    fn bad_input_names_each_field_by_its_request_path_with_a_stable_reason() {
        let errors = ValidationErrors(vec![
            FieldError { field: "task_groups[0].count".into(), problem: "must be > 0".into() },
            FieldError { field: "name".into(), problem: "must not be empty".into() },
        ]);
        let status = invalid_fields("job", &errors);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), (reason::INVALID_FIELD, DOMAIN));
        let violations: Vec<(&str, &str)> = details
            .bad_request()
            .expect("bad request")
            .field_violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(violations, [("job.task_groups[0].count", "must be > 0"), ("job.name", "must not be empty")]);
        // The message still reads alone.
        assert!(status.message().contains("task_groups[0].count: must be > 0"), "{}", status.message());
    }

    #[test]
    fn every_status_made_here_has_a_reason() {
        assert!(has_reason(&coded(Code::NotFound, "job \"x\" not found")));
        assert!(!has_reason(&Status::not_found("bare")));
        let info = status(Code::Aborted, reason::VERSION_CONFLICT, "lost a race").get_details_error_info();
        assert_eq!(info.expect("info").reason, reason::VERSION_CONFLICT);
    }
}
