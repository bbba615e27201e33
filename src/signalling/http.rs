//! The phonebook's HTTP/1.1 accept loop, for plain TCP and TLS alike.
//!
//! axum's own `serve` sets no timer, so a client could hold a connection forever by never
//! finishing its headers, or by opening connections and sending nothing. This loop gives
//! every request [`Limits::header_timeout`] for its headers (hyper counts an idle
//! keep-alive connection as waiting for headers, so that bounds idleness too), caps the
//! connections of one address and of everyone (WebSockets included: they keep their
//! place until they close), and shuts down gracefully.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::limits::{Limits, address_key};

/// How long requests still running at shutdown (a WHEP offer waiting for the camera) may
/// take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a refused connection may be logged at warning level.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `closing` is cancelled.
pub(super) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    closing: CancellationToken,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let per_address = AddressCounts::default();
    let everyone = AddressCounts::default();
    let tasks = TaskTracker::new();
    // Refusals are logged once a minute at most: a flood of connections must not
    // become a flood of log lines.
    let mut last_warned: Option<Instant> = None;
    loop {
        let (io, peer) = tokio::select! {
            _ = closing.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Over a cap the connection is closed at once: reading a request to refuse it
        // politely would cost what the cap is there to save.
        let Some(total) = everyone.take(IpAddr::from([0, 0, 0, 0]), limits.tcp_connections) else {
            if last_warned.is_none_or(|at| at.elapsed() > WARN_EVERY) {
                warn!(%peer, limit = limits.tcp_connections, "too many connections in all; closing new ones");
                last_warned = Some(Instant::now());
            }
            continue;
        };
        let Some(slot) = per_address.take(peer.ip(), limits.tcp_connections_per_address) else {
            debug!(address = %peer.ip(), "too many connections from one address; closed one");
            continue;
        };
        let router = router.clone();
        let closing = closing.clone();
        let header_timeout = limits.header_timeout();
        let io = Counted {
            io,
            _places: (total, slot),
        };
        tasks.spawn(async move {
            let app = TowerToHyperService::new(router);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    app.call(request)
                });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(%peer, %err, "HTTP connection ended");
                    }
                }
                _ = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, connection).await;
                }
            }
        });
    }
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), tasks.wait())
        .await
        .is_err()
    {
        warn!("some HTTP connections did not finish at shutdown");
    }
}

/// A connection's stream, holding its places in the counts for as long as it is open:
/// a WebSocket takes the stream over from HTTP and keeps it.
struct Counted<Io> {
    io: Io,
    _places: (AddressSlot, AddressSlot),
}

impl<Io: AsyncRead + Unpin> AsyncRead for Counted<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Counted<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Open connections by address (by its [`address_key`]).
#[derive(Clone, Default)]
pub(super) struct AddressCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl AddressCounts {
    /// A place for one more connection from `address`, unless it has `limit` already.
    pub(super) fn take(&self, address: IpAddr, limit: usize) -> Option<AddressSlot> {
        let key = address_key(address);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            key,
        })
    }
}

/// One of an address's connections; gives its place back when dropped.
pub(super) struct AddressSlot {
    counts: AddressCounts,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}
