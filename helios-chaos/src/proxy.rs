//! A TCP proxy that can freeze, for tests of what a caller does when a peer stops answering
//! without closing its connections (a paused process, a link that drops packets silently).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// A proxy on 127.0.0.1 to one target.
pub struct FreezableProxy {
    /// Where callers connect instead of the target.
    pub addr: String,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
}

impl FreezableProxy {
    pub async fn start(target: String) -> std::io::Result<FreezableProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let frozen = watch::Sender::new(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (frozen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, flag.subscribe()));
                tokio::spawn(pump(out_read, in_write, flag.subscribe()));
            }
        });
        Ok(FreezableProxy { addr, frozen, accepted })
    }

    /// From now on no bytes pass either way, and every connection stays open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Connections held while frozen are closed; new ones pass bytes again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if *frozen.borrow_and_update() {
            // Hold the connection open and pass nothing, like a stopped process, until thawed;
            // then drop it, so that a server's graceful shutdown need not wait for it.
            let _ = frozen.wait_for(|frozen| !frozen).await;
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
