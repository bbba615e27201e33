//! One WebSocket connection of the phonebook: the upgrade, the reader that hands frames
//! to the [`PhonebookHandle`] within the connection's allowance, and the writer that
//! sends what is queued for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::http::AddressSlot;
use super::hub::{Allowance, Flow, Opened, PhonebookHandle, Reader};
use super::limits::{MAX_FRAME_BYTES, STALLED_AFTER};
use super::mailbox::{Charge, Ledger, Outgoing};
use super::phonebook::ConnId;

/// How long a dropped connection's close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the server pings each connection.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// A connection silent for this long (not even a pong) is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Each connection's read buffer, allocated up front. tungstenite's 128 KiB default suits
/// bulk transfers; signalling messages are a few hundred bytes (an SDP a few KiB, read in
/// several chunks if need be), and a phonebook holds a connection per open page.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The route of the WebSocket endpoint, `/ws`.
pub(super) fn routes(handle: PhonebookHandle) -> axum::Router {
    axum::Router::new()
        .route("/ws", axum::routing::get(upgrade))
        .with_state(handle)
}

async fn upgrade(
    State(server): State<PhonebookHandle>,
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
    server: PhonebookHandle,
    socket: WebSocket,
    peer: SocketAddr,
    slot: AddressSlot,
) {
    let _slot = slot;
    let Opened {
        conn,
        outgoing,
        ledger,
        kick,
    } = server.open(Reader::Socket);
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
                let queue = server.queue_of(conn);
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
                let queue = server.queue_of(conn);
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
    server: PhonebookHandle,
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
            Some(Outgoing::Message(letter)) => {
                let list = letter.charge() == Charge::List;
                let Some(text) = letter.into_text() else {
                    continue;
                };
                // The letter counts until it is taken for writing; dropping it gives its
                // place back.
                (Message::Text(text.into()), list)
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
