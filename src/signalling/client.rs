//! The device's side of the phonebook: connect, say hello, register, relay messages, and
//! reconnect with a growing, jittered pause whenever the phonebook goes away.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, Secret, ServerMessage};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the device pings the phonebook. A phonebook that drops the connection
/// closes it, which the device sees at once; these find a connection that died silently
/// (a NAT that forgot it, a cable pulled).
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Not a frame (not even a pong) for this long: the connection is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(12);
/// How long a closing connection waits for the phonebook to close its end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What the device learns from its phonebook connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Registered under the name; calls can arrive.
    Registered,
    /// The phonebook went away; the client is reconnecting.
    Disconnected(String),
    /// A message for the device.
    Message(ServerMessage),
}

/// The name and metadata to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Callee name.
    pub name: String,
    /// Metadata shown in the phonebook.
    pub meta: Value,
    /// The device token the phonebook knows this name by, if it asks for one.
    pub token: Option<Secret>,
    /// How to check a `wss://` phonebook's certificate (the public CAs, or a pinned one).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Refuse a phonebook that lets anyone call (`auth: open`) unless it is on loopback:
    /// set when this device answers every call by itself.
    pub refuse_open: bool,
}

/// Keeps the device registered on the phonebook at `url` until every sender of
/// `outgoing` is dropped: what was queued before that (the hang-ups of a shutdown) is
/// still sent. Messages are dropped (logged) while not connected: call messages are
/// meaningless to a phonebook that restarted.
pub async fn run(
    url: String,
    registration: Registration,
    events: mpsc::UnboundedSender<ClientEvent>,
    mut outgoing: mpsc::UnboundedReceiver<ClientMessage>,
) {
    let mut backoff = Backoff::reconnect();
    loop {
        let outcome = session(&url, &registration, &events, &mut outgoing).await;
        match outcome {
            Ok(true) => return,
            Ok(false) => backoff.reset(),
            Err(err) => {
                warn!(%url, "phonebook: {err:#}");
                let _ = events.send(ClientEvent::Disconnected(format!("{err:#}")));
            }
        }
        let wait = backoff.pause();
        debug!(
            wait_ms = wait.as_millis() as u64,
            "reconnecting to the phonebook after a pause"
        );
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                msg = outgoing.recv() => match msg {
                    Some(msg) => debug!(kind = msg.kind(), "not connected to the phonebook; message dropped"),
                    None => return,
                },
            }
        }
    }
}

/// One connection. `Ok(true)`: shut down cleanly; `Ok(false)`: the phonebook closed
/// after we had registered (reconnect at once); `Err`: it failed.
async fn session(
    url: &str,
    registration: &Registration,
    events: &mpsc::UnboundedSender<ClientEvent>,
    outgoing: &mut mpsc::UnboundedReceiver<ClientMessage>,
) -> anyhow::Result<bool> {
    let connector = registration
        .tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let (mut socket, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector),
    )
    .await
    .context("timed out connecting")?
    .context("cannot connect")?;
    let send = |msg: &ClientMessage| {
        Message::Text(
            serde_json::to_string(msg)
                .expect("client messages serialise")
                .into(),
        )
    };

    socket
        .send(send(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: Some(format!("peercam/{}", env!("CARGO_PKG_VERSION"))),
            token: registration.token.clone(),
        }))
        .await?;
    socket
        .send(send(&ClientMessage::Register {
            name: registration.name.clone(),
            meta: registration.meta.clone(),
        }))
        .await?;

    // The replies to hello and register come before anything else.
    let handshake = async {
        let mut welcomed = false;
        while let Some(frame) = socket.next().await {
            let Message::Text(text) = frame? else {
                continue;
            };
            match serde_json::from_str::<ServerMessage>(&text) {
                Ok(ServerMessage::Welcome { auth, .. }) => {
                    if registration.refuse_open
                        && auth == super::access::CallerMode::Open
                        && !is_loopback_url(url)
                    {
                        bail!(
                            "answer = \"auto\" on a phonebook that lets anyone call (auth: open) would let anyone watch this camera; \
                             set access on the phonebook, or answer with the buttons"
                        );
                    }
                    welcomed = true
                }
                Ok(ServerMessage::Registered { .. }) if welcomed => return Ok(()),
                Ok(ServerMessage::Error {
                    code: ErrorCode::NameTaken,
                    message,
                    ..
                }) => {
                    bail!(
                        "{message} (is another device using the name {:?}?)",
                        registration.name
                    )
                }
                Ok(ServerMessage::Error {
                    code: ErrorCode::Unauthorized | ErrorCode::Forbidden,
                    message,
                    ..
                }) => bail!("refused: {message} (check device.token)"),
                Ok(ServerMessage::Error { message, .. }) => bail!("refused: {message}"),
                Ok(other) => debug!(?other, "ignored during the handshake"),
                Err(err) => bail!("unexpected reply: {err}"),
            }
        }
        Err(anyhow!("closed during the handshake"))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .context("timed out registering")??;
    info!(url, name = %registration.name, "registered on the phonebook");
    let _ = events.send(ClientEvent::Registered);

    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            frame = socket.next() => match frame.inspect(|_| last_heard = tokio::time::Instant::now()) {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(msg) => { let _ = events.send(ClientEvent::Message(msg)); }
                    Err(err) => warn!(%err, "phonebook sent a message this version does not know"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    let _ = events.send(ClientEvent::Disconnected("the phonebook closed the connection".into()));
                    return Ok(false);
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(anyhow!("connection failed: {err}")),
            },
            msg = outgoing.recv() => match msg {
                Some(msg) => socket.send(send(&msg)).await?,
                None => {
                    let _ = socket.close(None).await;
                    // The phonebook reads in order, so its end of the close (or the end
                    // of the stream) comes after it has routed everything sent before:
                    // the hang-ups of a shutdown reach the callers' queues before an
                    // embedded phonebook closes their sockets.
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        while let Some(Ok(frame)) = socket.next().await {
                            if matches!(frame, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    return Ok(true);
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    bail!("the phonebook has been silent for {SILENCE_LIMIT:?}");
                }
                socket.send(Message::Ping(Default::default())).await?
            }
        }
    }
}

/// Whether `url` points at this machine.
fn is_loopback_url(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, _)| h));
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("ws://127.0.0.1:8080/ws"));
        assert!(is_loopback_url("wss://[::1]:8443/ws"));
        assert!(is_loopback_url("ws://localhost/ws"));
        assert!(!is_loopback_url("ws://192.168.1.2:8080/ws"));
        assert!(!is_loopback_url("wss://phonebook.example.org/ws"));
    }
}
