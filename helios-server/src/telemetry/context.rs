//! How a call's identity crosses server boundaries: its request id and trace context go out in
//! the headers of the calls it makes to peers (`outgoing_headers`), and the leader's apply of a
//! write joins the trace of the call that proposed it (`await_apply`, `apply_span`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use tonic::metadata::{MetadataMap, MetadataValue};
use tracing_subscriber::registry::LookupSpan;

use super::otlp::SpanContext;
use crate::api::status_codes::REQUEST_ID_HEADER;

/// W3C trace context's header: `00-<trace id>-<parent span id>-<flags>`, in lowercase hex.
pub const TRACEPARENT_HEADER: &str = "traceparent";

tokio::task_local! {
    /// The request id of the call a task is answering (`api::status_codes`).
    static REQUEST_ID: String;
}

/// Whether spans are exported: without an exporter there is no trace context to carry, and
/// the leader keeps no table of writes awaiting their apply.
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Runs `answer` (a call's handler) knowing its request id, so the calls it makes carry it on.
pub fn in_request<F: Future>(request_id: String, answer: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(request_id, answer)
}

/// The request id of the call the current task is answering, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(String::clone).ok()
}

/// Adds the current call's request id and, when spans are exported, the current span's trace
/// context to the headers of a call to a peer.
pub fn outgoing_headers(metadata: &mut MetadataMap) {
    if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| MetadataValue::try_from(id.as_str())) {
        metadata.insert(REQUEST_ID_HEADER, id);
    }
    if let Some(context) = current() {
        if let Ok(value) = MetadataValue::try_from(context.traceparent()) {
            metadata.insert(TRACEPARENT_HEADER, value);
        }
    }
}

/// The trace context of the innermost exported span around the caller, if any.
fn current() -> Option<SpanContext> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            registry.span(id)?.scope().find_map(|span| super::otlp::context_of(&span))
        })
        .flatten()
}

/// Writes this leader proposed (by proposal id) whose apply joins the trace of the call that
/// proposed them. Only the leader applies while the proposing call waits, so only it has any.
static AWAITING_APPLY: LazyLock<Mutex<HashMap<String, Proposer>>> = LazyLock::new(Default::default);

/// The call that proposed a write: its span, and its request id.
struct Proposer {
    context: SpanContext,
    request_id: String,
    /// Which `await_apply` put it there: a retry of the same proposal may replace it, and then
    /// the first one's guard must leave the retry's in place.
    token: u64,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

fn awaiting() -> std::sync::MutexGuard<'static, HashMap<String, Proposer>> {
    AWAITING_APPLY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A write this leader proposed within a traced call; forgotten when dropped (after the apply,
/// or when the write failed).
pub struct AwaitingApply(Option<(String, u64)>);

/// Call before proposing: the apply of proposal `proposal_id` will join the current trace.
pub fn await_apply(proposal_id: &str) -> AwaitingApply {
    let Some(context) = current() else {
        return AwaitingApply(None);
    };
    let request_id = request_id().unwrap_or_default();
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    awaiting().insert(proposal_id.to_string(), Proposer { context, request_id, token });
    AwaitingApply(Some((proposal_id.to_string(), token)))
}

impl Drop for AwaitingApply {
    fn drop(&mut self) {
        if let Some((id, token)) = self.0.take() {
            let mut awaiting = awaiting();
            if awaiting.get(&id).is_some_and(|proposer| proposer.token == token) {
                awaiting.remove(&id);
            }
        }
    }
}

/// The span to apply a proposal in: a child of the call that proposed it, when this leader
/// proposed it in a traced call; none otherwise (the `applying` debug line still names it).
pub fn apply_span(proposal_id: &str, index: u64) -> Option<tracing::Span> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let awaiting = awaiting();
    let proposer = awaiting.get(proposal_id)?;
    Some(tracing::info_span!(
        "apply",
        proposal = proposal_id,
        index,
        request_id = %proposer.request_id,
        traceparent = %proposer.context.traceparent()
    ))
}
