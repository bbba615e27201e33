//! The phonebook server: axum with the WebSocket endpoint `/ws`, the page served from the
//! binary, and `GET /api/callees` for scripts.
//!
//! The rules live in [`Phonebook`]; this module only moves frames. What is queued for a
//! connection is charged to whoever caused it (see `mailbox.rs`): a sender whose
//! messages pile up unread at a receiver is refused, so no connection is ever
//! disconnected for what others send it. A connection is dropped for what it does
//! itself: flooding, not reading the answers to its own requests, or not reading at all
//! for [`super::limits::STALLED_AFTER`]. The sockets themselves are handled in `socket.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::access::{AccessSettings, Identity, Refused};
use super::http::AddressCounts;
use super::limits::RELAY_WINDOW;
pub use super::limits::{CALLEE_RATE_FACTOR, Limits, RateLimit};
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
    pub(super) closing: CancellationToken,
    pub(super) connections: TaskTracker,
    whep: Arc<Whep>,
    access: Arc<AccessSettings>,
    pub(super) limits: Limits,
    pub(super) per_address: AddressCounts,
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
            .route("/ws", get(super::socket::upgrade))
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

    pub(super) fn open_socket(
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
    pub(super) fn text(&self, conn: ConnId, text: &str, allowance: &mut Allowance) -> Flow {
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
    pub(super) fn binary(&self, conn: ConnId, allowance: &mut Allowance) -> Flow {
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
    pub(super) fn resync(&self, conn: ConnId) {
        let mut hub = self.lock();
        if hub.book.is_listening(conn) {
            let callees = hub.book.callees();
            hub.deliver(
                conn,
                vec![Output::Send(conn, ServerMessage::Callees { callees })],
            );
        }
    }

    /// The queue of `conn`, while it is open.
    pub(super) fn queue_of(&self, conn: ConnId) -> Option<mpsc::Sender<Outgoing>> {
        self.lock().mailboxes.get(&conn).map(|m| m.queue.clone())
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
pub(super) enum Flow {
    /// Read on.
    Continue,
    /// The client keeps flooding: drop it.
    CutOff,
}

/// How many messages a connection may still send.
pub(super) struct Allowance {
    rate: RateLimit,
    /// For the messages of calls this connection answers: a camera relays every caller's
    /// answer and candidates.
    answering: RateLimit,
    dropped: u32,
}

impl Allowance {
    /// The full allowance of a new connection.
    pub(super) fn new(limits: &Limits) -> Self {
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
