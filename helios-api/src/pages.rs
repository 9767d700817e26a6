//! Following a List call's pages (`page_token` in, `next_page_token` out) to the end, for
//! clients that want the whole list.

use std::future::Future;

use crate::pb;

/// A List request: it asks for the page a token names.
pub trait PagedRequest: Clone {
    fn set_page_token(&mut self, token: String);
}

/// A List answer: one page of items and the token of the next.
pub trait PagedResponse {
    type Item;
    fn into_page(self) -> (Vec<Self::Item>, String);
}

macro_rules! paged {
    ($request:ty, $response:ty, $items:ident: $item:ty) => {
        impl PagedRequest for $request {
            fn set_page_token(&mut self, token: String) {
                self.page_token = token;
            }
        }
        impl PagedResponse for $response {
            type Item = $item;
            fn into_page(self) -> (Vec<$item>, String) {
                (self.$items, self.next_page_token)
            }
        }
    };
}

paged!(pb::ListJobsRequest, pb::ListJobsResponse, jobs: pb::JobSummary);
paged!(pb::GetJobVersionsRequest, pb::GetJobVersionsResponse, versions: pb::Job);
paged!(pb::ListAllocationsRequest, pb::ListAllocationsResponse, allocations: pb::Allocation);
paged!(pb::ListDeploymentsRequest, pb::ListDeploymentsResponse, deployments: pb::Deployment);
paged!(pb::ListServicesRequest, pb::ListServicesResponse, services: pb::ServiceSummary);
paged!(pb::ListNodesRequest, pb::ListNodesResponse, nodes: pb::Node);
paged!(pb::ListAclPoliciesRequest, pb::ListAclPoliciesResponse, policies: pb::AclPolicy);
paged!(pb::ListAclTokensRequest, pb::ListAclTokensResponse, tokens: pb::AclToken);

/// Every item of a list: `call` is made with `request` for the first page, then with each next
/// page's token, until a page has none.
pub async fn every_page<Req, Resp, Fut>(
    mut request: Req,
    mut call: impl FnMut(Req) -> Fut,
) -> Result<Vec<Resp::Item>, tonic::Status>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut all = Vec::new();
    let mut sent = String::new();
    loop {
        let (items, next) = call(request.clone()).await?.into_inner().into_page();
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
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
    async fn every_page_follows_tokens_to_the_end_and_stops_on_a_repeated_one() {
        // A list of five nodes in pages of two, the token being the next position.
        let nodes: Vec<pb::Node> = (0..5).map(|i| pb::Node { id: format!("n{i}"), ..Default::default() }).collect();
        let pages = |request: pb::ListNodesRequest| {
            let from: usize = request.page_token.parse().unwrap_or(0);
            let to = (from + 2).min(nodes.len());
            let next = if to < nodes.len() { to.to_string() } else { String::new() };
            let page = pb::ListNodesResponse { nodes: nodes[from..to].to_vec(), next_page_token: next, index: 1 };
            async move { Ok(tonic::Response::new(page)) }
        };
        let all = every_page(pb::ListNodesRequest::default(), pages).await.expect("pages");
        assert_eq!(all, nodes);

        let stuck = |_: pb::ListNodesRequest| async {
            Ok(tonic::Response::new(pb::ListNodesResponse { next_page_token: "same".into(), ..Default::default() }))
        };
        let refused = every_page(pb::ListNodesRequest::default(), stuck).await.expect_err("a loop");
        assert!(refused.message().contains("same token"), "{refused:?}");
    }
}
