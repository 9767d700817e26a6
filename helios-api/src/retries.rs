//! The mutating requests that carry a `request_id` (AIP-155 safe retries), read the same way
//! whatever the call.

use prost::Message;

use crate::pb;

/// A request with a `request_id`.
pub trait RetryableRequest: Message + Clone + Sized {
    fn request_id(&self) -> &str;
    fn set_request_id(&mut self, id: String);

    /// The request's bytes without its id: what a retry must repeat exactly. Deterministic, as
    /// every map is a `BTreeMap` (build.rs) and prost writes fields in number order.
    fn bytes_without_id(&self) -> Vec<u8> {
        let mut request = self.clone();
        request.set_request_id(String::new());
        request.encode_to_vec()
    }
}

macro_rules! retryable {
    ($($request:ty),+ $(,)?) => {$(
        impl RetryableRequest for $request {
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn set_request_id(&mut self, id: String) {
                self.request_id = id;
            }
        }
    )+};
}

retryable!(
    pb::SubmitJobRequest,
    pb::RevertJobRequest,
    pb::StopJobRequest,
    pb::PromoteDeploymentRequest,
    pb::PauseDeploymentRequest,
    pb::FailDeploymentRequest,
    pb::SetAllocationHealthRequest,
    pb::PurgeNodeRequest,
    pb::DrainNodeRequest,
    pb::SetEligibilityRequest,
    pb::UpsertAclPolicyRequest,
    pb::DeleteAclPolicyRequest,
    pb::DeleteAclTokenRequest,
);

/// A fresh request id (a random UUID) for a caller that wants its write retried safely.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
