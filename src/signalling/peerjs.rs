//! The device as a peer on a stock PeerJS server, so a stock `peerjs` client's
//! `peer.call(name, stream, {metadata})` rings it like a call from the phonebook.
//!
//! PeerJS speaks JSON over one WebSocket at `<server path>peerjs?key&id&token&version`.
//! The server answers `OPEN` (or `ID-TAKEN`, `ERROR`), relays `OFFER`, `ANSWER` and
//! `CANDIDATE` envelopes `{type, src, dst, payload}` between peers, and drops a peer that
//! sends no `HEARTBEAT` for its alive timeout. The same `token` re-attaches the same id
//! after a reconnect, so it is kept for the life of the process.
//!
//! PeerJS has no ringing, decline or hang-up messages. How they map is decided in the
//! device: a hang-up is the call's peer connection (and the data channel PeerJS opens on
//! it) closing; a decline is `EXPIRE`, which the stock client reports as the error
//! `peer-unavailable`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::protocol::IceCandidate;

/// How often a heartbeat is sent; the stock client's interval.
const HEARTBEAT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reconnect waits for OPEN or a refusal before taking silence as re-attached.
const REATTACH_WAIT: Duration = Duration::from_secs(2);
/// Longest envelope read from the server.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Candidates kept for connections whose offer has not arrived.
const MAX_EARLY_CANDIDATES: usize = 64;
/// Connections with early candidates remembered at once.
const MAX_EARLY_CONNECTIONS: usize = 32;
/// Early candidates of a connection whose offer never comes are forgotten after this.
const EARLY_CANDIDATE_TTL: Duration = Duration::from_secs(30);
/// The client version sent in the URL (the server ignores it).
const CLIENT_VERSION: &str = "1.5.5";

