//! What the camera tells beyond the phonebook protocol: the events it sends viewers over
//! each call's data channel, the requests viewers send it there, and the bell's state.
//! They are documented in `docs/protocol.md` (tests/protocol_docs.rs checks the examples
//! there against these types); the pages (web/app.js) read the events by these names.
//! Nothing here knows the device's parts, so the device core can speak these types.

use serde::{Deserialize, Serialize};

/// Which signalling a call came through, and so where its answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Our own phonebook (pages, scripts, WHEP players through the phonebook).
    Phonebook,
    /// A stock PeerJS client through a PeerJS server.
    PeerJs,
}

/// A button at the device, as viewers are told it was pressed (named by its word in
/// [`crate::buttons::BUTTONS`]).
pub use crate::buttons::Button;

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
    /// The visitor's bell changed: rung, answered, missed.
    Bell(BellStatus),
    /// The door output was driven, or a request to drive it was refused.
    Door {
        /// Whether the door is being opened.
        open: bool,
        /// Who opened it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// For how long, in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
        /// Why the request was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// What a viewer asks of the device on a call's data channel (a JSON text message;
/// any other text is a message for the person at the device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ViewerRequest {
    /// Drive the door output (only for the one who answered the bell).
    OpenDoor,
}

impl ViewerRequest {
    /// The request `text` is, if it is one.
    pub fn parse(text: &str) -> Option<ViewerRequest> {
        // A message that merely mentions a request is still a message: only a JSON
        // object whose `request` names one is taken.
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        value.get("request")?;
        serde_json::from_value(value).ok()
    }
}

/// Where the visitor's bell stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BellState {
    /// Not pressed since the daemon started.
    Idle,
    /// The household's phones ring.
    Ringing,
    /// Someone answered (and may still be talking).
    Answered,
    /// Nobody answered: nobody was online, everyone declined, or the ring timeout passed.
    Missed,
    /// Hung up at the device (or the daemon stopped) while the phones rang.
    Cancelled,
}

/// The bell's last press: whom it rang and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BellStatus {
    /// Where it stands.
    pub state: BellState,
    /// Who answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Whom it rings now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ringing: Vec<String>,
    /// Whom it did not ring, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Who declined, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined: Vec<Declined>,
}

impl BellStatus {
    /// Only the state and who answered: what the phonebook's callee list shows.
    pub fn summary(&self) -> BellStatus {
        BellStatus {
            state: self.state,
            by: self.by.clone(),
            ringing: Vec::new(),
            skipped: Vec::new(),
            declined: Vec::new(),
        }
    }
}

/// A name in `bell.ring` a press did not ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The callee name.
    pub name: String,
    /// `offline`, `dnd` or `busy`.
    pub why: SkipReason,
}

/// Why a name was not rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Not in the phonebook now.
    Offline,
    /// Set to do not disturb.
    Dnd,
    /// In a call, or rung by someone else.
    Busy,
}

/// A rung callee who declined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declined {
    /// The callee name.
    pub name: String,
    /// Their reason.
    pub reason: String,
}

impl DeviceEvent {
    /// The event as the text message sent on the data channel.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("device events serialise")
    }
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
            (
                DeviceEvent::Bell(BellStatus {
                    state: BellState::Answered,
                    by: Some("ada".into()),
                    ringing: Vec::new(),
                    skipped: vec![Skipped {
                        name: "bob".into(),
                        why: SkipReason::Offline,
                    }],
                    declined: Vec::new(),
                }),
                json!({"event": "bell", "state": "answered", "by": "ada", "skipped": [{"name": "bob", "why": "offline"}]}),
            ),
            (
                DeviceEvent::Door {
                    open: true,
                    by: Some("ada".into()),
                    secs: Some(3),
                    reason: None,
                },
                json!({"event": "door", "open": true, "by": "ada", "secs": 3}),
            ),
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
    fn only_a_json_object_naming_a_request_is_one() {
        assert_eq!(
            ViewerRequest::parse(r#"{"request":"open_door"}"#),
            Some(ViewerRequest::OpenDoor)
        );
        assert_eq!(ViewerRequest::parse("open_door"), None);
        assert_eq!(ViewerRequest::parse(r#"{"request":"launch"}"#), None);
        assert_eq!(ViewerRequest::parse(r#"{"text":"open_door"}"#), None);
        assert_eq!(ViewerRequest::parse("[1,2]"), None);
    }

    #[test]
    fn sides_are_named_as_status_shows_them() {
        assert_eq!(serde_json::to_value(Side::PeerJs).unwrap(), "peerjs");
        assert_eq!(serde_json::to_value(Side::Phonebook).unwrap(), "phonebook");
    }
}
