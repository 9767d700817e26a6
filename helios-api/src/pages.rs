//! Following a List call's pages (`page_token` in, `next_page_token` out) to the end, for
//! clients that want the whole list: `every_page` as a listing (pages read at different moments,
//! as any cursor gives them), `every_page_at_one_index` as one state (a list that changed between
//! pages is read again from the start). Both ask for the largest pages the server gives, so a
//! list of up to `MAX_PAGE_SIZE` items (within 3 MiB) is one call and one state anyway.

use std::future::Future;

use crate::pb;
use helios_core::page::MAX_PAGE_SIZE;

/// A List request: it asks for the page a token names.
pub trait PagedRequest: Clone {
    fn set_page_token(&mut self, token: String);
    /// Asks for pages of `size` items unless the caller chose a size.
    fn default_page_size(&mut self, size: u32);
}

/// A List answer: one page of items and the token of the next.
pub trait PagedResponse {
    type Item;
    fn into_page(self) -> (Vec<Self::Item>, String);
    /// The log index the page reflects (None: the list says none, as ACL lists do).
    fn index(&self) -> Option<u64>;
}

/// Reads of a list that changed between its pages before `every_page` gives up.
const MAX_READS: u32 = 10;

macro_rules! paged {
    ($request:ty, $response:ty, $items:ident: $item:ty, $index:expr) => {
        impl PagedRequest for $request {
            fn set_page_token(&mut self, token: String) {
                self.page_token = token;
            }
            fn default_page_size(&mut self, size: u32) {
                if self.page_size == 0 {
                    self.page_size = size;
                }
            }
        }
        impl PagedResponse for $response {
            type Item = $item;
            fn into_page(self) -> (Vec<$item>, String) {
                (self.$items, self.next_page_token)
            }
            fn index(&self) -> Option<u64> {
                let index: fn(&$response) -> Option<u64> = $index;
                index(self)
            }
        }
    };
}

paged!(pb::ListJobsRequest, pb::ListJobsResponse, jobs: pb::JobSummary, |r| Some(r.index));
paged!(pb::GetJobVersionsRequest, pb::GetJobVersionsResponse, versions: pb::Job, |r| Some(r.index));
paged!(pb::ListAllocationsRequest, pb::ListAllocationsResponse, allocations: pb::Allocation, |r| Some(r.index));
paged!(pb::ListDeploymentsRequest, pb::ListDeploymentsResponse, deployments: pb::Deployment, |r| Some(r.index));
paged!(pb::ListServicesRequest, pb::ListServicesResponse, services: pb::ServiceSummary, |r| Some(r.index));
paged!(pb::ListNodesRequest, pb::ListNodesResponse, nodes: pb::Node, |r| Some(r.index));
paged!(pb::ListAclPoliciesRequest, pb::ListAclPoliciesResponse, policies: pb::AclPolicy, |_| None);
paged!(pb::ListAclTokensRequest, pb::ListAclTokensResponse, tokens: pb::AclToken, |_| None);

/// Every item of a list: `call` is made with `request` for the first page, then with each next
/// page's token, until a page has none. Pages are read one after another: an item written
/// between two of them may be missing, and items from different moments may be side by side.
pub async fn every_page<Req, Resp, Fut>(
    request: Req,
    call: impl FnMut(Req) -> Fut,
) -> Result<Vec<Resp::Item>, tonic::Status>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    read(request, call, false).await.map(|read| read.expect("a listing is never read again"))
}

/// As `every_page`, as one state: if the list changed between two pages (their indexes differ)
/// it is read again from the first page, at most `MAX_READS` times, then ABORTED.
pub async fn every_page_at_one_index<Req, Resp, Fut>(
    request: Req,
    mut call: impl FnMut(Req) -> Fut,
) -> Result<Vec<Resp::Item>, tonic::Status>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    for _ in 0..MAX_READS {
        if let Some(all) = read(request.clone(), &mut call, true).await? {
            return Ok(all);
        }
    }
    Err(tonic::Status::aborted(format!("the list changed between its pages on each of {MAX_READS} reads: try again")))
}

