//! The WebSocket transport: tokio-tungstenite, with the TLS connector a `wss://`
//! phonebook needs, and pings that find a connection that died silently.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::warn;

use super::{Transport, TransportError};
use crate::signalling::protocol::{ClientMessage, ServerMessage};

/// How long opening the connection (TCP, TLS and the upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the client pings the phonebook. A phonebook that drops the connection
/// closes it, which the client sees at once; these find a connection that died silently
/// (a NAT that forgot it, a cable pulled).
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// Not a frame (not even a pong) for this long: the connection is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(12);
/// How long a closing connection waits for the phonebook to close its end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A phonebook connection over a WebSocket.
pub struct WsTransport {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    ping: Interval,
    last_heard: Instant,
    local: bool,
}

impl WsTransport {
    /// Connects to the phonebook at `url` (`ws://` or `wss://`, the latter checked with
    /// `tls` when given, else the public CAs).
    pub async fn connect(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, TransportError> {
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (socket, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector),
        )
        .await
        .map_err(|_| TransportError::Connect(format!("timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|err| TransportError::Connect(err.to_string()))?;
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(WsTransport {
            socket,
            ping,
            last_heard: Instant::now(),
            local: is_loopback_url(url),
        })
    }
}

fn failed(err: impl std::fmt::Display) -> TransportError {
    TransportError::Failed(err.to_string())
}

impl Transport for WsTransport {
    async fn send(&mut self, msg: &ClientMessage) -> Result<(), TransportError> {
        let text = serde_json::to_string(msg).map_err(failed)?;
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(failed)
    }

    async fn recv(&mut self) -> Result<Option<ServerMessage>, TransportError> {
        loop {
            tokio::select! {
                frame = self.socket.next() => {
                    self.last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                            Ok(msg) => return Ok(Some(msg)),
                            // A newer phonebook may say more than this version knows.
                            Err(err) => warn!(%err, "phonebook sent a message this version does not know"),
                        },
                        Some(Ok(Message::Close(_))) | None => return Ok(None),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(failed(err)),
                    }
                }
                _ = self.ping.tick() => {
                    if self.last_heard.elapsed() > SILENCE_LIMIT {
                        return Err(TransportError::Silent(SILENCE_LIMIT));
                    }
                    self.socket.send(Message::Ping(Default::default())).await.map_err(failed)?;
                }
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.socket.close(None).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(frame)) = self.socket.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    fn is_local(&self) -> bool {
        self.local
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
