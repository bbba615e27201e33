//! A caller without a browser: places a call through the phonebook, with the offerer the
//! device's bell uses, and receives the camera's video. Tests, benchmarks and
//! `peercam call` use it to watch a camera the way a page does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::debug;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;

use super::engine::RtcEngine;
use super::peer::{CallPeer, PeerEvent};
use super::plan::{MediaPlan, RemoteTracks};
use crate::media::Codec;
use crate::media::fanout::Feed;
use crate::signalling::connection::PhonebookConnection;
use crate::signalling::protocol::{ClientMessage, Secret, ServerMessage};
use crate::signalling::transport::WsTransport;

/// How long a hang-up may take to reach the phonebook before the caller goes.
const HANG_UP_WAIT: Duration = Duration::from_secs(3);

/// What happens to an outgoing call.
#[derive(Clone)]
pub enum CallerEvent {
    /// The callee rings.
    Ringing,
    /// The callee accepted; the answer is applied.
    Accepted,
    /// The callee declined with this reason.
    Declined(String),
    /// The callee hung up (or went away) with this reason.
    Hangup(String),
    /// The phonebook refused something about this call.
    Error(String),
    /// The media connection is up.
    Connected,
    /// The media connection failed or closed.
    Lost(String),
    /// The camera's video track arrived.
    Track(Arc<TrackRemote>),
    /// The data channel opened.
    DataOpen,
    /// The camera sent this text on the data channel.
    Data(String),
}

impl std::fmt::Debug for CallerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerEvent::Ringing => write!(f, "Ringing"),
            CallerEvent::Accepted => write!(f, "Accepted"),
            CallerEvent::Declined(r) => write!(f, "Declined({r:?})"),
            CallerEvent::Hangup(r) => write!(f, "Hangup({r:?})"),
            CallerEvent::Error(e) => write!(f, "Error({e:?})"),
            CallerEvent::Connected => write!(f, "Connected"),
            CallerEvent::Lost(r) => write!(f, "Lost({r:?})"),
            CallerEvent::Track(t) => write!(f, "Track(pt {})", t.payload_type()),
            CallerEvent::DataOpen => write!(f, "DataOpen"),
            CallerEvent::Data(d) => write!(f, "Data({d:?})"),
        }
    }
}

/// What an outgoing call offers besides receiving video.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Send this feed's Opus stream as the caller's voice (and receive the camera's).
    pub send_audio: Option<Feed>,
    /// Offer to receive the camera's sound.
    pub receive_audio: bool,
    /// The user token or passphrase the phonebook asks for.
    pub token: Option<String>,
}

/// An outgoing call with its own phonebook connection and peer connection.
pub struct Caller {
    call_id: String,
    peer: Arc<CallPeer>,
    out: mpsc::UnboundedSender<ClientMessage>,
    events: mpsc::UnboundedReceiver<CallerEvent>,
    relay: tokio::task::JoinHandle<()>,
}

impl Caller {
    /// Connects to the phonebook at `url` and calls `callee` with `meta`, offering to
    /// receive video. Returns once the call is placed; follow it with [`Caller::next`].
    pub async fn call(
        engine: &RtcEngine,
        url: &str,
        callee: &str,
        meta: Value,
    ) -> anyhow::Result<Caller> {
        Caller::call_with(engine, url, callee, meta, CallOptions::default()).await
    }

    /// Like [`Caller::call`], with audio as `options` say.
    pub async fn call_with(
        engine: &RtcEngine,
        url: &str,
        callee: &str,
        meta: Value,
        options: CallOptions,
    ) -> anyhow::Result<Caller> {
        let transport = WsTransport::connect(url, None)
            .await
            .map_err(|err| anyhow!("phonebook at {url}: {err}"))?;
        let conn = PhonebookConnection::hello(
            transport,
            "peercam-caller",
            options.token.clone().map(Secret),
        )
        .await
        .map_err(|err| anyhow!("phonebook at {url}: {err}"))?;

        let call_id = format!("c-{:016x}", rand::random::<u64>());
        let (out_tx, out_rx) = mpsc::unbounded_channel::<ClientMessage>();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let emit = {
            let (id, out, events) = (call_id.clone(), out_tx.clone(), event_tx.clone());
            Arc::new(move |event: PeerEvent| {
                let event = match event {
                    PeerEvent::Candidate(candidate) => {
                        let _ = out.send(ClientMessage::Candidate {
                            call_id: id.clone(),
                            candidate,
                        });
                        return;
                    }
                    PeerEvent::Connected => CallerEvent::Connected,
                    PeerEvent::DataOpen => CallerEvent::DataOpen,
                    PeerEvent::Text(text) => CallerEvent::Data(text),
                    PeerEvent::Lost(reason) => CallerEvent::Lost(reason),
                    PeerEvent::DataClosed(_) => return,
                };
                let _ = events.send(event);
            })
        };
        let tracks = event_tx.clone();
        let voice = match &options.send_audio {
            Some(feed) => Some(feed.subscribe(Codec::Opus)?),
            None => None,
        };
        let plan = MediaPlan {
            video: None,
            receive_video: true,
            receive_audio: options.receive_audio || voice.is_some(),
            audio: voice,
            gated: false,
            remote: RemoteTracks::HandOut(Arc::new(move |track| {
                let _ = tracks.send(CallerEvent::Track(track));
            })),
        };
        let (peer, offer) = CallPeer::offer_with(engine, plan, emit).await?;
        let peer = Arc::new(peer);
        // The call goes out first, so no candidate queued meanwhile overtakes it.
        let call = ClientMessage::Call {
            call_id: call_id.clone(),
            callee: callee.to_owned(),
            meta,
            sdp: offer,
        };
        let relay = tokio::spawn(relay(conn, call, out_rx, peer.clone(), event_tx));
        Ok(Caller {
            call_id,
            peer,
            out: out_tx,
            events: event_rx,
            relay,
        })
    }

