//! What a server tells its operators besides metrics: log lines on stdout, filtered by
//! `RUST_LOG`, and, with `--otlp-endpoint`, its spans sent to an OpenTelemetry collector.
//!
//! Every call runs in a `request` span (`api::status_codes`); a write forwarded to the leader
//! runs in a `forward` span whose context travels in the call's `traceparent` header (W3C trace
//! context), with its `x-request-id`; on the leader, the forwarded call's own `request` span and
//! the entry's `apply` span join that trace. So one trace shows a call from the server that took
//! it to the leader's apply, and every span in it carries the call's request id.

mod context;
mod otlp;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use context::{
    apply_span, await_apply, in_request, outgoing_headers, request_id, AwaitingApply, TRACEPARENT_HEADER,
};
pub use otlp::Exporter;

/// The log filter when `RUST_LOG` is unset.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// Installs the process's logging, and the span export to `otlp_endpoint` if one is given.
/// `instance` names this server in the exported spans (`service.instance.id`). Call it once,
/// inside the runtime (the export runs as a task); keep the exporter to flush it at exit.
pub fn init(otlp_endpoint: Option<&str>, instance: &str) -> Result<Option<Exporter>, String> {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    let log = tracing_subscriber::fmt::layer()
        // Colours for a terminal only: a log file gets plain text, searchable as written.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_filter(log_filter);
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(log).init();
        return Ok(None);
    };
    let (layer, exporter) = otlp::start(endpoint, instance)?;
    // The server's own spans and the lines written in them, whatever `RUST_LOG` says: the two
    // outputs filter apart, so quiet logs still give whole traces.
    let spans = layer.with_filter(Targets::new().with_target("helios_server", Level::INFO));
    tracing_subscriber::registry().with(log).with(spans).init();
    context::exporting();
    Ok(Some(exporter))
}
