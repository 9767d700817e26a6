//! Span export to an OpenTelemetry collector over OTLP/gRPC (`--otlp-endpoint`): a `tracing`
//! layer that records the server's spans, and a task that sends them in batches.
//!
//! Export never holds a call up nor grows without bound: a finished span is queued without
//! waiting, and dropped (and counted in the log) when the queue is full because the collector is
//! slow or down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use helios_api::otlp as pb;
use helios_api::otlp::span::SpanKind;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::Layer;

/// Finished spans waiting for export, at most.
const QUEUE: usize = 8192;
/// Spans per export call, at most.
const BATCH: usize = 512;
/// How long a finished span waits for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// An export call's deadline.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines a span keeps; more are counted as dropped.
const EVENTS_PER_SPAN: usize = 64;
/// How long the exit waits for the last spans to go out.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(3);

/// A span's place in a trace: what its children inherit, and what `traceparent` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// Whether the trace is recorded: a caller that sent `traceparent` with its sampled flag
    /// unset decided not to, and its calls' spans are neither exported nor marked sampled on.
    pub sampled: bool,
}

impl SpanContext {
    /// The `traceparent` header naming this span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }

    /// Reads a `traceparent` header (W3C trace context, version 00 or a later one's first four
    /// parts); `None` if it is malformed or names the all-zero trace or span.
    pub fn from_traceparent(text: &str) -> Option<SpanContext> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let context = SpanContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }
}

/// What the layer keeps of an open span, in the span's extensions.
struct Recording {
    context: SpanContext,
    parent: Option<u64>,
    kind: SpanKind,
    start: u64,
    attributes: Vec<pb::KeyValue>,
    events: Vec<pb::span::Event>,
    dropped_events: u32,
    error: Option<String>,
}

/// The trace context of `span`, if this layer records it.
pub(super) fn context_of<R: for<'a> LookupSpan<'a>>(span: &SpanRef<'_, R>) -> Option<SpanContext> {
    span.extensions().get::<Recording>().map(|r| r.context)
}

/// The layer: records spans and queues the finished ones for the exporter.
pub struct OtlpLayer {
    finished: mpsc::Sender<pb::Span>,
    dropped: Arc<AtomicU64>,
}

/// The running export; `shutdown` sends what is queued and stops it.
pub struct Exporter {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Sends the spans still queued (waiting at most a few seconds), then stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(FLUSH_AT_EXIT, self.task).await;
    }
}

/// Starts exporting to `endpoint` (`http://HOST:PORT`, a collector's OTLP/gRPC port, usually
/// 4317); `instance` becomes `service.instance.id`.
pub fn start(endpoint: &str, instance: &str) -> Result<(OtlpLayer, Exporter), String> {
    let problem = |what: &str| format!("--otlp-endpoint {endpoint:?}: {what}");
    if !endpoint.starts_with("http://") {
        // A collector on the same host (or network) is OTLP's usual setup; TLS to a remote one
        // would need its own certificate flags, which do not exist yet.
        return Err(problem("must be http://HOST:PORT (a collector's OTLP/gRPC port); https is not supported"));
    }
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| problem(&e.to_string()))?
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy();
    let client = pb::trace_service_client::TraceServiceClient::new(channel);
    let (finished, queue) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = oneshot::channel();
    let batches = Batches { client, resource: resource(instance), dropped: dropped.clone(), failing_since: None };
    let task = tokio::spawn(batches.run(queue, stopped));
    Ok((OtlpLayer { finished, dropped }, Exporter { stop, task }))
}

/// What every exported span says made it.
fn resource(instance: &str) -> pb::Resource {
    let attributes = [
        ("service.name", "helios-server"),
        ("service.instance.id", instance),
        ("service.version", env!("CARGO_PKG_VERSION")),
    ];
    pb::Resource { attributes: attributes.into_iter().map(|(k, v)| text(k, v.to_string())).collect() }
}

