//! The requests that may block (Nomad's blocking queries): each Get and List call of state that
//! the event stream's topics cover carries `min_index` and `wait`.

use crate::pb;

/// A request with `min_index` and `wait`, read the same way whatever the call.
pub trait BlockingRead {
    fn min_index(&self) -> Option<u64>;
    fn wait(&self) -> Option<&prost_types::Duration>;
}

macro_rules! blocking_read {
    ($($request:ty),+ $(,)?) => {$(
        impl BlockingRead for $request {
            fn min_index(&self) -> Option<u64> {
                self.min_index
            }
            fn wait(&self) -> Option<&prost_types::Duration> {
                self.wait.as_ref()
            }
        }
    )+};
}

blocking_read!(
    pb::GetJobRequest,
    pb::ListJobsRequest,
    pb::GetJobStatusRequest,
    pb::GetJobVersionsRequest,
    pb::ListAllocationsRequest,
    pb::GetAllocationRequest,
    pb::ListDeploymentsRequest,
    pb::GetDeploymentRequest,
    pb::ListServicesRequest,
    pb::GetServiceRequest,
    pb::ListNodesRequest,
    pb::GetNodeRequest,
);
