//! List answers in pages (`helios_core::page`): a bad `page_size` or `page_token` is
//! INVALID_ARGUMENT naming it.

use helios_core::page::PageRequest;
use tonic::Status;

use super::errors::invalid;

/// The page of list `scope` (its name and filters) that a request's `page_size` and
/// `page_token` ask for.
pub fn requested(scope: &str, page_size: u32, page_token: &str) -> Result<PageRequest, Status> {
    PageRequest::new(scope, page_size, page_token).map_err(|e| invalid(e.field, e.problem))
}
