//! The phonebook server: axum with the WebSocket endpoint `/ws`, the page served from the
//! binary, and `GET /api/callees` for scripts.
//!
//! The rules live in [`Phonebook`]; this module only moves frames. What is queued for a
//! connection is charged to whoever caused it ([`super::mailbox`]): a sender whose
//! messages pile up unread at a receiver is refused, so no connection is ever
//! disconnected for what others send it. A connection is dropped for what it does
//! itself: flooding, not reading the answers to its own requests, or not reading at all
//! for [`STALLED_AFTER`].

use std::net::SocketAddr;
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
use super::http::{AddressCounts, AddressSlot};
pub use super::limits::{CALLEE_RATE_FACTOR, Limits, RateLimit};
use super::limits::{RELAY_WINDOW, STALLED_AFTER};
pub(crate) use super::mailbox::Outgoing;
use super::mailbox::{Charge, Ledger, Refusal};
use super::phonebook::{ConnId, Output, Phonebook};
use super::protocol::{ClientMessage, ErrorCode, IceServer, ServerMessage};
use super::whep::{self, Whep};
use crate::web;

/// Frames above this size close the connection outright (the phonebook answers frames
/// between [`super::phonebook::MAX_MESSAGE_BYTES`] and this with a `too_large` error).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Room in each connection's queue. The ledger's windows keep what waits far below it;
/// a full queue would mean a bug in that accounting, and drops the connection.
const OUTGOING_QUEUE: usize = 8 * 1024;

/// A connection silent for this long (not even a pong) is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// How often the server pings each connection.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// How long a dropped connection's close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One connection's queue, its account, and the signal that drops it.
struct Mailbox {
    queue: mpsc::Sender<Outgoing>,
    ledger: Arc<Ledger>,
    kick: CancellationToken,
}

struct Hub {
    book: Phonebook,
    mailboxes: HashMap<ConnId, Mailbox>,
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
    per_address: AddressCounts,
}

impl PhonebookServer {
    /// A server with an empty phonebook that hands `ice_servers` to its clients.
    pub fn new(ice_servers: Vec<IceServer>) -> Self {
        PhonebookServer {
            whep: Arc::default(),
            access: Arc::default(),
            limits: Limits::default(),
            per_address: AddressCounts::default(),
            hub: Arc::new(Mutex::new(Hub {
                book: Phonebook::new(ice_servers),
                mailboxes: HashMap::new(),
            })),
            next_conn: Arc::new(AtomicU64::new(1)),
            closing: CancellationToken::new(),
            connections: TaskTracker::new(),
        }
    }

    fn rebuild(&self, change: impl FnOnce(Phonebook) -> Phonebook) {
        let mut hub = self.lock();
        let book = std::mem::replace(&mut hub.book, Phonebook::new(Vec::new()));
        hub.book = change(book);
    }

    /// The same server, letting in only whom `access` allows (WHEP players included).
    pub fn with_access(self, access: AccessSettings) -> Self {
        let settings = access.clone();
        self.rebuild(|book| book.with_access(settings));
        PhonebookServer {
            access: Arc::new(access),
            ..self
        }
    }

    /// The same server, with the ICE servers for each client made by `source` (fresh
    /// time-limited TURN credentials, for instance).
    pub fn with_ice_source(self, source: super::phonebook::IceSource) -> Self {
        self.rebuild(|book| book.with_ice_source(source));
        self
    }

