//! What the camera tells beyond the phonebook protocol: the events it sends viewers over
//! each call's data channel, and the status `peercam status` prints. Both are documented
//! in `docs/protocol.md` (tests/protocol_docs.rs checks the examples there against these
//! types); the pages (web/app.js) read the events by these names.

use serde::{Deserialize, Serialize};

use crate::call::CallState;
use crate::control::Press;
use crate::gpio::Levels;
use crate::media::Codec;
use crate::media::fanout::FeedStats;

/// Which signalling a call came through, and so where its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Our own phonebook (pages, scripts, WHEP players through the phonebook).
    Phonebook,
    /// A stock PeerJS client through a PeerJS server.
    PeerJs,
}

/// A button at the device, as viewers are told it was pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    /// Accept.
    Accept,
    /// Decline (short press).
    Decline,
    /// Hang-up.
    Hangup,
    /// Do not disturb on/off (the decline button held).
    Dnd,
}

impl From<&Press> for Button {
    /// The button a press stands for, as viewers are told of it.
    fn from(press: &Press) -> Button {
        match press {
            Press::Accept => Button::Accept,
            Press::Decline(_) => Button::Decline,
            Press::Hangup(_) => Button::Hangup,
            Press::DoNotDisturb => Button::Dnd,
        }
    }
}

/// An event the camera sends on a call's data channel, as one JSON text message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeviceEvent {
    /// This call was accepted (sent once its data channel opens).
    Accepted,
    /// How many viewers watch now: to a viewer whose channel opens, and to everyone when
    /// the number changes.
    Viewers {
        /// Calls in which media flows.
        count: usize,
    },
    /// Another call rings at the device.
    Ringing {
        /// Its caller's name.
        caller: String,
    },
    /// Someone pressed a button at the device.
    Button {
        /// Which.
        button: Button,
    },
    /// The daemon stops: every call ends next.
    ShuttingDown,
}

impl DeviceEvent {
    /// The event as the text message sent on the data channel.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("device events serialise")
    }
}

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
}

/// One call in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallStatus {
    /// The call's id (PeerJS calls: `peerjs-` and the media connection's id).
    pub id: String,
    /// The caller's name.
    pub caller: String,
    /// Which signalling it came through.
    pub via: Side,
    /// Where the call stands.
    pub state: CallState,
    /// The video codec sent, once the call is answered.
    pub video: Option<Codec>,
    /// Audio buffers from the caller played on the speaker.
    pub played_audio_buffers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_have_the_shapes_the_pages_read() {
        let cases = [
            (DeviceEvent::Accepted, json!({"event": "accepted"})),
            (
                DeviceEvent::Viewers { count: 2 },
                json!({"event": "viewers", "count": 2}),
            ),
            (
                DeviceEvent::Ringing {
                    caller: "Peter".into(),
                },
                json!({"event": "ringing", "caller": "Peter"}),
            ),
            (
                DeviceEvent::Button {
                    button: Button::Dnd,
                },
                json!({"event": "button", "button": "dnd"}),
            ),
            (DeviceEvent::ShuttingDown, json!({"event": "shutting_down"})),
        ];
        for (event, wire) in cases {
            let text = event.to_text();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                wire
            );
            assert_eq!(serde_json::from_value::<DeviceEvent>(wire).unwrap(), event);
        }
    }

    #[test]
    fn sides_are_named_as_status_shows_them() {
        assert_eq!(serde_json::to_value(Side::PeerJs).unwrap(), "peerjs");
        assert_eq!(serde_json::to_value(Side::Phonebook).unwrap(), "phonebook");
    }
}
