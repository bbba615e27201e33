//! The phonebook server: axum with the WebSocket endpoint `/ws`, the page served from the
//! binary, and `GET /api/callees` for scripts.
//!
//! The rules live in [`Phonebook`]; this module only moves frames. Each connection gets a
//! bounded outgoing queue: a client that stops reading fills it and is disconnected rather
//! than holding up anyone else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    ice_servers: Arc<Vec<IceServer>>,
}

impl PhonebookServer {
    /// A server with an empty phonebook that hands `ice_servers` to its clients.
    pub fn new(ice_servers: Vec<IceServer>) -> Self {
        PhonebookServer {
            ice_servers: Arc::new(ice_servers.clone()),
            whep: Arc::default(),
            hub: Arc::new(Mutex::new(Hub {
                book: Phonebook::new(ice_servers),
                queues: HashMap::new(),
            })),
            next_conn: Arc::new(AtomicU64::new(1)),
            closing: CancellationToken::new(),
            connections: TaskTracker::new(),
        }
    }

    /// The same server, letting WHEP players in as `whep` says.
    pub fn with_whep(mut self, whep: Whep) -> Self {
        self.whep = Arc::new(whep);
        self
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

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        info!(%addr, "phonebook listening");
        let closing = self.closing.clone();
        let result = axum::serve(
            listener,
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
        self.ice_servers.as_ref().clone()
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

async fn upgrade(
    State(server): State<PhonebookServer>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            let tracker = server.connections.clone();
            tracker.track_future(connection(server, socket, peer))
        })
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
                    Some(Ok(Message::Text(text))) => server.text(conn, text.as_str()),
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