    /// The same server, with `limits`.
    pub fn with_limits(self, limits: Limits) -> Self {
        self.rebuild(|book| book.with_limits(limits));
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
        let addr = listener.local_addr()?;
        info!(%addr, "phonebook listening");
        let closing = self.closing.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            closing.cancel();
        });
        super::http::serve(listener, self.router(), self.limits, self.closing.clone()).await;
        signal.abort();
        // Upgraded connections are not HTTP's any more: close them ourselves.
        self.closing.cancel();
        self.connections.close();
        if tokio::time::timeout(Duration::from_secs(3), self.connections.wait())
            .await
            .is_err()
        {
            warn!("some WebSocket connections did not close within 3 s");
        }
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

    /// Whether `name` (in any spelling) is registered now.
    pub(crate) fn has_callee(&self, name: &str) -> bool {
        self.lock().book.has_callee(name)
    }

    /// Handles `msg` as if connection `conn` had sent it.
    pub(crate) fn message(&self, conn: ConnId, msg: ClientMessage) {
        let bytes = serde_json::to_string(&msg).map_or(0, |text| text.len());
        let mut hub = self.lock();
        hub.relay(conn, msg, bytes);
    }

    /// Opens a connection in the phonebook; what is sent to it arrives on the receiver.
    pub(crate) fn open(&self) -> (ConnId, mpsc::Receiver<Outgoing>) {
        let (conn, outgoing, _, _) = self.open_socket();
        (conn, outgoing)
    }

    fn open_socket(
        &self,
    ) -> (
        ConnId,
        mpsc::Receiver<Outgoing>,
        Arc<Ledger>,
        CancellationToken,
    ) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (queue, outgoing) = mpsc::channel(OUTGOING_QUEUE);
        let ledger = Arc::new(Ledger::default());
        let kick = CancellationToken::new();
        let mut hub = self.lock();
        hub.book.connect(conn);
        hub.mailboxes.insert(
            conn,
            Mailbox {
                queue,
                ledger: ledger.clone(),
                kick: kick.clone(),
            },
        );
        (conn, outgoing, ledger, kick)
    }

    /// A text frame from `conn`, within its allowance or not.
    fn text(&self, conn: ConnId, text: &str, allowance: &mut Allowance) -> Flow {
        let parsed = Phonebook::parse_text(text);
        let mut hub = self.lock();
        let now = Instant::now();
        let admitted = allowance.rate.allow(now)
            || (parsed
                .as_ref()
                .is_ok_and(|msg| hub.book.answers_call(conn, msg))
                && allowance.answering.allow(now));
        if !admitted {
            return allowance.over(&mut hub, conn, &self.limits);
        }
        match parsed {
            Ok(msg) => hub.relay(conn, msg, text.len()),
            Err((code, why)) => {
                let out = hub.book.invalid(conn, code, why);
                hub.deliver(conn, out);
            }
        }
        Flow::Continue
    }

    /// A binary frame from `conn`: not part of the protocol, and counted like any frame.
    fn binary(&self, conn: ConnId, allowance: &mut Allowance) -> Flow {
        let mut hub = self.lock();
        if !allowance.rate.allow(Instant::now()) {
            return allowance.over(&mut hub, conn, &self.limits);
        }
        let out = hub.book.invalid(
            conn,
            ErrorCode::BadMessage,
            "binary frames are not part of the protocol; send JSON text".into(),
        );
        hub.deliver(conn, out);
        Flow::Continue
    }

    /// Sends `conn` the whole callee list again, if it listens: it missed changes while
    /// it was not reading.
    fn resync(&self, conn: ConnId) {
        let mut hub = self.lock();
        if hub.book.is_listening(conn) {
            let callees = hub.book.callees();
            hub.deliver(
                conn,
                vec![Output::Send(conn, ServerMessage::Callees { callees })],
            );
        }
    }

    /// Closes `conn`: its names are released and its calls hung up.
    pub(crate) fn close(&self, conn: ConnId) {
        let mut hub = self.lock();
        hub.drop_connection(conn);
    }

    /// Drops the connection that holds `name` (in any spelling), as the server drops a
    /// client it gives up on: its calls are hung up and its socket is closed at once.
    /// False when nobody holds the name.
    pub fn disconnect_callee(&self, name: &str) -> bool {
        let mut hub = self.lock();
        match hub.book.owner_of(name) {
            Some(conn) => {
                info!(conn, "dropping the connection of a callee");
                hub.drop_connection(conn);
                true
            }
            None => false,
        }
    }
}

/// What a connection's reader does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The client keeps flooding: drop it.
    CutOff,
}

