//! What goes into the core and what comes out of it.

use std::time::Duration;

use serde_json::Value;

use crate::call::AnswerRules;
use crate::control::Press;
use crate::control::Reply;
use crate::gpio::Levels;
use crate::rtc::PeerEvent;
use crate::signalling::events::{DeviceEvent, Side};
use crate::signalling::protocol::{IceCandidate, Presence};

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
    /// A candidate of the caller's.
    RemoteCandidate {
        /// The call.
        call: String,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// The caller hung up (or its side says it went away).
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
    Press(Press),
    /// The call's peer connection reported `event`.
    Peer {
        /// The call.
        call: String,
        /// What happened.
        event: PeerEvent,
    },
    /// The peer asked for by [`Action::CreatePeer`] exists and answered with `sdp`.
    AnswerMade {
        /// The call.
        call: String,
        /// The SDP answer.
        sdp: String,
    },
    /// The peer asked for by [`Action::CreatePeer`] could not be made.
    AnswerFailed {
        /// The call.
        call: String,
        /// Why (sent to the caller as the decline reason).
        reason: String,
    },
    /// The daemon stops: every call ends.
    Shutdown,
}

/// What the caller's side is to be told about one call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToCaller {
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

/// What the shell is to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Tell `side` about `call`.
    ToCaller {
        /// The side the call came from.
        side: Side,
        /// The call.
        call: String,
        /// What to tell.
        message: ToCaller,
    },
    /// Create the call's peer connection from its offer and report
    /// [`Input::AnswerMade`] or [`Input::AnswerFailed`].
    CreatePeer {
        /// The call.
        call: String,
        /// The caller's SDP offer.
        offer: String,
    },
    /// Give the call's peer connection the caller's candidates.
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
        /// The side it came from.
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
    /// Switch the indicators to these levels.
    Indicators(Levels),
    /// Tell the service manager.
    Notify(Notify),
    /// Say this to a person at the terminal, if one watches.
    Say(String),
    /// The reply to the press being handled.
    Reply(Reply),
}
