//! The callbacks a peer connection reports through, the same whichever end offered:
//! state changes, local candidates, the `peercam` data channel and the other end's tracks.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice_transport::ice_candidate::RTCIceCandidate;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;

use super::{DATA_CHANNEL_LABEL, MAX_TEXT_BYTES, PeerEvent};
use crate::media::audio::{AudioSettings, Playback};
use crate::rtc::plan::RemoteTracks;
use crate::signalling::protocol::IceCandidate;

/// Where a connection's events go.
pub(super) type Emit = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// The `peercam` data channel, once there is one (the core sends on it only after
/// [`PeerEvent::DataOpen`]).
pub(super) type ChannelSlot = Arc<Mutex<Option<Arc<RTCDataChannel>>>>;

/// The speaker playing the other end's sound, once it plays.
pub(super) type PlaybackSlot = Arc<Mutex<Option<Playback>>>;

/// Reports connected, failed and closed; `connected` turns true with the first.
pub(super) fn report_state(pc: &RTCPeerConnection, emit: Emit, connected: watch::Sender<bool>) {
    pc.on_peer_connection_state_change(Box::new(move |state: RTCPeerConnectionState| {
        debug!(?state, "peer connection state");
        let event = match state {
            RTCPeerConnectionState::Connected => {
                let _ = connected.send(true);
                Some(PeerEvent::Connected)
            }
            RTCPeerConnectionState::Failed => Some(PeerEvent::Lost("connection lost".into())),
            RTCPeerConnectionState::Closed => Some(PeerEvent::Lost("connection closed".into())),
            _ => None,
        };
        if let Some(event) = event {
            emit(event);
        }
        Box::pin(async {})
    }));
}

/// Reports each local candidate as it is gathered, and the end of gathering.
pub(super) fn trickle(pc: &RTCPeerConnection, emit: Emit) {
    pc.on_ice_candidate(Box::new(move |candidate: Option<RTCIceCandidate>| {
        let init = candidate
            .and_then(|c| c.to_json().ok())
            .map(|c| IceCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_m_line_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
            });
        emit(PeerEvent::Candidate(init));
        Box::pin(async {})
    }));
}

/// Serves the data channels the other end opens: ours (`peercam`) as [`serve_channel`]
/// does; of any other only the closing is reported (for a PeerJS caller, that is the
/// hang-up).
pub(super) fn accept_channels(pc: &RTCPeerConnection, emit: Emit, slot: ChannelSlot) {
    pc.on_data_channel(Box::new(move |channel: Arc<RTCDataChannel>| {
        debug!(
            label = channel.label(),
            "the other end opened a data channel"
        );
        if channel.label() == DATA_CHANNEL_LABEL {
            serve_channel(&channel, emit.clone(), slot.clone());
        } else {
            // PeerJS opens one on every media call; it carries nothing of ours.
            report_closing(&channel, emit.clone());
        }
        Box::pin(async {})
    }));
}

/// Reports `channel` opening (then `slot` holds it for sending), the text it brings (up
/// to [`MAX_TEXT_BYTES`] a message), and its closing.
pub(super) fn serve_channel(channel: &Arc<RTCDataChannel>, emit: Emit, slot: ChannelSlot) {
    report_closing(channel, emit.clone());
    // webrtc-rs runs the open handler on a task of its own, so the other end's first
    // message can be handed over before it: whichever comes first reports the opening,
    // once, and the channel is in the slot by then for the reply.
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
    let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report_open = {
        let emit = emit.clone();
        move || {
            if !reported.swap(true, std::sync::atomic::Ordering::SeqCst) {
                emit(PeerEvent::DataOpen);
            }
        }
    };
    let on_open = report_open.clone();
    channel.on_open(Box::new(move || {
        on_open();
        Box::pin(async {})
    }));
    channel.on_message(Box::new(move |msg: DataChannelMessage| {
        report_open();
        if msg.data.len() > MAX_TEXT_BYTES {
            warn!(
                bytes = msg.data.len(),
                "data channel message too long; ignored"
            );
        } else {
            emit(PeerEvent::Text(
                String::from_utf8_lossy(&msg.data).into_owned(),
            ));
        }
        Box::pin(async {})
    }));
}

fn report_closing(channel: &RTCDataChannel, emit: Emit) {
    let label = channel.label().to_owned();
    channel.on_close(Box::new(move || {
        emit(PeerEvent::DataClosed(label.clone()));
        Box::pin(async {})
    }));
}

/// Does with each of the other end's tracks what `remote` says. The speaker plays only
/// once `two_way` is open; until then the sound is read and dropped, so nothing queues
/// up to be played late.
pub(super) fn take_tracks(
    pc: &RTCPeerConnection,
    remote: RemoteTracks,
    two_way: watch::Receiver<bool>,
    playback: PlaybackSlot,
) {
    pc.on_track(Box::new(move |track: Arc<TrackRemote>, _, _| {
        match &remote {
            RemoteTracks::HandOut(hand_out) => hand_out(track),
            RemoteTracks::Speaker(audio)
                if track.kind() == RTPCodecType::Audio && audio.has_speaker() =>
            {
                if *two_way.borrow() {
                    play(audio, track, &playback);
                } else {
                    tokio::spawn(play_once_open(
                        audio.clone(),
                        track,
                        two_way.clone(),
                        playback.clone(),
                    ));
                }
            }
            RemoteTracks::Speaker(_) => {}
        }
        Box::pin(async {})
    }));
}

async fn play_once_open(
    audio: AudioSettings,
    track: Arc<TrackRemote>,
    mut two_way: watch::Receiver<bool>,
    playback: PlaybackSlot,
) {
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            open = two_way.wait_for(|open| *open) => match open {
                Ok(_) => break,
                Err(_) => return,
            },
            packet = track.read_rtp() => match packet {
                Ok(_) => dropped += 1,
                Err(_) => return,
            },
        }
    }
    debug!(
        dropped,
        "two-way audio open: the other end's sound plays from now"
    );
    play(&audio, track, &playback);
}

fn play(audio: &AudioSettings, track: Arc<TrackRemote>, playback: &PlaybackSlot) {
    match Playback::start(audio, track) {
        Ok(started) => {
            info!("playing the other end's voice");
            *playback.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        }
        Err(err) => warn!("cannot play the other end's voice: {err:#}"),
    }
}
