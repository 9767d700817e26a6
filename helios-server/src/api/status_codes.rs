//! The status codes a client's retry policy and error handling key on, where tonic alone answers
//! others. `StatusCodes` wraps each service:
//!
//! - A call whose deadline (`grpc-timeout`) passes on the server ends with DEADLINE_EXCEEDED.
//!   tonic's own timers, the server's and a tonic client's, answer CANCELLED ("Timeout
//!   expired"), which retry policies keyed on DEADLINE_EXCEEDED miss; this timer fires a little
//!   before both (`answer_by`), so the caller hears DEADLINE_EXCEEDED from the server.
//! - A request that does not decode is INVALID_ARGUMENT: the caller sent it, and resending it
//!   will not help. tonic answers INTERNAL, which reads as the server's fault.
//! - Every call is counted by method and code, with how long it took to answer (`metrics`).
//! - Every call runs in a `request` span naming its method and request id (`x-request-id`: the
//!   caller's, or a new one), which its answer carries back, so its log lines can be found; the
//!   span ends with the call's code, and joins the caller's trace if it sent a `traceparent`
//!   (`telemetry`). A stream's span ends with its headers: what it sends later, and a late
//!   error, are outside it.
//! - Every error answered in the headers (all but a stream's, after its first message) carries a
//!   `google.rpc.ErrorInfo` (`helios_api::errors`): the handlers' own reasons, or else its
//!   code's name (an ACL refusal, tonic's own errors).

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use helios_api::errors;

use crate::telemetry;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tracing::Instrument;

/// When a call with this deadline is answered DEADLINE_EXCEEDED: a tenth of it early (at least
/// 5 ms, at most a second). The server's tonic timer started a moment before this one (while the
/// call was routed here) and the caller's own timer before the request was sent, so an answer
/// sent exactly at the deadline would lose to theirs whenever the machine is busy; a tenth leaves
/// room for a loaded machine's scheduling delays and the way back.
pub fn answer_by(deadline: Duration) -> Duration {
    deadline.saturating_sub(ahead_of(deadline))
}

/// How much earlier than a deadline its call is answered (`answer_by`).
pub fn ahead_of(deadline: Duration) -> Duration {
    (deadline / 10).clamp(Duration::from_millis(5), Duration::from_secs(1))
}

/// The call's deadline, from its `grpc-timeout` header (an integer of at most 8 digits and a
/// unit: H, M, S, m, u, n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// What prost's decode errors say first (`prost::DecodeError`'s display), which tonic answers as
/// INTERNAL (`tests/grpc_tooling.rs` sends such a request, holding prost and tonic to it).
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// A service whose calls end with the codes above.
#[derive(Debug, Clone)]
pub struct StatusCodes<S> {
    inner: S,
}

impl<S> StatusCodes<S> {
    pub fn new(inner: S) -> StatusCodes<S> {
        StatusCodes { inner }
    }
}

impl<S: NamedService> NamedService for StatusCodes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<Body>> for StatusCodes<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let deadline = grpc_timeout(request.headers());
        let method = request.uri().path().to_string();
        let request_id = request_id(request.headers());
        let traceparent = request.headers().get(telemetry::TRACEPARENT_HEADER).and_then(|v| v.to_str().ok());
        macro_rules! request_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "request",
                    otel.kind = "server",
                    method = %method,
                    request_id = %request_id,
                    traceparent,
                    rpc.grpc.status_code = tracing::field::Empty,
                    otel.status_message = tracing::field::Empty,
                )
            };
        }
        // Raft's own calls, tens a second between servers, get a span only at debug (and so
        // are never exported); a forwarded write is a client's call, and gets one like any.
        let replication = method.starts_with(PEER_SERVICE) && method != FORWARD_PATH;
        let span = if replication { request_span!(tracing::Level::DEBUG) } else { request_span!(tracing::Level::INFO) };
        let answer = telemetry::in_request(request_id.clone(), self.inner.call(request)).instrument(span.clone());
        let started = Instant::now();
        let answered_with_id = async move {
            let answered = match deadline {
                None => answer.await,
                // (A call answered at once is answered, however short its deadline.)
                Some(deadline) => match tokio::time::timeout(answer_by(deadline), answer).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        let passed = format!("the call's deadline ({deadline:?}) passed before it was answered");
                        let response = errors::coded(Code::DeadlineExceeded, passed).into_http();
                        record_outcome(method, started, &response, &span);
                        return Ok(response);
                    }
                },
            };
            answered.map(|response| {
                let response = with_reason(response.map(Body::new));
                record_outcome(method, started, &response, &span);
                response
            })
        };
        Box::pin(async move {
            answered_with_id.await.map(|mut response| {
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                response
            })
        })
    }
}

