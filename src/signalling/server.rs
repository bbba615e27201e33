//! The phonebook server: axum with the WebSocket endpoint `/ws`, the page served from the
//! binary, and `GET /api/callees` for scripts.
//!
//! The rules live in [`Phonebook`]; this module only moves frames. Each connection gets a
//! bounded outgoing queue: a client that stops reading fills it and is disconnected rather
//! than holding up anyone else.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::access::{AccessSettings, Identity, Refused};
use super::phonebook::{ConnId, Output, Phonebook};
use super::protocol::{ClientMessage, ErrorCode, IceServer};
use super::whep::{self, Whep};
use crate::web;

/// Frames above this size close the connection outright (the phonebook answers frames
/// between [`super::phonebook::MAX_MESSAGE_BYTES`] and this with a `too_large` error).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Messages queued for one connection before it counts as not reading.
const OUTGOING_QUEUE: usize = 256;

/// A connection silent for this long (not even a pong) is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// How often the server pings each connection.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// What the server sends down one connection.
pub(crate) enum Outgoing {
    /// A protocol message.
    Text(String),
    /// A WebSocket ping.
    Ping,
    /// Close now.
    Close,
    /// Close with "going away": the server shuts down.
    GoingAway,
}

struct Hub {
    book: Phonebook,
    queues: HashMap<ConnId, mpsc::Sender<Outgoing>>,
}

/// Shared state of a running phonebook server.
#[derive(Clone)]
pub struct PhonebookServer {
    hub: Arc<Mutex<Hub>>,
    next_conn: Arc<AtomicU64>,
    /// Cancelled on shutdown: every open WebSocket closes with "going away".
    closing: CancellationToken,
    connections: TaskTracker,
    whep: Arc<Whep>,
    access: Arc<AccessSettings>,
    limits: Limits,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// How many times the message allowance a connection gets while it holds a callee name.
pub const CALLEE_RATE_FACTOR: u32 = 10;

/// How much one client may ask of the phonebook; each limit answers with a stable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Messages per second one connection may send, on average (`rate_limited`).
    pub messages_per_second: u32,
    /// Messages one connection may send in a burst above that rate.
    pub message_burst: u32,
    /// WebSocket connections open at once from one IP address (HTTP 429 on the upgrade).
    pub connections_per_address: usize,
    /// Unanswered calls one connection may have at once (`too_many_calls`).
    pub pending_calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            messages_per_second: 20,
            message_burst: 60,
            connections_per_address: 64,
            pending_calls: super::phonebook::DEFAULT_PENDING_CALLS,
        }
    }
}