/// One read of every page; None if `one_state` and the list changed between two pages.
async fn read<Req, Resp, Fut>(
    mut request: Req,
    mut call: impl FnMut(Req) -> Fut,
    one_state: bool,
) -> Result<Option<Vec<Resp::Item>>, tonic::Status>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    request.default_page_size(MAX_PAGE_SIZE);
    let mut all = Vec::new();
    let mut first_index = None;
    let mut sent = String::new();
    loop {
        let page = call(request.clone()).await?.into_inner();
        let index = page.index();
        match first_index {
            None => first_index = Some(index),
            Some(first) if one_state && first != index => return Ok(None),
            Some(_) => {}
        }
        let (items, next) = page.into_page();
        all.extend(items);
        if next.is_empty() {
            return Ok(Some(all));
        }
        // A server that answers a token with itself would be followed forever.
        if next == sent {
            return Err(tonic::Status::internal("the server answered a page token with the same token"));
        }
        sent.clone_from(&next);
        request.set_page_token(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_are_followed_to_the_end_a_changed_list_read_again_as_one_state_and_a_repeated_token_refused() {
        // A list of five nodes in pages of two, the token being the next position.
        let nodes: Vec<pb::Node> = (0..5).map(|i| pb::Node { id: format!("n{i}"), ..Default::default() }).collect();
        let pages = |request: pb::ListNodesRequest| {
            assert_eq!(request.page_size, MAX_PAGE_SIZE, "the largest pages are asked for");
            let from: usize = request.page_token.parse().unwrap_or(0);
            let to = (from + 2).min(nodes.len());
            let next = if to < nodes.len() { to.to_string() } else { String::new() };
            let page = pb::ListNodesResponse { nodes: nodes[from..to].to_vec(), next_page_token: next, index: 1 };
            async move { Ok(tonic::Response::new(page)) }
        };
        let all = every_page(pb::ListNodesRequest::default(), pages).await.expect("pages");
        assert_eq!(all, nodes);

        // The list changes once between the first and second page: it is read again whole.
        let calls = std::sync::atomic::AtomicU64::new(0);
        let changing = |request: pb::ListNodesRequest| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let index = if call == 0 { 1 } else { 2 };
            let from: usize = request.page_token.parse().unwrap_or(0);
            let to = (from + 2).min(nodes.len());
            let next = if to < nodes.len() { to.to_string() } else { String::new() };
            let page = pb::ListNodesResponse { nodes: nodes[from..to].to_vec(), next_page_token: next, index };
            async move { Ok(tonic::Response::new(page)) }
        };
        assert_eq!(every_page_at_one_index(pb::ListNodesRequest::default(), changing).await.expect("pages"), nodes);
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::Relaxed),
            2 + 3,
            "two pages, the second changed; then three"
        );
        // A list that changes between every two pages is given up on, clearly.
        let index = std::sync::atomic::AtomicU64::new(0);
        let restless = |_: pb::ListNodesRequest| {
            let index = index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let page = pb::ListNodesResponse { next_page_token: "more".into(), index, ..Default::default() };
            async move { Ok(tonic::Response::new(page)) }
        };
        let aborted = every_page_at_one_index(pb::ListNodesRequest::default(), restless).await.expect_err("gives up");
        assert_eq!(aborted.code(), tonic::Code::Aborted, "{aborted:?}");

        let stuck = |_: pb::ListNodesRequest| async {
            Ok(tonic::Response::new(pb::ListNodesResponse { next_page_token: "same".into(), ..Default::default() }))
        };
        let refused = every_page(pb::ListNodesRequest::default(), stuck).await.expect_err("a loop");
        assert!(refused.message().contains("same token"), "{refused:?}");
    }
}