fn text(key: &str, value: String) -> pb::KeyValue {
    pb::KeyValue {
        key: key.to_string(),
        value: Some(pb::AnyValue { value: Some(pb::any_value::Value::StringValue(value)) }),
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A random id for a new trace or span (never zero: zero means "none" in OTLP).
fn random_id() -> u128 {
    uuid::Uuid::new_v4().as_u128().max(1)
}

/// The fields of a span or event, as OTLP attributes; a few names steer the span instead, as
/// with `tracing-opentelemetry`: `traceparent` (a remote parent), `otel.kind` (`server`,
/// `client`), `otel.status_message` (the span failed), and an event's `message`.
#[derive(Default)]
struct Fields {
    attributes: Vec<pb::KeyValue>,
    remote_parent: Option<SpanContext>,
    kind: Option<SpanKind>,
    error: Option<String>,
    message: Option<String>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: pb::any_value::Value) {
        let as_text = || match &value {
            pb::any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        };
        match field.name() {
            "traceparent" => self.remote_parent = SpanContext::from_traceparent(&as_text()),
            "otel.kind" => {
                self.kind = match as_text().as_str() {
                    "server" => Some(SpanKind::Server),
                    "client" => Some(SpanKind::Client),
                    _ => Some(SpanKind::Internal),
                }
            }
            "otel.status_message" => self.error = Some(as_text()),
            "message" => self.message = Some(as_text()),
            name => self
                .attributes
                .push(pb::KeyValue { key: name.to_string(), value: Some(pb::AnyValue { value: Some(value) }) }),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, pb::any_value::Value::StringValue(value.to_string()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, pb::any_value::Value::BoolValue(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, pb::any_value::Value::IntValue(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(v) => self.add(field, pb::any_value::Value::IntValue(v)),
            Err(_) => self.add(field, pb::any_value::Value::StringValue(value.to_string())),
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.add(field, pb::any_value::Value::DoubleValue(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.add(field, pb::any_value::Value::StringValue(format!("{value:?}")));
    }
}

impl Recording {
    fn take(&mut self, fields: Fields) {
        self.attributes.extend(fields.attributes);
        if let Some(kind) = fields.kind {
            self.kind = kind;
        }
        if fields.error.is_some() {
            self.error = fields.error;
        }
    }

    fn finish(self) -> pb::Span {
        let status = self.error.map(|message| pb::Status { message, code: pb::status::StatusCode::Error.into() });
        pb::Span {
            trace_id: self.context.trace_id.to_be_bytes().to_vec(),
            span_id: self.context.span_id.to_be_bytes().to_vec(),
            parent_span_id: self.parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: String::new(),
            kind: self.kind.into(),
            start_time_unix_nano: self.start,
            end_time_unix_nano: unix_nanos(),
            attributes: self.attributes,
            events: self.events,
            dropped_events_count: self.dropped_events,
            status,
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for OtlpLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let inherited = span.parent().and_then(|parent| context_of(&parent));
        let (trace_id, parent, sampled) = match (fields.remote_parent, inherited) {
            (Some(remote), _) => (remote.trace_id, Some(remote.span_id), remote.sampled),
            (None, Some(local)) => (local.trace_id, Some(local.span_id), local.sampled),
            (None, None) => (random_id(), None, true),
        };
        let span_id = u64::try_from(random_id() & u128::from(u64::MAX)).unwrap_or(1).max(1);
        let mut recording = Recording {
            context: SpanContext { trace_id, span_id, sampled },
            parent,
            kind: SpanKind::Internal,
            start: unix_nanos(),
            attributes: Vec::new(),
            events: Vec::new(),
            dropped_events: 0,
            error: None,
        };
        recording.take(fields);
        span.extensions_mut().insert(recording);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        if let Some(recording) = extensions.get_mut::<Recording>() {
            recording.take(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else { return };
        let mut extensions = span.extensions_mut();
        let Some(recording) = extensions.get_mut::<Recording>() else { return };
        if recording.events.len() >= EVENTS_PER_SPAN {
            recording.dropped_events += 1;
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut attributes = fields.attributes;
        attributes.push(text("level", event.metadata().level().to_string()));
        let name = fields.message.unwrap_or_else(|| event.metadata().name().to_string());
        recording.events.push(pb::span::Event { time_unix_nano: unix_nanos(), name, attributes });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(recording) = span.extensions_mut().remove::<Recording>() else { return };
        if !recording.context.sampled {
            return;
        }
        let mut finished = recording.finish();
        finished.name = span.name().to_string();
        if self.finished.try_send(finished).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The export task's state.
struct Batches {
    client: pb::trace_service_client::TraceServiceClient<tonic::transport::Channel>,
    resource: pb::Resource,
    dropped: Arc<AtomicU64>,
    /// Since when exports fail, so the log says so once, not at every batch.
    failing_since: Option<Instant>,
}

impl Batches {
    async fn run(mut self, mut queue: mpsc::Receiver<pb::Span>, mut stop: oneshot::Receiver<()>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut stopping = false;
        while !stopping {
            tokio::select! {
                _ = &mut stop => break,
                received = queue.recv_many(&mut batch, BATCH) => if received == 0 { break },
            }
            // A batch goes out when full, when its first span has waited `LINGER`, or at once
            // when the server stops.
            let send_by = Instant::now() + LINGER;
            while batch.len() < BATCH {
                let room = BATCH - batch.len();
                tokio::select! {
                    _ = &mut stop => { stopping = true; break }
                    () = tokio::time::sleep_until(send_by) => break,
                    received = queue.recv_many(&mut batch, room) => if received == 0 { break },
                }
            }
            self.send(std::mem::take(&mut batch)).await;
        }
        // Stopping: what is queued goes out before the process ends.
        while let Ok(span) = queue.try_recv() {
            batch.push(span);
            if batch.len() == BATCH {
                self.send(std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.send(batch).await;
        }
    }

    async fn send(&mut self, spans: Vec<pb::Span>) {
        let count = spans.len();
        let scope =
            pb::InstrumentationScope { name: "helios-server".into(), version: env!("CARGO_PKG_VERSION").into() };
        let request = pb::ExportTraceServiceRequest {
            resource_spans: vec![pb::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![pb::ScopeSpans { scope: Some(scope), spans }],
            }],
        };
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "spans dropped: the export queue was full (the collector is slow or down)");
        }
        match self.client.export(request).await {
            Ok(reply) => {
                if let Some(partial) = reply.into_inner().partial_success.filter(|p| p.rejected_spans > 0) {
                    tracing::warn!(rejected = partial.rejected_spans, error = %partial.error_message, "the collector refused some spans");
                }
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(failed_for = ?since.elapsed(), "span export works again");
                }
            }
            Err(status) => {
                if self.failing_since.is_none() {
                    self.failing_since = Some(Instant::now());
                    tracing::warn!(%status, spans = count, "span export failed; spans are dropped until it works");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_w3c_refuses() {
        let context =
            SpanContext { trace_id: 0x0af7651916cd43dd8448eb211c80319c, span_id: 0xb7ad6b7169203331, sampled: true };
        let header = context.traceparent();
        assert_eq!(header, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(SpanContext::from_traceparent(&header), Some(context));
        // A caller that does not record its trace: neither do the servers, and they say so on.
        let unsampled = SpanContext::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        assert_eq!(unsampled, Some(SpanContext { sampled: false, ..context }));
        assert!(unsampled.expect("parsed").traceparent().ends_with("-00"));
        let other_flags = SpanContext::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03");
        assert_eq!(other_flags.map(|c| c.sampled), Some(true), "only bit 0 is the sampled flag");
        // A later version may append parts; version 00 may not.
        assert!(SpanContext::from_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x").is_some());
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "",
        ] {
            assert_eq!(SpanContext::from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_http_endpoints_are_taken() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let refused = start("https://collector:4317", "1").err().expect("https is refused");
            assert!(refused.contains("--otlp-endpoint") && refused.contains("https"), "{refused}");
            assert!(start("collector:4317", "1").is_err(), "a scheme is needed");
            assert!(start("http://127.0.0.1:4317", "1").is_ok());
        });
    }
}
