//! What goes into the core and what comes out of it. These are the core's own types: the
//! shell translates what the peers, the buttons and the sides report into them, and
//! carries out the actions with the real parts (tests/layering.rs keeps the core from
//! reaching rtc, media, gpio or the signalling transports).

use std::time::Duration;

use serde_json::Value;

use crate::call::AnswerRules;
use crate::control::Press;
use crate::control::Reply;
use crate::signalling::events::{BellStatus, DeviceEvent, Side};
use crate::signalling::protocol::{IceCandidate, Presence};

/// Identifies a request whose reply someone waits for (the shell keeps where it goes).
pub type RequestId = u64;

/// What the device is and how it answers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The callee name in the phonebook.
    pub name: String,
    /// How new calls are admitted.
    pub rules: AnswerRules,
    /// How long a call rings before "no answer".
    pub ring_timeout: Duration,
    /// The decline button's reason.
    pub decline_reason: String,
    /// A PeerJS server is configured.
    pub peerjs: bool,
    /// The visitor's bell.
    pub bell: BellConfig,
}

/// Whom the bell rings and how.
#[derive(Debug, Clone)]
pub struct BellConfig {
    /// The callee names a press rings (those online at the time); empty: no bell.
    pub ring: Vec<String>,
    /// How long the household's phones ring before the press is missed.
    pub ring_timeout: Duration,
    /// How long the door output is driven when the one who answered opens the door.
    pub door_open: Duration,
    /// The board has a door output.
    pub door: bool,
    /// What a rung callee is told of the device, besides `kind: "bell"` and its name.
    pub meta: Value,
    /// Starts the ids of the calls the device places: unique to this run of the daemon,
    /// as call ids are unique on the phonebook.
    pub call_prefix: String,
}

impl Default for BellConfig {
    fn default() -> Self {
        BellConfig {
            ring: Vec::new(),
            ring_timeout: Duration::from_secs(30),
            door_open: Duration::from_secs(3),
            door: false,
            meta: Value::Object(Default::default()),
            call_prefix: "b".into(),
        }
    }
}

/// Something that happened, for [`super::Doorbell::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A caller's offer arrived from `side` (`meta` as the side vouches for it).
    Offer {
        /// The call's id.
        call: String,
        /// Where it came from.
        side: Side,
        /// The caller's metadata: `user` (verified by the phonebook), `callerName`, `name`.
        meta: Value,
        /// The caller's SDP offer.
        sdp: String,
    },
    /// A candidate of the other end's.
    RemoteCandidate {
        /// The call.
        call: String,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// The other end hung up (or its side says it went away, or refused the call).
    RemoteHangup {
        /// The call.
        call: String,
        /// Why.
        reason: String,
    },
    /// The device is registered on `side`: calls can arrive.
    Registered(Side),
    /// The connection to `side` is gone (it reconnects by itself).
    SideLost {
        /// Which.
        side: Side,
        /// Why, for the logs and the service manager.
        why: String,
    },
    /// A button, key or control-socket press.
    Press {
        /// What was pressed.
        press: Press,
        /// Where the reply goes, if someone waits for one.
        request: Option<RequestId>,
    },
    /// The call's peer connection reported this.
    Peer {
        /// The call.
        call: String,
        /// What happened.
        report: PeerReport,
    },
    /// The peer asked for by [`Action::CreateAnswer`] exists and answered with `sdp`.
    AnswerMade {
        /// The call.
        call: String,
        /// The SDP answer.
        sdp: String,
    },
    /// The peer asked for by [`Action::CreateAnswer`] could not be made.
    AnswerFailed {
        /// The call.
        call: String,
        /// Why (sent to the caller as the decline reason).
        reason: String,
    },
    /// The peer asked for by [`Action::CreateOffer`] exists and offers `sdp`.
    OfferMade {
        /// The call.
        call: String,
        /// The SDP offer.
        sdp: String,
    },
    /// The peer asked for by [`Action::CreateOffer`] could not be made.
    OfferFailed {
        /// The call.
        call: String,
        /// Why.
        reason: String,
    },
    /// A callee the device called rings, with its answer when it previews the camera.
    CalleeRinging {
        /// The call.
        call: String,
        /// The callee's SDP answer, sent early so the camera shows while it rings.
        answer: Option<String>,
    },
    /// A callee the device called answered.
    CalleeAccepted {
        /// The call.
        call: String,
        /// The callee's SDP answer.
        sdp: String,
    },
    /// A callee the device called declined.
    CalleeDeclined {
        /// The call.
        call: String,
        /// The callee's reason.
        reason: String,
    },
    /// The phonebook's callee list changed (the bell rings those online).
    Directory(Directory),
    /// The daemon stops: every call ends.
    Shutdown,
}