/// How many messages a connection may still send.
struct Allowance {
    rate: RateLimit,
    /// For the messages of calls this connection answers: a camera relays every caller's
    /// answer and candidates.
    answering: RateLimit,
    dropped: u32,
}

impl Allowance {
    fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        Allowance {
            rate: RateLimit::new(limits.messages_per_second, limits.message_burst, now),
            answering: RateLimit::new(
                limits
                    .messages_per_second
                    .saturating_mul(CALLEE_RATE_FACTOR),
                limits.message_burst.saturating_mul(CALLEE_RATE_FACTOR),
                now,
            ),
            dropped: 0,
        }
    }

    /// A frame over the allowance was dropped.
    fn over(&mut self, hub: &mut Hub, conn: ConnId, limits: &Limits) -> Flow {
        self.dropped += 1;
        let burst = limits.message_burst.max(1);
        // One error per burst's worth is enough to tell the client; a client that keeps
        // flooding is cut off.
        if self.dropped % burst == 1 || burst == 1 {
            let out = hub.book.invalid(
                conn,
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages a second; messages are being dropped",
                    limits.messages_per_second
                ),
            );
            hub.deliver(conn, out);
        }
        if self.dropped > 10 * burst {
            Flow::CutOff
        } else {
            Flow::Continue
        }
    }
}

impl Hub {
    /// Handles `msg` from `conn` (a frame of `bytes`), unless it is a call message for
    /// a receiver that has too many of `conn`'s messages unread: that one is refused to
    /// `conn` and not relayed.
    fn relay(&mut self, conn: ConnId, msg: ClientMessage, bytes: usize) {
        if let Some(to) = self.book.relay_target(conn, &msg)
            && to != conn
            && self
                .mailboxes
                .get(&to)
                .is_some_and(|m| !m.ledger.has_room(conn, bytes))
        {
            let call_id = match &msg {
                ClientMessage::Call { call_id, .. }
                | ClientMessage::Ringing { call_id }
                | ClientMessage::Candidate { call_id, .. } => Some(call_id.as_str()),
                _ => None,
            };
            let refused = ServerMessage::error(
                ErrorCode::RateLimited,
                format!(
                    "the other end has not read what this connection sent it (at most {} messages or {} KiB wait); message dropped",
                    RELAY_WINDOW.messages,
                    RELAY_WINDOW.bytes / 1024
                ),
                call_id,
            );
            self.deliver(conn, vec![Output::Send(conn, refused)]);
            return;
        }
        let out = self.book.handle(conn, msg);
        self.deliver(conn, out);
    }

    /// Queues `outputs`, which the phonebook produced for `cause` (a connection's
    /// message, or its end).
    fn deliver(&mut self, cause: ConnId, outputs: Vec<Output>) {
        let mut unread = Vec::new();
        for output in outputs {
            let (to, item) = match output {
                Output::Close(to) => (to, Outgoing::Close),
                Output::Send(to, msg) => {
                    let Some(mailbox) = self.mailboxes.get(&to) else {
                        continue;
                    };
                    let charge = match &msg {
                        ServerMessage::Callees { .. }
                        | ServerMessage::CalleeUpdate { .. }
                        | ServerMessage::CalleeRemoved { .. } => Charge::List,
                        _ if to == cause => Charge::Reply,
                        _ => Charge::Relay(cause),
                    };
                    match mailbox.ledger.letter(msg.to_text(), charge) {
                        Ok(letter) => (to, Outgoing::Text(letter)),
                        // It gets the whole list once it has read what waits.
                        Err(Refusal::ListDropped) => continue,
                        Err(Refusal::RepliesUnread) => {
                            unread.push(to);
                            continue;
                        }
                    }
                }
            };
            if let Some(mailbox) = self.mailboxes.get(&to)
                && let Err(mpsc::error::TrySendError::Full(_)) = mailbox.queue.try_send(item)
            {
                unread.push(to);
            }
        }
        for conn in unread {
            warn!(
                conn,
                "client does not read the answers to its own messages; disconnecting it"
            );
            self.drop_connection(conn);
        }
    }