/// A token bucket: `rate` messages a second on average, `burst` at once.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimit {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one message's worth at `now`; false when the bucket is empty.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl PhonebookServer {
    /// A server with an empty phonebook that hands `ice_servers` to its clients.
    pub fn new(ice_servers: Vec<IceServer>) -> Self {
        PhonebookServer {
            whep: Arc::default(),
            access: Arc::default(),
            limits: Limits::default(),
            per_address: Arc::default(),
            hub: Arc::new(Mutex::new(Hub {
                book: Phonebook::new(ice_servers),
                queues: HashMap::new(),
            })),
            next_conn: Arc::new(AtomicU64::new(1)),
            closing: CancellationToken::new(),
            connections: TaskTracker::new(),
        }
    }

    /// The same server, letting in only whom `access` allows (WHEP players included).
    pub fn with_access(self, access: AccessSettings) -> Self {
        {
            let mut hub = self.lock();
            let book = std::mem::replace(&mut hub.book, Phonebook::new(Vec::new()));
            hub.book = book.with_access(access.clone());
        }
        PhonebookServer {
            access: Arc::new(access),
            ..self
        }
    }

    /// The same server, with the ICE servers for each client made by `source` (fresh
    /// time-limited TURN credentials, for instance).
    pub fn with_ice_source(self, source: super::phonebook::IceSource) -> Self {
        {
            let mut hub = self.lock();
            let book = std::mem::replace(&mut hub.book, Phonebook::new(Vec::new()));
            hub.book = book.with_ice_source(source);
        }
        self
    }

    /// The same server, with `limits`.
    pub fn with_limits(self, limits: Limits) -> Self {
        {
            let mut hub = self.lock();
            let book = std::mem::replace(&mut hub.book, Phonebook::new(Vec::new()));
            hub.book = book.with_pending_calls(limits.pending_calls);
        }
        PhonebookServer { limits, ..self }
    }

    /// The axum router: `/`, the page's assets, `/ws`, `/api/callees` and `/whep/…`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(upgrade))
            .route(
                "/whep/{callee}",
                post(whep::offer).options(whep::options),
            )
            .route(
                "/whep/{callee}/{session}",
                patch(whep::patch)
                    .delete(whep::delete)
                    .options(whep::options),
            )
            .route("/api/callees", get(list_callees))
            .route("/healthz", get(|| async { "ok" }))
            .route("/", get(|| async { asset("index.html") }))
            .route("/{file}", get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }))
            .with_state(self.clone())
    }

    /// Serves plain HTTP on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.serve_on(listener, shutdown).await
    }

    /// Serves on any listener (a [`crate::tls::TlsListener`] for HTTPS) until `shutdown`
    /// completes.
    pub async fn serve_on<L>(
        self,
        listener: L,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        use axum::serve::ListenerExt;
        let addr = listener.local_addr()?;
        info!(%addr, "phonebook listening");
        let closing = self.closing.clone();
        let result = axum::serve(
            // tap_io gives any listener the peer address as ConnectInfo.
            listener.tap_io(|_| ()),
            self.router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await;
        // axum does not wait for upgraded connections: close them ourselves.
        self.closing.cancel();
        self.connections.close();
        if tokio::time::timeout(Duration::from_secs(3), self.connections.wait())
            .await
            .is_err()
        {
            warn!("some WebSocket connections did not close within 3 s");
        }
        result?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock would be a bug in Phonebook; keep serving the
        // state as it is rather than poisoning every later connection.
        self.hub
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// WHEP's tokens and sessions.
    pub(crate) fn whep(&self) -> &Whep {
        &self.whep
    }

    /// The STUN/TURN servers handed to clients.
    pub(crate) fn ice_servers(&self) -> Vec<IceServer> {
        self.lock().book.ice_servers()
    }

    /// Who `token` makes a client, by the access settings.
    pub(crate) fn identify(&self, token: Option<&str>) -> Result<Identity, Refused> {
        self.access.identify(token)
    }

    /// Whether `who` may call `callee`, or why not.
    pub(crate) fn may_call(&self, who: &Identity, callee: &str) -> Result<(), Refused> {
        self.access.may_call(who, callee)
    }

    /// Whether connection `conn` holds a registered name (a camera, or a page that is
    /// online).
    fn holds_a_name(&self, conn: ConnId) -> bool {
        self.lock().book.holds_a_name(conn)
    }

    /// Whether `name` is registered now.
    pub(crate) fn has_callee(&self, name: &str) -> bool {
        self.lock().book.callees().iter().any(|c| c.name == name)
    }

    /// Handles `msg` as if connection `conn` had sent it.
    pub(crate) fn message(&self, conn: ConnId, msg: ClientMessage) {
        let mut hub = self.lock();
        let out = hub.book.handle(conn, msg);
        deliver(&mut hub, out);
    }

    /// Opens a connection in the phonebook; what is sent to it arrives on the receiver.
    pub(crate) fn open(&self) -> (ConnId, mpsc::Receiver<Outgoing>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let mut hub = self.lock();
        hub.book.connect(conn);
        hub.queues.insert(conn, tx);
        (conn, rx)
    }

    fn text(&self, conn: ConnId, text: &str) {
        let mut hub = self.lock();
        let out = hub.book.handle_text(conn, text);
        deliver(&mut hub, out);
    }

    fn refuse(&self, conn: ConnId, code: ErrorCode, why: &str) {
        let mut hub = self.lock();
        let out = hub.book.invalid(conn, code, why.to_owned());
        deliver(&mut hub, out);
    }

    fn invalid(&self, conn: ConnId, why: &str) {
        let mut hub = self.lock();
        let out = hub
            .book
            .invalid(conn, ErrorCode::BadMessage, why.to_owned());
        deliver(&mut hub, out);
    }

    /// Closes `conn`: its names are released and its calls hung up.
    pub(crate) fn close(&self, conn: ConnId) {
        let mut hub = self.lock();
        hub.queues.remove(&conn);
        let out = hub.book.disconnect(conn);
        deliver(&mut hub, out);
    }
}

fn deliver(hub: &mut Hub, outputs: Vec<Output>) {
    let mut stalled = Vec::new();
    for output in outputs {
        let (conn, item) = match output {
            Output::Send(conn, msg) => (conn, Outgoing::Text(msg.to_text())),
            Output::Close(conn) => (conn, Outgoing::Close),
        };
        if let Some(queue) = hub.queues.get(&conn)
            && queue.try_send(item).is_err()
        {
            stalled.push(conn);
        }
    }
    for conn in stalled {
        warn!(conn, "client is not reading its messages; disconnecting it");
        hub.queues.remove(&conn);
        let more = hub.book.disconnect(conn);
        deliver(hub, more);
    }
}

/// Each connection's read buffer, allocated up front. tungstenite's 128 KiB default suits
/// bulk transfers; signalling messages are a few hundred bytes (an SDP a few KiB, read in
/// several chunks if need be), and a phonebook holds a connection per open page.
const READ_BUFFER_BYTES: usize = 8 * 1024;

async fn upgrade(
    State(server): State<PhonebookServer>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(slot) = AddressSlot::take(&server, peer.ip()) else {
        warn!(address = %peer.ip(), "too many connections from one address; refused");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many connections from this address (the limit is {})\n",
                server.limits.connections_per_address
            ),
        )
            .into_response();
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tracker = server.connections.clone();
            tracker.track_future(async move {
                connection(server, socket, peer).await;
                drop(slot);
            })
        })
}

