//! The phonebook's shared state as its connections reach it: a [`PhonebookHandle`] to
//! open a connection (a WebSocket's, or an in-process one like WHEP's), hand the
//! phonebook what it said, and learn who a token makes a client and which ICE servers
//! to give out.
//!
//! The handle is what the socket layer and WHEP depend on; the server creates it and
//! mounts their routes, so the dependencies run one way. What is queued for a connection
//! is charged to whoever caused it (see `mailbox.rs`): a sender whose messages pile up
//! unread at a receiver is refused, so no connection is ever disconnected for what
//! others send it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::access::{AccessSettings, Identity, Refused};
use super::http::AddressCounts;
use super::limits::{CALLEE_RATE_FACTOR, Limits, RELAY_WINDOW, RateLimit};
use super::mailbox::{Body, Charge, Ledger, Outgoing, Refusal};
use super::phonebook::{ConnId, IceSource, Output, Phonebook};
use super::protocol::{Callee, ClientMessage, ErrorCode, IceServer, ServerMessage, wire_len};

/// Room in each connection's queue. The ledger's windows keep what waits far below it;
/// a full queue would mean a bug in that accounting, and drops the connection.
const OUTGOING_QUEUE: usize = 8 * 1024;

/// One connection's queue, its account, and the signal that drops it.
struct Mailbox {
    queue: mpsc::Sender<Outgoing>,
    /// What its reader takes: text frames (a socket) or typed messages (in-process).
    reader: Reader,
    ledger: Arc<Ledger>,
    kick: CancellationToken,
}

struct Hub {
    book: Phonebook,
    mailboxes: HashMap<ConnId, Mailbox>,
}

/// A connection opened on the phonebook: its id, and what is queued for it.
/// Who reads a connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    /// A WebSocket writer: it sends text frames.
    Socket,
    /// A reader in this process: it takes the typed messages.
    Local,
}

pub(super) struct Opened {
    /// The connection's id in the phonebook.
    pub(super) conn: ConnId,
    /// What the phonebook sends it, typed.
    pub(super) outgoing: mpsc::Receiver<Outgoing>,
    /// Its account of what waits in `outgoing`.
    pub(super) ledger: Arc<Ledger>,
    /// Cancelled when the phonebook drops the connection.
    pub(super) kick: CancellationToken,
}

/// The phonebook's state, shared by every connection of one server.
#[derive(Clone)]
pub(super) struct PhonebookHandle {
    hub: Arc<Mutex<Hub>>,
    next_conn: Arc<AtomicU64>,
    access: Arc<AccessSettings>,
    /// The limits the connections are held to.
    pub(super) limits: Limits,
    /// WebSocket connections open per address.
    pub(super) per_address: AddressCounts,
    /// Cancelled on shutdown: every open connection closes with "going away".
    pub(super) closing: CancellationToken,
    /// The connections' tasks, waited for on shutdown.
    pub(super) connections: TaskTracker,
}

impl PhonebookHandle {
    /// An empty phonebook that hands `ice_servers` to its clients.
    pub(super) fn new(ice_servers: Vec<IceServer>) -> Self {
        PhonebookHandle {
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

    /// The same phonebook, letting in only whom `access` allows.
    pub(super) fn with_access(self, access: AccessSettings) -> Self {
        let settings = access.clone();
        self.rebuild(|book| book.with_access(settings));
        PhonebookHandle {
            access: Arc::new(access),
            ..self
        }
    }

    /// The same phonebook, with the ICE servers for each client made by `source`.
    pub(super) fn with_ice_source(self, source: IceSource) -> Self {
        self.rebuild(|book| book.with_ice_source(source));
        self
    }

    /// The same phonebook, with `limits`.
    pub(super) fn with_limits(self, limits: Limits) -> Self {
        self.rebuild(|book| book.with_limits(limits));
        PhonebookHandle { limits, ..self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock would be a bug in Phonebook; keep serving the
        // state as it is rather than poisoning every later connection.
        self.hub
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The callees registered now.
    pub(super) fn callees(&self) -> Vec<Callee> {
        self.lock().book.callees()
    }

    /// The STUN/TURN servers handed to clients.
    pub(super) fn ice_servers(&self) -> Vec<IceServer> {
        self.lock().book.ice_servers()
    }

    /// Who `token` makes a client, by the access settings.
    pub(super) fn identify(&self, token: Option<&str>) -> Result<Identity, Refused> {
        self.access.identify(token)
    }

    /// Whether `who` may call `callee`, or why not.
    pub(super) fn may_call(&self, who: &Identity, callee: &str) -> Result<(), Refused> {
        self.access.may_call(who, callee)
    }

    /// Whether `name` (in any spelling) is registered now.
    pub(super) fn has_callee(&self, name: &str) -> bool {
        self.lock().book.has_callee(name)
    }

    /// Handles `msg` as if connection `conn` had sent it (an in-process connection: no
    /// frame, so no allowance; it is charged its length as JSON).
    pub(super) fn message(&self, conn: ConnId, msg: ClientMessage) {
        let bytes = wire_len(&msg);
        let mut hub = self.lock();
        hub.relay(conn, msg, bytes);
    }

    /// Opens a connection in the phonebook for `reader`; what is sent to it arrives on its
    /// queue.
    pub(super) fn open(&self, reader: Reader) -> Opened {
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
                reader,
                ledger: ledger.clone(),
                kick: kick.clone(),
            },
        );
        Opened {
            conn,
            outgoing,
            ledger,
            kick,
        }
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
    pub(super) fn close(&self, conn: ConnId) {
        let mut hub = self.lock();
        hub.drop_connection(conn);
    }

    /// Drops the connection that holds `name` (in any spelling): its calls are hung up
    /// and its socket is closed at once. False when nobody holds the name.
    pub(super) fn disconnect_callee(&self, name: &str) -> bool {
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
                | ClientMessage::Ringing { call_id, .. }
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
                    // A socket's letter is its text, made once here; its length is the
                    // charge either way.
                    let posted = match mailbox.reader {
                        Reader::Socket => {
                            let text = msg.to_text();
                            let bytes = text.len();
                            mailbox.ledger.letter(Body::Text(text), bytes, charge)
                        }
                        Reader::Local => {
                            let bytes = msg.wire_len();
                            mailbox.ledger.letter(msg, bytes, charge)
                        }
                    };
                    match posted {
                        Ok(letter) => (to, Outgoing::Message(letter)),
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
