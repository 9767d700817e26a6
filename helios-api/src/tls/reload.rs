//! Serving with certificates that can be renewed without a restart (SIGHUP), for servers and
//! agents alike.
//!
//! A reload reads the certificate files again, with the same checks as at start-up. If they
//! load, the same listener is served with them by a new server and the previous one stops
//! gracefully: new connections get the new certificates, calls under way finish on the old ones.
//! Files that do not load are logged and the current certificates stay.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tonic::transport::server::Router;

use super::{Role, Tls};

/// Asks a process to read its certificates again, and counts the attempts it has made.
#[derive(Debug, Clone)]
pub struct Reload {
    requested: Arc<Notify>,
    attempts: Arc<watch::Sender<u64>>,
}

impl Default for Reload {
    fn default() -> Self {
        Reload { requested: Arc::default(), attempts: Arc::new(watch::channel(0).0) }
    }
}

impl Reload {
    /// Requests a reload (what SIGHUP does).
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Requests a reload and waits until it was tried (whether the files loaded or not: the log
    /// says).
    pub async fn request_and_wait(&self) {
        let mut attempts = self.attempts.subscribe();
        attempts.mark_unchanged();
        self.request();
        let _ = attempts.changed().await;
    }

    /// Requests a reload on every SIGHUP this process receives.
    pub fn on_sighup(&self) {
        let reload = self.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangups) => {
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading TLS certificates");
                        reload.request();
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "no SIGHUP handler; certificates reload only on restart"),
        }
    }
}

/// Serves `listener` with the router `build` makes for the current certificates until
/// `shutdown`, rebuilding it when `reload` asks and the files of `tls` (whose certificate must
/// hold `role`) load; `renewed` hears of each new set (for outgoing connections).
pub async fn serve<B, R>(
    listener: TcpListener,
    mut tls: Option<Tls>,
    role: Role,
    reload: Reload,
    shutdown: impl Future<Output = ()> + Send,
    build: B,
    renewed: R,
) -> Result<(), tonic::transport::Error>
where
    B: Fn(Option<&Tls>) -> Result<Router, tonic::transport::Error>,
    R: Fn(&Tls),
{
    let listener = Arc::new(listener);
    tokio::pin!(shutdown);
    let mut retired = Vec::new();
    let mut router = build(tls.as_ref())?;
    loop {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(accept(listener.clone()), async move {
            let _ = stopped.await;
        }));
        let reloaded = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                served = &mut server => return joined(served),
                () = reload.requested.notified() => {
                    // Everything that can fail (the files, the key inside them, the TLS
                    // configuration) is tried before the current server is touched.
                    let attempt = tls.as_ref().map(|current| {
                        let new = reload_files(current, role).map_err(|e| e.to_string())?;
                        let router = build(Some(&new)).map_err(|e| e.to_string())?;
                        Ok::<_, String>((new, router))
                    });
                    reload.attempts.send_modify(|n| *n += 1);
                    match attempt {
                        None => tracing::info!("reload requested; no TLS certificates to reload"),
                        Some(Ok(next)) => break Some(next),
                        Some(Err(e)) => tracing::warn!(error = %e, "certificates not reloaded; keeping the current ones"),
                    }
                }
            }
        };
        let _ = stop.send(());
        retired.push(server);
        let Some((new, next_router)) = reloaded else { break };
        tracing::info!(roles = ?new.roles, "reloaded TLS certificates");
        renewed(&new);
        tls = Some(new);
        router = next_router;
    }
    // Refuse new connections at once while the old ones drain, so callers fail over.
    drop(listener);
    // Bounded: a stream that never ends by itself (`alloc logs -f`) must not hold the process.
    let drain = async {
        let mut first_error = Ok(());
        for server in retired {
            if let Err(e) = joined(server.await) {
                first_error = first_error.and(Err(e));
            }
        }
        first_error
    };
    match tokio::time::timeout(DRAIN, drain).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("connections still open {DRAIN:?} after shutdown; stopping anyway");
            Ok(())
        }
    }
}

/// How long calls and streams under way may take to finish once a server stops.
const DRAIN: Duration = Duration::from_secs(10);

/// A server task's result; a panic inside it is re-raised here.
fn joined(
    served: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), tonic::transport::Error> {
    match served {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: nothing aborts these tasks, and a cancelled server has nothing to report.
        Err(_) => Ok(()),
    }
}

fn reload_files(current: &Tls, role: Role) -> Result<Tls, super::TlsError> {
    let tls = Tls::load(&current.files, &current.region)?;
    tls.require_own_role(role)?;
    Ok(tls)
}

/// Connections from a listener shared by successive servers; an accept error (too many open
/// files) is retried after a pause instead of spinning.
fn accept(listener: Arc<TcpListener>) -> impl Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = match listener.accept().await {
            Ok((stream, _)) => {
                // Nagle's algorithm against the peer's delayed ACKs stalls small replies by 40 ms.
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(e)
            }
        };
        Some((next, listener))
    })
}