/// One of an address's connections; gives its place back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    fn take(server: &PhonebookServer, address: IpAddr) -> Option<AddressSlot> {
        let mut counts = server.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= server.limits.connections_per_address {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: server.per_address.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

async fn connection(server: PhonebookServer, socket: WebSocket, peer: SocketAddr) {
    let (conn, mut outgoing) = server.open();
    debug!(conn, %peer, "client connected");
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(item) = outgoing.recv().await {
            let result = match item {
                Outgoing::Text(text) => sink.send(Message::Text(text.into())).await,
                Outgoing::Ping => sink.send(Message::Ping(Default::default())).await,
                Outgoing::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Outgoing::GoingAway => {
                    let frame = CloseFrame {
                        code: close_code::AWAY,
                        reason: "phonebook shutting down".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            if result.is_err() {
                break;
            }
        }
    });

    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = tokio::time::Instant::now();
    let mut rate = RateLimit::new(
        server.limits.messages_per_second,
        server.limits.message_burst,
        Instant::now(),
    );
    // A camera relays every call's answer and candidates: when this connection holds a
    // registered name, a ten times larger allowance is drawn on before anything is dropped.
    let mut callee_rate = RateLimit::new(
        server
            .limits
            .messages_per_second
            .saturating_mul(CALLEE_RATE_FACTOR),
        server
            .limits
            .message_burst
            .saturating_mul(CALLEE_RATE_FACTOR),
        Instant::now(),
    );
    let mut dropped: u32 = 0;
    let closing = server.closing.clone();
    let mut writer = writer;
    loop {
        tokio::select! {
            _ = closing.cancelled() => {
                let queue = server.lock().queues.get(&conn).cloned();
                if let Some(queue) = queue {
                    let _ = queue.try_send(Outgoing::GoingAway);
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                break;
            }
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Message::Text(text)))
                        if rate.allow(Instant::now())
                            || (server.holds_a_name(conn) && callee_rate.allow(Instant::now())) =>
                    {
                        server.text(conn, text.as_str())
                    }
                    Some(Ok(Message::Text(_))) => {
                        dropped += 1;
                        // One error per burst's worth is enough to tell the client; a client
                        // that keeps flooding is cut off.
                        if dropped % server.limits.message_burst.max(1) == 1 {
                            server.refuse(conn, ErrorCode::RateLimited, &format!(
                                "more than {} messages a second; messages are being dropped",
                                server.limits.messages_per_second
                            ));
                        }
                        if dropped > 10 * server.limits.message_burst.max(1) {
                            warn!(conn, %peer, "client keeps flooding; disconnecting it");
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => server.invalid(conn, "binary frames are not part of the protocol; send JSON text"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(err)) => {
                        debug!(conn, %err, "connection failed");
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    info!(conn, %peer, "client silent for too long; disconnecting it");
                    break;
                }
                let queue = server.lock().queues.get(&conn).cloned();
                match queue {
                    // Pings go through the writer so frames never interleave.
                    Some(queue) => { let _ = queue.try_send(Outgoing::Ping); }
                    None => break,
                }
            }
        }
        if writer.is_finished() {
            break;
        }
    }
    server.close(conn);
    writer.abort();
    debug!(conn, "client disconnected");
}

async fn list_callees(State(server): State<PhonebookServer>) -> Response {
    let callees = server.lock().book.callees();
    axum::Json(callees).into_response()
}

fn asset(file: &str) -> Response {
    match web::asset(file) {
        Some((body, content_type)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 5, start);
        assert_eq!((0..8).filter(|_| limit.allow(start)).count(), 5);
        // 0.3 s later three more have dripped in.
        let later = start + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| limit.allow(later)).count(), 3);
        // A long pause refills no more than the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limit.allow(much_later)).count(), 5);
    }
}
