//! The status `peercam status` prints: the daemon's state as one JSON object, documented
//! in `docs/protocol.md` (tests/protocol_docs.rs checks the example there).

use serde::Serialize;

use super::events::{BellStatus, Side};
use crate::call::{CallState, Role};
use crate::gpio::Levels;
use crate::media::Codec;
use crate::media::fanout::FeedStats;

/// The daemon's state, as `peercam status` prints it (one JSON object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The callee name.
    pub name: String,
    /// Registered on the phonebook now.
    pub registered: bool,
    /// Registered on the PeerJS server now; `null` when none is configured.
    pub peerjs: Option<bool>,
    /// The camera pipeline runs (someone watches, or it idles before stopping).
    pub camera_running: bool,
    /// Do not disturb is on.
    pub dnd: bool,
    /// What the ring LED, on-air LED and buzzer show.
    pub indicators: Levels,
    /// Calls in which media flows.
    pub viewers: usize,
    /// The camera feed's counters.
    pub feed: FeedStats,
    /// The microphone feed's counters, when there is a microphone.
    pub microphone: Option<FeedStats>,
    /// Every call on the device, in the order of their ids.
    pub calls: Vec<CallStatus>,
    /// The bell's last press, when the device has a bell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bell: Option<BellStatus>,
}

/// One call in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallStatus {
    /// The call's id (PeerJS calls: `peerjs-` and the media connection's id).
    pub id: String,
    /// The caller's name (the device's own for a call it placed).
    pub caller: String,
    /// Whether the device answers (`callee`) or placed (`caller`) the call.
    pub role: Role,
    /// Whom the device called, for a call it placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee: Option<String>,
    /// Which signalling it came through.
    pub via: Side,
    /// Where the call stands.
    pub state: CallState,
    /// The video codec sent, once the call is answered.
    pub video: Option<Codec>,
    /// Audio buffers from the caller played on the speaker.
    pub played_audio_buffers: u64,
}