/// A change of the phonebook's callee list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directory {
    /// The whole list: name and presence.
    All(Vec<(String, Presence)>),
    /// One callee appeared or changed.
    Changed(String, Presence),
    /// One callee went away.
    Removed(String),
}

/// What a call's peer connection reported.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerReport {
    /// A local candidate to trickle to the other end; `None` once gathering is complete.
    Candidate(Option<IceCandidate>),
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The call's data channel is open: events can be sent.
    DataOpen,
    /// The other end sent this text over the data channel.
    Text(String),
    /// A data channel the other end opened (named by its label) closed: for a PeerJS
    /// caller that is the hang-up.
    DataClosed(String),
    /// The connection failed or was closed.
    Lost(String),
}

/// What the other end of a call is to be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// The device calls `callee` with this offer.
    Place {
        /// The callee name.
        callee: String,
        /// What the callee is told of the device.
        meta: Value,
        /// The SDP offer.
        sdp: String,
    },
    /// The call rings.
    Ringing,
    /// The call is answered with this SDP.
    Answer(String),
    /// The call is declined for this reason.
    Decline(String),
    /// The call is over for this reason.
    Hangup(String),
    /// One of our candidates (`None`: gathering is complete).
    Candidate(Option<IceCandidate>),
}

/// What the service manager is to be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// The service is up (first registration), with its status.
    Ready(String),
    /// The status changed.
    Status(String),
    /// The service is stopping.
    Stopping(String),
}

/// What the ring LED, on-air LED, buzzer and door output are to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lights {
    /// Ring LED on.
    pub ring_led: bool,
    /// On-air LED on.
    pub on_air_led: bool,
    /// Buzzer sounding.
    pub buzzer: bool,
    /// Door strike released.
    pub door: bool,
}

/// What the shell is to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell the other end of `call`, through `side`.
    Signal {
        /// The side the call goes through.
        side: Side,
        /// The call.
        call: String,
        /// What to tell.
        signal: Signal,
    },
    /// Create the call's peer connection from its offer and report
    /// [`Input::AnswerMade`] or [`Input::AnswerFailed`].
    CreateAnswer {
        /// The call.
        call: String,
        /// The caller's SDP offer.
        offer: String,
    },
    /// Create a peer connection that offers the camera for a call the device places, and
    /// report [`Input::OfferMade`] or [`Input::OfferFailed`].
    CreateOffer {
        /// The call.
        call: String,
    },
    /// Give a placed call's peer connection the callee's answer.
    ApplyAnswer {
        /// The call.
        call: String,
        /// The SDP answer.
        sdp: String,
    },
    /// A placed call was answered: start the microphone and the speaker held back while
    /// it rang.
    OpenTwoWay {
        /// The call.
        call: String,
    },
    /// Give the call's peer connection the other end's candidates.
    AddCandidates {
        /// The call.
        call: String,
        /// The candidates, in the order they came.
        candidates: Vec<IceCandidate>,
    },
    /// Close the call's peer connection, if it has one.
    ClosePeer {
        /// The call.
        call: String,
    },
    /// The call is gone: drop whatever is still kept for it.
    Forget {
        /// The side it went through.
        side: Side,
        /// The call.
        call: String,
    },
    /// Send `event` on the data channels of these calls.
    Event {
        /// The calls (those whose channel is open).
        to: Vec<String>,
        /// The event.
        event: DeviceEvent,
    },
    /// Wait (at most `limit` each) until these calls' data channels sent what they hold.
    Flush {
        /// The calls.
        calls: Vec<String>,
        /// The longest wait per call.
        limit: Duration,
    },
    /// Show this presence in the phonebook.
    SetPresence(Presence),
    /// Show the bell's state in the phonebook (in the device's registration).
    PublishBell(BellStatus),
    /// Switch the indicators and the door output to these levels.
    Lights(Lights),
    /// Tell the service manager.
    Notify(Notify),
    /// Say this to a person at the terminal, if one watches.
    Say(String),
    /// The reply to a press.
    Reply {
        /// Where it goes (`None`: nobody waits, a GPIO button).
        request: Option<RequestId>,
        /// The reply.
        reply: Reply,
    },
}