/// The header that names a call in the servers' logs: the caller's, if it sent one that fits
/// (printable ASCII, at most 128 characters), else a new one; the answer carries it back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The call's request id (`REQUEST_ID_HEADER`).
fn request_id(headers: &HeaderMap) -> String {
    let given = headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok());
    match given {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// The path prefix of the peer service's calls.
const PEER_SERVICE: &str = "/helios.v1.RaftPeer/";
/// The peer call that carries a client's write to the leader.
const FORWARD_PATH: &str = "/helios.v1.RaftPeer/Forward";

/// Counts a call by method and code, and how long it took to answer (a stream: to its first
/// message), and writes its code into its span. A status sent after the headers (every success,
/// and a stream's late error) is counted as OK.
fn record_outcome(method: String, started: Instant, response: &Response<Body>, span: &tracing::Span) {
    let status = Status::from_header_map(response.headers());
    let code = status.as_ref().map_or(Code::Ok, |s| s.code());
    span.record("rpc.grpc.status_code", code as i64);
    if let Some(status) = status.filter(|s| is_server_error(s.code())) {
        // (tonic's own errors, such as an unknown method's, come without a message.)
        let message = if status.message().is_empty() { code.description() } else { status.message() };
        span.record("otel.status_message", message);
    }
    // Servers' own traffic (Raft, forwarding) is not API traffic; a path that names no Helios
    // method (health, reflection, or a made-up name) counts as `other`.
    if method.starts_with(PEER_SERVICE) {
        return;
    }
    let method = if helios_api::is_helios_method(&method) { method } else { "other".to_string() };
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!("helios_api_request_duration_seconds", "method" => method.clone()).record(seconds);
    metrics::counter!("helios_api_requests_total", "method" => method, "code" => errors::code_reason(code))
        .increment(1);
}

/// Whether a call that ended with `code` failed on the server's side, for its span's status:
/// OpenTelemetry's gRPC conventions count the caller's mistakes (NOT_FOUND, INVALID_ARGUMENT,
/// PERMISSION_DENIED, ...) as answers, not as the server's errors.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// An error answered in the headers alone (a refused call: its status is there), with a reason:
/// a request that did not decode is INVALID_ARGUMENT, and an error without `ErrorInfo` gets its
/// code's name.
fn with_reason(response: Response<Body>) -> Response<Body> {
    let Some(status) = Status::from_header_map(response.headers()) else { return response };
    if status.code() == Code::Internal && status.message().starts_with(DECODE_FAILURE) {
        let message = format!("the request does not decode: {}", status.message());
        return errors::status(Code::InvalidArgument, errors::reason::UNDECODABLE_REQUEST, message).into_http();
    }
    if status.code() == Code::Ok || errors::has_reason(&status) {
        return response;
    }
    errors::coded(status.code(), status.message()).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("ascii"));
        headers
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_garbage_is_none() {
        assert_eq!(grpc_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&headers("9n")), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_deadline_is_answered_a_tenth_early_within_bounds() {
        assert_eq!(answer_by(Duration::from_millis(500)), Duration::from_millis(450));
        assert_eq!(answer_by(Duration::from_millis(20)), Duration::from_millis(15), "at least 5 ms early");
        assert_eq!(answer_by(Duration::from_secs(60)), Duration::from_secs(59), "at most a second early");
        assert_eq!(answer_by(Duration::from_millis(3)), Duration::ZERO);
    }
}