/// Whether `id` is accepted by the stock client as a peer id.
pub fn valid_peer_id(id: &str) -> bool {
    // ^[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*$
    !id.is_empty()
        && id.len() <= 64
        && id
            .split([' ', '_', '-'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Where and as whom to register.
#[derive(Debug, Clone)]
pub struct PeerJsTarget {
    /// The WebSocket URL without the query (`ws://host:9000/peerjs`).
    pub socket_url: String,
    /// The server's API key.
    pub key: String,
    /// Our peer id.
    pub id: String,
}

impl PeerJsTarget {
    /// The target for server URL `server` (`http://host:9000/`, path included).
    pub fn new(server: &str, key: &str, id: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = server
            .split_once("://")
            .context("the PeerJS server URL has no scheme")?;
        let scheme = match scheme {
            "http" | "ws" => "ws",
            "https" | "wss" => "wss",
            other => bail!("unsupported PeerJS URL scheme {other:?}"),
        };
        let rest = if rest.ends_with('/') {
            rest.to_owned()
        } else {
            format!("{rest}/")
        };
        Ok(PeerJsTarget {
            socket_url: format!("{scheme}://{rest}peerjs"),
            key: key.to_owned(),
            id: id.to_owned(),
        })
    }

    fn url(&self, token: &str) -> String {
        format!(
            "{}?key={}&id={}&token={token}&version={CLIENT_VERSION}",
            self.socket_url,
            encode_component(&self.key),
            encode_component(&self.id),
        )
    }
}

fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What the device learns from the PeerJS server.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerJsEvent {
    /// The id is ours: calls can arrive.
    Open,
    /// The connection is gone; the client reconnects.
    Disconnected(String),
    /// Peer `src` calls with a media connection.
    Offer {
        /// The caller's peer id.
        src: String,
        /// The media connection's id (`mc_…`).
        connection_id: String,
        /// The caller's SDP offer.
        sdp: String,
        /// The caller's `metadata` option.
        metadata: Value,
    },
    /// A trickled candidate of the caller.
    Candidate {
        /// The caller's peer id.
        src: String,
        /// The media connection it belongs to.
        connection_id: String,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// Peer `src` left the server: its calls are over.
    Leave {
        /// The peer that left.
        src: String,
    },
}

/// What the device asks the PeerJS client to send.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerJsCommand {
    /// Answer a media connection.
    Answer {
        /// The caller's peer id.
        dst: String,
        /// The media connection answered.
        connection_id: String,
        /// Our SDP answer.
        sdp: String,
    },
    /// Trickle one of our candidates.
    Candidate {
        /// The caller's peer id.
        dst: String,
        /// The media connection it belongs to.
        connection_id: String,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// Refuse the caller: the stock client reports `peer-unavailable`.
    Expire {
        /// The caller's peer id.
        dst: String,
    },
}

/// Reads one server envelope into the events it means (none for what the device does
/// not act on), remembering candidates that arrive before their offer.
#[derive(Debug, Default)]
pub struct Inbox {
    early: HashMap<String, (Instant, Vec<IceCandidate>)>,
    offered: HashMap<String, Instant>,
}

/// A server envelope that ends the registration.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Another peer holds the id.
    IdTaken,
    /// The server refused (bad key, full, …).
    Error(String),
}

impl Inbox {
    /// Handles `text` from the server at `now`.
    pub fn read(&mut self, text: &str, now: Instant) -> Result<Vec<PeerJsEvent>, Refusal> {
        self.expire(now);
        let Ok(envelope) = serde_json::from_str::<Value>(text) else {
            debug!("PeerJS: unreadable message ignored");
            return Ok(Vec::new());
        };
        let kind = envelope.get("type").and_then(Value::as_str).unwrap_or("");
        let src = envelope
            .get("src")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let payload = envelope.get("payload").cloned().unwrap_or(Value::Null);
        let connection_id = payload
            .get("connectionId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        // A PeerJS server passes any id through: ids logged and made into call ids must be
        // plain text of a sane length.
        let plain = |id: &str| id.len() <= 128 && !id.chars().any(char::is_control);
        if !plain(&src) || !plain(&connection_id) {
            warn!(
                src = %super::sanitize::for_log(&src),
                "PeerJS message with a malformed peer or connection id ignored"
            );
            return Ok(Vec::new());
        }
        match kind {
            "OPEN" => Ok(vec![PeerJsEvent::Open]),
            "ID-TAKEN" => Err(Refusal::IdTaken),
            "ERROR" | "INVALID-KEY" => Err(Refusal::Error(
                payload
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("the server refused")
                    .to_owned(),
            )),
            "HEARTBEAT" => Ok(Vec::new()),
            "LEAVE" | "EXPIRE" if !src.is_empty() => Ok(vec![PeerJsEvent::Leave { src }]),
            "OFFER" => {
                if payload.get("type").and_then(Value::as_str) != Some("media") {
                    info!(%src, "PeerJS data connection ignored: this camera answers media calls");
                    return Ok(Vec::new());
                }
                let sdp = payload
                    .get("sdp")
                    .and_then(|d| d.get("sdp"))
                    .and_then(Value::as_str);
                let (Some(sdp), false, false) = (sdp, src.is_empty(), connection_id.is_empty())
                else {
                    warn!(%src, "PeerJS offer without sdp, src or connectionId ignored");
                    return Ok(Vec::new());
                };
                let metadata = payload.get("metadata").cloned().unwrap_or(Value::Null);
                let mut events = vec![PeerJsEvent::Offer {
                    src: src.clone(),
                    connection_id: connection_id.clone(),
                    sdp: sdp.to_owned(),
                    metadata,
                }];
                if let Some((_, early)) = self.early.remove(&connection_id) {
                    events.extend(early.into_iter().map(|candidate| PeerJsEvent::Candidate {
                        src: src.clone(),
                        connection_id: connection_id.clone(),
                        candidate,
                    }));
                }
                self.offered.insert(connection_id, now);
                Ok(events)
            }
            "CANDIDATE" => {
                let Some(candidate) = payload.get("candidate").and_then(read_candidate) else {
                    return Ok(Vec::new());
                };
                if self.offered.contains_key(&connection_id) {
                    return Ok(vec![PeerJsEvent::Candidate {
                        src,
                        connection_id,
                        candidate,
                    }]);
                }
                if self.early.len() >= MAX_EARLY_CONNECTIONS
                    && !self.early.contains_key(&connection_id)
                {
                    debug!("PeerJS: too many connections with early candidates; one dropped");
                    return Ok(Vec::new());
                }
                let (_, list) = self
                    .early
                    .entry(connection_id)
                    .or_insert_with(|| (now, Vec::new()));
                if list.len() < MAX_EARLY_CANDIDATES {
                    list.push(candidate);
                }
                Ok(Vec::new())
            }
            other => {
                debug!(kind = other, "PeerJS message ignored");
                Ok(Vec::new())
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        self.early
            .retain(|_, (since, _)| now.duration_since(*since) < EARLY_CANDIDATE_TTL);
        // A connection id is needed only while its candidates may still come.
        self.offered
            .retain(|_, since| now.duration_since(*since) < Duration::from_secs(600));
    }
}

fn read_candidate(value: &Value) -> Option<IceCandidate> {
    let candidate = value.get("candidate")?.as_str()?;
    if candidate.is_empty() {
        return None;
    }
    Some(IceCandidate {
        candidate: candidate.to_owned(),
        sdp_mid: value
            .get("sdpMid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        sdp_m_line_index: value
            .get("sdpMLineIndex")
            .and_then(Value::as_u64)
            .and_then(|i| u16::try_from(i).ok()),
        username_fragment: value
            .get("usernameFragment")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The envelope that carries `command`.
pub fn envelope(command: &PeerJsCommand) -> Value {
    match command {
        PeerJsCommand::Answer {
            dst,
            connection_id,
            sdp,
        } => json!({
            "type": "ANSWER",
            "dst": dst,
            "payload": {
                "sdp": {"type": "answer", "sdp": sdp},
                "type": "media",
                "connectionId": connection_id,
                "browser": "peercam",
            },
        }),
        PeerJsCommand::Candidate {
            dst,
            connection_id,
            candidate,
        } => json!({
            "type": "CANDIDATE",
            "dst": dst,
            "payload": {
                "candidate": {
                    "candidate": candidate.candidate,
                    "sdpMid": candidate.sdp_mid,
                    "sdpMLineIndex": candidate.sdp_m_line_index,
                    "usernameFragment": candidate.username_fragment,
                },
                "type": "media",
                "connectionId": connection_id,
            },
        }),
        PeerJsCommand::Expire { dst } => json!({"type": "EXPIRE", "dst": dst}),
    }
}

/// Keeps the id registered on the PeerJS server until every sender of `commands` is
/// dropped, reconnecting (same token) with a growing, jittered pause.
pub async fn run(
    target: PeerJsTarget,
    events: mpsc::UnboundedSender<PeerJsEvent>,
    mut commands: mpsc::UnboundedReceiver<PeerJsCommand>,
) {
    let token = format!("{:x}", rand::random::<u64>());
    let mut backoff = Backoff::reconnect();
    let mut ever_opened = false;
    loop {
        match session(&target, &token, &mut ever_opened, &events, &mut commands).await {
            Ok(true) => return,
            Ok(false) => backoff.reset(),
            Err(err) => {
                warn!(server = %target.socket_url, id = %target.id, "PeerJS: {err:#}");
                let _ = events.send(PeerJsEvent::Disconnected(format!("{err:#}")));
            }
        }
        let sleep = tokio::time::sleep(backoff.pause());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                command = commands.recv() => match command {
                    Some(_) => debug!("not connected to the PeerJS server; message dropped"),
                    None => return,
                },
            }
        }
    }
}

/// One connection: `Ok(true)` shut down, `Ok(false)` closed after OPEN, `Err` failed.
async fn session(
    target: &PeerJsTarget,
    token: &str,
    ever_opened: &mut bool,
    events: &mpsc::UnboundedSender<PeerJsEvent>,
    commands: &mut mpsc::UnboundedReceiver<PeerJsCommand>,
) -> anyhow::Result<bool> {
    let (mut socket, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async(target.url(token)),
    )
    .await
    .context("timed out connecting")?
    .context("cannot connect")?;
    let mut inbox = Inbox::default();

    let opened = async {
        while let Some(frame) = socket.next().await {
            let Message::Text(text) = frame? else {
                continue;
            };
            match inbox.read(&text, Instant::now()) {
                Ok(found) if found.contains(&PeerJsEvent::Open) => return Ok(found),
                Ok(found) => {
                    for event in found {
                        let _ = events.send(event);
                    }
                }
                Err(Refusal::IdTaken) => bail!(
                    "the id {:?} is taken on the PeerJS server (by another peer)",
                    target.id
                ),
                Err(Refusal::Error(why)) => bail!("refused: {why}"),
            }
        }
        Err(anyhow!("closed before OPEN"))
    };
    // A server that still holds our id from before (same token) takes the new socket in
    // its place without saying OPEN; only a refusal would come.
    let wait = if *ever_opened {
        REATTACH_WAIT
    } else {
        HANDSHAKE_TIMEOUT
    };
    let first = match tokio::time::timeout(wait, opened).await {
        Ok(result) => result?,
        Err(_) if *ever_opened => {
            debug!("no OPEN: the server re-attached our id to the new connection");
            vec![PeerJsEvent::Open]
        }
        Err(_) => bail!("timed out waiting for OPEN"),
    };
    *ever_opened = true;
    info!(server = %target.socket_url, id = %target.id, "registered on the PeerJS server");
    for event in first {
        let _ = events.send(event);
    }

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) if text.len() > MAX_MESSAGE_BYTES => {
                    warn!(bytes = text.len(), "PeerJS: oversized message ignored");
                }
                Some(Ok(Message::Text(text))) => match inbox.read(&text, Instant::now()) {
                    Ok(found) => for event in found {
                        let _ = events.send(event);
                    },
                    Err(Refusal::IdTaken) => bail!("the server gave the id {:?} to another peer", target.id),
                    Err(Refusal::Error(why)) => bail!("the server reported: {why}"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    let _ = events.send(PeerJsEvent::Disconnected("the PeerJS server closed the connection".into()));
                    return Ok(false);
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(anyhow!("connection failed: {err}")),
            },
            command = commands.recv() => match command {
                Some(command) => {
                    socket.send(Message::Text(envelope(&command).to_string().into())).await?;
                }
                None => {
                    let _ = socket.close(None).await;
                    return Ok(true);
                }
            },
            _ = heartbeat.tick() => {
                socket.send(Message::Text(r#"{"type":"HEARTBEAT"}"#.into())).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_stock_client() {
        for good in ["front-door", "cam1", "front door", "a_b-c"] {
            assert!(valid_peer_id(good), "{good}");
        }
        for bad in ["", "-x", "x-", "a--b", "a.b", "ü", "a  b"] {
            assert!(!valid_peer_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_socket_url_follows_the_server_path() {
        let target = PeerJsTarget::new("http://127.0.0.1:9000/", "peerjs", "front-door").unwrap();
        assert_eq!(
            target.url("t0k"),
            "ws://127.0.0.1:9000/peerjs?key=peerjs&id=front-door&token=t0k&version=1.5.5"
        );
        let target = PeerJsTarget::new("https://example.org/myapp", "k", "front door").unwrap();
        assert!(
            target
                .url("t")
                .starts_with("wss://example.org/myapp/peerjs?key=k&id=front%20door&")
        );
        assert!(PeerJsTarget::new("ftp://x", "k", "i").is_err());
    }

    #[test]
    fn candidates_before_the_offer_wait_for_it() {
        let mut inbox = Inbox::default();
        let now = Instant::now();
        let candidate = r#"{"type":"CANDIDATE","src":"caller","dst":"cam","payload":{"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0},"type":"media","connectionId":"mc_1"}}"#;
        assert_eq!(inbox.read(candidate, now).unwrap(), Vec::new());
        let offer = r#"{"type":"OFFER","src":"caller","dst":"cam","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1","metadata":{"callerName":"Ray"}}}"#;
        let events = inbox.read(offer, now).unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], PeerJsEvent::Offer { metadata, .. } if metadata["callerName"] == "Ray")
        );
        assert!(
            matches!(&events[1], PeerJsEvent::Candidate { connection_id, .. } if connection_id == "mc_1")
        );
        // Later candidates pass straight through.
        assert_eq!(inbox.read(candidate, now).unwrap().len(), 1);
    }

    #[test]
    fn refusals_and_noise() {
        let mut inbox = Inbox::default();
        let now = Instant::now();
        assert_eq!(
            inbox.read(
                r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#,
                now
            ),
            Err(Refusal::IdTaken)
        );
        assert_eq!(
            inbox.read(
                r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#,
                now
            ),
            Err(Refusal::Error("Invalid key provided".into()))
        );
        for noise in [
            "not json",
            "[]",
            r#"{"type":"OFFER"}"#,
            r#"{"type":"OFFER","src":"x","payload":{"type":"data","connectionId":"dc_1"}}"#,
            r#"{"type":"CANDIDATE","src":"x","payload":{"candidate":{}}}"#,
        ] {
            assert_eq!(inbox.read(noise, now), Ok(Vec::new()), "{noise}");
        }
        assert_eq!(
            inbox.read(r#"{"type":"LEAVE","src":"caller","dst":"cam"}"#, now),
            Ok(vec![PeerJsEvent::Leave {
                src: "caller".into()
            }])
        );
    }

    #[test]
    fn early_candidates_are_bounded_and_forgotten() {
        let mut inbox = Inbox::default();
        let start = Instant::now();
        for conn in 0..100 {
            let text = format!(
                r#"{{"type":"CANDIDATE","src":"x","payload":{{"candidate":{{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}},"connectionId":"mc_{conn}"}}}}"#
            );
            for _ in 0..100 {
                inbox.read(&text, start).unwrap();
            }
        }
        assert_eq!(inbox.early.len(), MAX_EARLY_CONNECTIONS);
        assert!(
            inbox
                .early
                .values()
                .all(|(_, l)| l.len() == MAX_EARLY_CANDIDATES)
        );
        inbox.read("{}", start + EARLY_CANDIDATE_TTL).unwrap();
        assert!(inbox.early.is_empty());
    }

    #[test]
    fn answers_echo_the_connection() {
        let answer = envelope(&PeerJsCommand::Answer {
            dst: "caller".into(),
            connection_id: "mc_1".into(),
            sdp: "v=0".into(),
        });
        assert_eq!(answer["type"], "ANSWER");
        assert_eq!(answer["payload"]["connectionId"], "mc_1");
        assert_eq!(answer["payload"]["type"], "media");
        assert_eq!(answer["payload"]["sdp"]["type"], "answer");
    }
}
