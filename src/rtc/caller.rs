//! A caller without a browser: places a call through the phonebook and receives the
//! camera's video. Tests, benchmarks and `peercam call` use it to watch a camera the
//! way a page does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_remote::TrackRemote;

use super::engine::RtcEngine;
use super::writer::{add_track, send_frames};
use crate::media::Codec;
use crate::media::fanout::Feed;
use crate::signalling::protocol::{
    ClientMessage, IceCandidate, PROTOCOL_VERSION, Secret, ServerMessage,
};

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
    /// Send this feed's Opus stream as the caller's voice.
    pub send_audio: Option<Feed>,
    /// Offer to receive the camera's sound.
    pub receive_audio: bool,
    /// The user token or passphrase the phonebook asks for.
    pub token: Option<String>,
}

/// An outgoing call with its own phonebook connection and peer connection.
pub struct Caller {
    call_id: String,
    pc: Arc<RTCPeerConnection>,
    channel: Arc<RTCDataChannel>,
    out: mpsc::UnboundedSender<ClientMessage>,
    events: mpsc::UnboundedReceiver<CallerEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        let (mut socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .context("timed out connecting to the phonebook")??;
        let hello = ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: Some("peercam-caller".into()),
            token: options.token.clone().map(Secret),
        };
        socket.send(text(&hello)).await?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .context("no welcome from the phonebook")?
                .ok_or_else(|| anyhow!("the phonebook closed"))??;
            if let Message::Text(t) = frame {
                match serde_json::from_str::<ServerMessage>(&t)? {
                    ServerMessage::Welcome { .. } => break,
                    ServerMessage::Error { message, .. } => bail!("phonebook refused: {message}"),
                    _ => {}
                }
            }
        }

        let pc = Arc::new(
            engine
                .api()
                .new_peer_connection(RTCConfiguration {
                    ice_servers: engine.ice_servers(),
                    certificates: vec![engine.certificate()?],
                    ..Default::default()
                })
                .await?,
        );
        pc.add_transceiver_from_kind(
            RTPCodecType::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: Vec::new(),
            }),
        )
        .await?;
        let mut tasks = Vec::new();
        let (connected_tx, connected_rx) = tokio::sync::watch::channel(false);
        if let Some(feed) = &options.send_audio {
            let voice = feed.subscribe(Codec::Opus)?;
            let (track, rtcp) = add_track(&pc, &voice, engine.h264_fmtp()).await?;
            tasks.push(rtcp);
            tasks.push(tokio::spawn(send_frames(track, voice, connected_rx)));
        } else if options.receive_audio {
            pc.add_transceiver_from_kind(
                RTPCodecType::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: Vec::new(),
                }),
            )
            .await?;
        }

        let call_id = format!("c-{:016x}", rand::random::<u64>());
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientMessage>();
        let (event_tx, event_rx) = mpsc::unbounded_channel();

        let id = call_id.clone();
        let candidates = out_tx.clone();
        pc.on_ice_candidate(Box::new(move |c: Option<RTCIceCandidate>| {
            let candidate = c.and_then(|c| c.to_json().ok()).map(|c| IceCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_m_line_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
            });
            let _ = candidates.send(ClientMessage::Candidate {
                call_id: id.clone(),
                candidate,
            });
            Box::pin(async {})
        }));
        let state_events = event_tx.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let event = match state {
                RTCPeerConnectionState::Connected => {
                    let _ = connected_tx.send(true);
                    Some(CallerEvent::Connected)
                }
                RTCPeerConnectionState::Failed => Some(CallerEvent::Lost("connection lost".into())),
                RTCPeerConnectionState::Closed => {
                    Some(CallerEvent::Lost("connection closed".into()))
                }
                _ => None,
            };
            if let Some(event) = event {
                let _ = state_events.send(event);
            }
            Box::pin(async {})
        }));
        let track_events = event_tx.clone();
        pc.on_track(Box::new(move |track, _, _| {
            let _ = track_events.send(CallerEvent::Track(track));
            Box::pin(async {})
        }));

        // Like the page: one reliable, ordered channel for text and device events.
        let channel = pc.create_data_channel("peercam", None).await?;
        let open_events = event_tx.clone();
        channel.on_open(Box::new(move || {
            let _ = open_events.send(CallerEvent::DataOpen);
            Box::pin(async {})
        }));
        let data_events = event_tx.clone();
        channel.on_message(Box::new(move |msg: DataChannelMessage| {
            let _ = data_events.send(CallerEvent::Data(
                String::from_utf8_lossy(&msg.data).into_owned(),
            ));
            Box::pin(async {})
        }));

        let offer = pc.create_offer(None).await?;
        // The call goes out before gathering starts, so no candidate overtakes it.
        out_tx.send(ClientMessage::Call {
            call_id: call_id.clone(),
            callee: callee.to_owned(),
            meta,
            sdp: offer.sdp.clone(),
        })?;
        let (mut sink, mut stream) = socket.split();
        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let last = matches!(msg, ClientMessage::Hangup { .. });
                if sink.send(text(&msg)).await.is_err() || last {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        pc.set_local_description(offer).await?;

        let reader_pc = pc.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(t) = frame else { continue };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&t) else {
                    continue;
                };
                let event = match msg {
                    ServerMessage::Ringing { .. } => CallerEvent::Ringing,
                    ServerMessage::Accepted { sdp, .. } => {
                        let applied = match RTCSessionDescription::answer(sdp) {
                            Ok(answer) => reader_pc.set_remote_description(answer).await,
                            Err(err) => Err(err),
                        };
                        match applied {
                            Ok(()) => CallerEvent::Accepted,
                            Err(err) => CallerEvent::Error(format!("bad answer: {err}")),
                        }
                    }
                    ServerMessage::Declined { reason, .. } => CallerEvent::Declined(reason),
                    ServerMessage::Hangup { reason, .. } => CallerEvent::Hangup(reason),
                    ServerMessage::Error { message, .. } => CallerEvent::Error(message),
                    ServerMessage::Candidate {
                        candidate: Some(c), ..
                    } => {
                        let init = RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_mline_index: c.sdp_m_line_index,
                            username_fragment: c.username_fragment,
                        };
                        if let Err(err) = reader_pc.add_ice_candidate(init).await {
                            debug!(%err, "candidate refused");
                        }
                        continue;
                    }
                    _ => continue,
                };
                if event_tx.send(event).is_err() {
                    break;
                }
            }
        });
        tasks.insert(0, writer);
        tasks.push(reader);
        Ok(Caller {
            call_id,
            pc,
            channel,
            out: out_tx,
            events: event_rx,
            tasks,
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
        self.channel.send_text(text.to_owned()).await?;
        Ok(())
    }

    /// Tells the camera the picture was lost (RTCP PLI for `track`), as a browser does
    /// after packet loss.
    pub async fn picture_lost(&self, track: &TrackRemote) -> anyhow::Result<()> {
        let pli = webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: track.ssrc(),
        };
        self.pc.write_rtcp(&[Box::new(pli)]).await?;
        Ok(())
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
        let _ = self.pc.close().await;
        let mut tasks = self.tasks.into_iter();
        if let Some(writer) = tasks.next() {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
        for task in tasks {
            task.abort();
        }
    }
}

fn text(msg: &ClientMessage) -> Message {
    Message::Text(
        serde_json::to_string(msg)
            .expect("client messages serialise")
            .into(),
    )
}