    /// Removes `conn`: its socket closes at once, its names go and its calls end.
    fn drop_connection(&mut self, conn: ConnId) {
        if let Some(mailbox) = self.mailboxes.remove(&conn) {
            mailbox.kick.cancel();
        }
        let out = self.book.disconnect(conn);
        self.deliver(conn, out);
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
    let Some(slot) = server
        .per_address
        .take(peer.ip(), server.limits.connections_per_address)
    else {
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
            tracker.track_future(connection(server, socket, peer, slot))
        })
}

async fn connection(
    server: PhonebookServer,
    socket: WebSocket,
    peer: SocketAddr,
    slot: AddressSlot,
) {
    let _slot = slot;
    let (conn, outgoing, ledger, kick) = server.open_socket();
    debug!(conn, %peer, "client connected");
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write(server.clone(), conn, sink, outgoing, ledger, kick));

    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = tokio::time::Instant::now();
    let mut allowance = Allowance::new(&server.limits);
    let closing = server.closing.clone();
    loop {
        tokio::select! {
            _ = closing.cancelled() => {
                let queue = server.lock().mailboxes.get(&conn).map(|m| m.queue.clone());
                if let Some(queue) = queue {
                    let _ = queue.try_send(Outgoing::GoingAway);
                }
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await;
                break;
            }
            // The writer ends when the connection was dropped, stalled or failed: close
            // the socket now, not at the next ping, so the client learns of it at once.
            _ = &mut writer => break,
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                let flow = match frame {
                    Some(Ok(Message::Text(text))) => server.text(conn, text.as_str(), &mut allowance),
                    Some(Ok(Message::Binary(_))) => server.binary(conn, &mut allowance),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(err)) => {
                        debug!(conn, %err, "connection failed");
                        break;
                    }
                };
                if flow == Flow::CutOff {
                    warn!(conn, %peer, "client keeps flooding; disconnecting it");
                    break;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    info!(conn, %peer, "client silent for too long; disconnecting it");
                    break;
                }
                let queue = server.lock().mailboxes.get(&conn).map(|m| m.queue.clone());
                match queue {
                    // Pings go through the writer so frames never interleave.
                    Some(queue) => { let _ = queue.try_send(Outgoing::Ping); }
                    None => break,
                }
            }
        }
    }
    server.close(conn);
    writer.abort();
    debug!(conn, "client disconnected");
}

/// Writes what is queued for `conn` until the queue ends, the connection is dropped
/// (`kick`), or a frame cannot be written for [`STALLED_AFTER`].
async fn write(
    server: PhonebookServer,
    conn: ConnId,
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    ledger: Arc<Ledger>,
    kick: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            _ = kick.cancelled() => {
                let frame = CloseFrame {
                    code: close_code::POLICY,
                    reason: "the phonebook closed this connection".into(),
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
                return;
            }
            item = outgoing.recv() => item,
        };
        let (frame, list) = match item {
            None => return,
            Some(Outgoing::Text(letter)) => {
                let list = letter.charge() == Charge::List;
                // The letter counts until it is written; dropping it gives its place back.
                (Message::Text(letter.as_str().into()), list)
            }
            Some(Outgoing::Ping) => (Message::Ping(Default::default()), false),
            Some(Outgoing::Close) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(None))).await;
                return;
            }
            Some(Outgoing::GoingAway) => {
                let frame = CloseFrame {
                    code: close_code::AWAY,
                    reason: "phonebook shutting down".into(),
                };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                    .await;
                return;
            }
        };
        let sent = tokio::select! {
            biased;
            _ = kick.cancelled() => continue,
            sent = tokio::time::timeout(STALLED_AFTER, sink.send(frame)) => sent,
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                warn!(
                    conn,
                    "client has not read for {STALLED_AFTER:?}; disconnecting it"
                );
                server.close(conn);
                return;
            }
        }
        if list && ledger.take_list_resync() {
            server.resync(conn);
        }
    }
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