    /// The id of this call.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The next thing that happens to the call, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<CallerEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits until an event `pick` accepts, up to `timeout`, failing on a decline,
    /// hang-up or error first.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&CallerEvent) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .ok_or_else(|| anyhow!("nothing happened within {timeout:?}"))?;
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
            if let CallerEvent::Declined(_) | CallerEvent::Hangup(_) | CallerEvent::Error(_) = event
            {
                bail!("the call ended instead: {event:?}");
            }
        }
    }

    /// Sends `text` to the camera over the data channel (once it is open).
    pub async fn send_text(&self, text: &str) -> anyhow::Result<()> {
        self.peer.try_send_text(text).await
    }

    /// Tells the camera the picture was lost (RTCP PLI for `track`), as a browser does
    /// after packet loss.
    pub async fn picture_lost(&self, track: &TrackRemote) -> anyhow::Result<()> {
        self.peer.picture_lost(track).await
    }

    /// Waits for the camera's track of `kind` (video or audio).
    pub async fn track(
        &mut self,
        kind: RTPCodecType,
        timeout: Duration,
    ) -> anyhow::Result<Arc<TrackRemote>> {
        self.wait_for(timeout, |e| match e {
            CallerEvent::Track(t) if t.kind() == kind => Some(t.clone()),
            _ => None,
        })
        .await
    }

    /// Hangs up with `reason` and closes the connection.
    pub async fn hang_up(self, reason: &str) {
        let _ = self.out.send(ClientMessage::Hangup {
            call_id: self.call_id.clone(),
            reason: reason.into(),
        });
        self.peer.shutdown().await;
        // The relay stops once the hang-up is out and the phonebook has closed its end.
        let mut relay = self.relay;
        if tokio::time::timeout(HANG_UP_WAIT, &mut relay)
            .await
            .is_err()
        {
            relay.abort();
        }
    }
}

/// Carries the call between the phonebook and the peer: sends `call`, then what `out`
/// queues (candidates, the hang-up, after which it closes), and applies what the callee
/// sends (its answer, its candidates) or reports it on `events`.
async fn relay(
    mut conn: PhonebookConnection<WsTransport>,
    call: ClientMessage,
    mut out: mpsc::UnboundedReceiver<ClientMessage>,
    peer: Arc<CallPeer>,
    events: mpsc::UnboundedSender<CallerEvent>,
) {
    if let Err(err) = conn.send(&call).await {
        let _ = events.send(CallerEvent::Error(format!(
            "the call did not go out: {err}"
        )));
        return;
    }
    // Once the callee or the phonebook ended the call, a hang-up would be refused.
    let mut ended = false;
    loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Ok(Some(msg)) => {
                    ended |= matches!(msg, ServerMessage::Hangup { .. } | ServerMessage::Declined { .. });
                    if let Some(event) = take(&peer, msg).await {
                        let _ = events.send(event);
                    }
                }
                // The media goes on without the phonebook; nothing more can be signalled.
                Ok(None) => return,
                Err(err) => {
                    debug!(%err, "phonebook connection lost");
                    return;
                }
            },
            msg = out.recv() => {
                let Some(msg) = msg else { break };
                let last = matches!(msg, ClientMessage::Hangup { .. });
                if !(last && ended) && conn.send(&msg).await.is_err() {
                    return;
                }
                if last {
                    break;
                }
            }
        }
    }
    conn.close().await;
}

/// Applies a message from the phonebook to the call, or turns it into an event.
async fn take(peer: &CallPeer, msg: ServerMessage) -> Option<CallerEvent> {
    Some(match msg {
        ServerMessage::Ringing { .. } => CallerEvent::Ringing,
        ServerMessage::Accepted { sdp, .. } => match peer.apply_answer(&sdp).await {
            Ok(()) => CallerEvent::Accepted,
            Err(err) => CallerEvent::Error(format!("bad answer: {err:#}")),
        },
        ServerMessage::Declined { reason, .. } => CallerEvent::Declined(reason),
        ServerMessage::Hangup { reason, .. } => CallerEvent::Hangup(reason),
        ServerMessage::Error { message, .. } => CallerEvent::Error(message),
        ServerMessage::Candidate {
            candidate: Some(candidate),
            ..
        } => {
            if let Err(err) = peer.add_candidate(candidate).await {
                debug!("candidate refused: {err:#}");
            }
            return None;
        }
        _ => return None,
    })
}
