//! The call state machine on the device, without IO.
//!
//! A [`Call`] is driven by [`Input`]s (the offer arrived, a button, the peer connected,
//! the caller hung up …) and by time: every method takes the current instant, and
//! [`Call::poll`] fires the timeouts. It answers with [`Action`]s for the caller of these
//! methods to carry out (send a message, create the peer connection, close it). Nothing
//! here touches a socket, GStreamer or a clock, so every transition is tested with
//! simulated time.
//!
//! States follow deepstream's WebRTC call. A call has a [`Role`]: the device answers it
//! (an incoming call: INITIAL → RINGING → ACCEPTED → ESTABLISHED → ENDED, or DECLINED, or
//! ERROR) or places it (the bell: INITIAL → CONNECTING while the offer waits for the
//! callee → RINGING → ACCEPTED → ESTABLISHED → ENDED, or DECLINED, or ERROR). A placed
//! call may carry media while it rings (the callee's page previews the camera): its
//! connection coming up then changes no state, and the answer finds it established.

use std::fmt;
use std::time::{Duration, Instant};

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallState {
    /// Created, nothing happened yet.
    Initial,
    /// The caller sent its offer and waits (caller side only).
    Connecting,
    /// The device rings and waits for a decision.
    Ringing,
    /// Accepted; the media connection is being set up.
    Accepted,
    /// Media flows.
    Established,
    /// Over after being accepted, or hung up while ringing.
    Ended,
    /// Declined by a person, a policy, or the ring timeout.
    Declined,
    /// Could not be answered (bad offer, no camera).
    Error,
}

impl CallState {
    /// True once nothing more can happen to the call.
    pub fn is_over(self) -> bool {
        matches!(
            self,
            CallState::Ended | CallState::Declined | CallState::Error
        )
    }
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).expect("a state serialises");
        f.write_str(name.as_str().unwrap_or("?"))
    }
}

/// What the device's rules say about a new call, before anyone is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Ring and wait for a person.
    Ring,
    /// Accept at once (policy `auto`, or the caller is on the allow-list).
    Accept,
    /// Decline at once with this reason (do not disturb, busy).
    Decline(String),
}

/// The rules that decide how a new call is admitted.
#[derive(Debug, Clone)]
pub struct AnswerRules {
    /// Accept every call without ringing.
    pub auto: bool,
    /// Caller names accepted without ringing.
    pub allow: Vec<String>,
    /// Calls at once (ringing or watching) before new ones are busy.
    pub max_viewers: usize,
    /// Reason given while do-not-disturb is on.
    pub dnd_reason: String,
}

/// The reason a call gets when the device already has `max_viewers` calls.
pub const BUSY: &str = "busy";

impl AnswerRules {
    /// How a call from `caller` is admitted while `active` calls ring or run and
    /// do-not-disturb is `dnd`.
    pub fn admit(&self, caller: Option<&str>, active: usize, dnd: bool) -> Admission {
        if dnd {
            Admission::Decline(self.dnd_reason.clone())
        } else if active >= self.max_viewers {
            Admission::Decline(BUSY.into())
        } else if self.auto || caller.is_some_and(|c| self.allow.iter().any(|a| a == c)) {
            Admission::Accept
        } else {
            Admission::Ring
        }
    }
}

/// Which end of the call the device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Someone called the device; it answers.
    Callee,
    /// The device called someone (the bell).
    Caller,
}

/// What happened to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The caller's offer arrived, admitted as the rules say.
    Offered(Admission),
    /// A person (or the control socket) accepted.
    Accept,
    /// A person declined, with this reason.
    Decline(String),
    /// Creating the answer failed (bad offer, camera unavailable).
    AnswerFailed(String),
    /// The media connection is up.
    PeerConnected,
    /// The media connection failed or closed.
    PeerLost(String),
    /// The caller hung up, or the phonebook says it went away.
    RemoteHangup(String),
    /// The device ends the call (hang-up button, shutdown, someone else answered).
    LocalHangup(String),
    /// Caller role: the offer went out to the callee.
    Placed,
    /// Caller role: the offer could not be made.
    OfferFailed(String),
    /// Caller role: the callee rings.
    Rang,
    /// Caller role: the callee answered.
    Answered,
    /// Caller role: the callee declined, with this reason.
    Refused(String),
}

/// What the owner of the call must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell the caller it rings.
    SendRinging,
    /// Create the peer connection from the offer and send the answer.
    Answer,
    /// Tell the caller it was declined, with this reason.
    SendDecline(String),
    /// Tell the caller the call ended, with this reason.
    SendHangup(String),
    /// Close the peer connection.
    ClosePeer,
    /// Caller role: the callee answered; start what was held back until then (the
    /// microphone, the speaker).
    OpenMedia,
    /// The state changed to this one (with the reason, for the terminal states).
    StateChanged(CallState, Option<String>),
}

/// Reason sent when the ring timeout passes.
pub const NO_ANSWER: &str = "no answer";

/// Reason sent when the media connection does not come up in time.
pub const CONNECT_FAILED: &str = "could not connect";

/// How long an accepted call may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a placed call waits for the callee to ring, decline or answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reason sent when a placed call's callee does not reply in time.
pub const NO_REPLY: &str = "no reply";

/// One call on the device.
#[derive(Debug, Clone)]
pub struct Call {
    role: Role,
    state: CallState,
    since: Instant,
    /// How long an incoming call rings; a placed one rings until its owner decides.
    ring_timeout: Option<Duration>,
    reason: Option<String>,
    /// Caller role: the connection came up while the callee still rang.
    media_up: bool,
}

impl Call {
    /// A new incoming call, created at `now`; rings for at most `ring_timeout`.
    pub fn new(now: Instant, ring_timeout: Duration) -> Self {
        Call {
            role: Role::Callee,
            state: CallState::Initial,
            since: now,
            ring_timeout: Some(ring_timeout),
            reason: None,
            media_up: false,
        }
    }

    /// A call the device places, created at `now` while its offer is made. It rings until
    /// its owner hangs up ([`Input::LocalHangup`]); the callee has [`REPLY_TIMEOUT`] to
    /// reply to the offer.
    pub fn outgoing(now: Instant) -> Self {
        Call {
            role: Role::Caller,
            ring_timeout: None,
            ..Call::new(now, Duration::ZERO)
        }
    }

    /// Which end the device is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> CallState {
        self.state
    }

    /// Why the call is over, once it is.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// When [`Call::poll`] next has something to do, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        // `call.ring_timeout_secs` may be any u64: a timeout past what an Instant can hold
        // means ringing until someone decides, not a panic on every tick.
        match self.state {
            CallState::Ringing => self.ring_timeout.and_then(|t| self.since.checked_add(t)),
            CallState::Connecting => self.since.checked_add(REPLY_TIMEOUT),
            CallState::Accepted => self.since.checked_add(CONNECT_TIMEOUT),
            _ => None,
        }
    }

    /// Fires the timeouts due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        match self.deadline() {
            Some(due) if now >= due => match self.state {
                CallState::Ringing => self.decline(now, NO_ANSWER.into()),
                CallState::Connecting => self.end(now, NO_REPLY.into(), true),
                _ => self.end(now, CONNECT_FAILED.into(), true),
            },
            _ => Vec::new(),
        }
    }

    /// Applies `input` at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match self.role {
            Role::Callee => self.handle_incoming(input, now),
            Role::Caller => self.handle_outgoing(input, now),
        }
    }

    fn handle_outgoing(&mut self, input: Input, now: Instant) -> Vec<Action> {
        use CallState::*;
        match (self.state, input) {
            (Initial, Input::Placed) => self.go(Connecting, now, None),
            (Initial, Input::OfferFailed(reason)) => {
                let mut actions = vec![Action::ClosePeer];
                actions.extend(self.go(Error, now, Some(reason)));
                actions
            }
            (Initial, Input::LocalHangup(reason) | Input::RemoteHangup(reason)) => {
                let mut actions = vec![Action::ClosePeer];
                actions.extend(self.go(Ended, now, Some(reason)));
                actions
            }
            (Connecting, Input::Rang) => self.go(Ringing, now, None),
            (Connecting | Ringing, Input::Answered) => {
                let state = if self.media_up { Established } else { Accepted };
                let mut actions = vec![Action::OpenMedia];
                actions.extend(self.go(state, now, None));
                actions
            }
            (Connecting | Ringing, Input::Refused(reason)) => {
                let mut actions = vec![Action::ClosePeer];
                actions.extend(self.go(Declined, now, Some(reason)));
                actions
            }
            (Connecting | Ringing, Input::PeerConnected) => {
                self.media_up = true;
                Vec::new()
            }
            (Accepted, Input::PeerConnected) => self.go(Established, now, None),
            (Connecting | Ringing | Accepted | Established, Input::PeerLost(reason)) => {
                self.end(now, reason, true)
            }
            (Connecting | Ringing | Accepted | Established, Input::RemoteHangup(reason)) => {
                self.end(now, reason, false)
            }
            (Connecting | Ringing | Accepted | Established, Input::LocalHangup(reason)) => {
                self.end(now, reason, true)
            }
            // Late or duplicated: a second answer, a reply after the device hung up.
            _ => Vec::new(),
        }
    }

    fn handle_incoming(&mut self, input: Input, now: Instant) -> Vec<Action> {
        use CallState::*;
        match (self.state, input) {
            (Initial, Input::Offered(Admission::Decline(reason))) => self.decline(now, reason),
            (Initial, Input::Offered(admission)) => {
                let mut actions = self.go(Ringing, now, None);
                actions.insert(0, Action::SendRinging);
                if admission == Admission::Accept {
                    actions.extend(self.handle(Input::Accept, now));
                }
                actions
            }
            (Ringing, Input::Accept) => {
                let mut actions = self.go(Accepted, now, None);
                actions.insert(0, Action::Answer);
                actions
            }
            (Ringing, Input::Decline(reason)) => self.decline(now, reason),
            (Ringing, Input::RemoteHangup(reason)) => self.go(Ended, now, Some(reason)),
            (Ringing, Input::LocalHangup(reason)) => self.decline(now, reason),
            (Accepted, Input::AnswerFailed(reason)) => {
                let mut actions = vec![Action::SendDecline(reason.clone()), Action::ClosePeer];
                actions.extend(self.go(Error, now, Some(reason)));
                actions
            }
            (Accepted, Input::PeerConnected) => self.go(Established, now, None),
            (Accepted | Established, Input::PeerLost(reason)) => self.end(now, reason, true),
            (Accepted | Established, Input::RemoteHangup(reason)) => self.end(now, reason, false),
            (Accepted | Established, Input::LocalHangup(reason)) => self.end(now, reason, true),
            // Anything else is late or duplicated (a second press, a hang-up racing a
            // decline): the call is already where that input would have taken it.
            _ => Vec::new(),
        }
    }

    fn decline(&mut self, now: Instant, reason: String) -> Vec<Action> {
        let mut actions = vec![Action::SendDecline(reason.clone())];
        actions.extend(self.go(CallState::Declined, now, Some(reason)));
        actions
    }

    fn end(&mut self, now: Instant, reason: String, tell_caller: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if tell_caller {
            actions.push(Action::SendHangup(reason.clone()));
        }
        actions.push(Action::ClosePeer);
        actions.extend(self.go(CallState::Ended, now, Some(reason)));
        actions
    }

    fn go(&mut self, state: CallState, now: Instant, reason: Option<String>) -> Vec<Action> {
        self.state = state;
        self.since = now;
        self.reason = reason.clone();
        vec![Action::StateChanged(state, reason)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ringing(t0: Instant) -> Call {
        let mut call = Call::new(t0, Duration::from_secs(30));
        let actions = call.handle(Input::Offered(Admission::Ring), t0);
        assert_eq!(
            actions,
            vec![
                Action::SendRinging,
                Action::StateChanged(CallState::Ringing, None)
            ]
        );
        call
    }

    #[test]
    fn accept_then_connect_then_caller_hangs_up() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        let actions = call.handle(Input::Accept, t0 + Duration::from_secs(2));
        assert_eq!(actions[0], Action::Answer);
        assert_eq!(call.state(), CallState::Accepted);
        call.handle(Input::PeerConnected, t0 + Duration::from_secs(3));
        assert_eq!(call.state(), CallState::Established);
        let actions = call.handle(
            Input::RemoteHangup("bye".into()),
            t0 + Duration::from_secs(60),
        );
        assert_eq!(
            actions,
            vec![
                Action::ClosePeer,
                Action::StateChanged(CallState::Ended, Some("bye".into()))
            ]
        );
        assert!(call.state().is_over());
    }

    #[test]
    fn auto_accept_answers_at_once() {
        let t0 = Instant::now();
        let mut call = Call::new(t0, Duration::from_secs(30));
        let actions = call.handle(Input::Offered(Admission::Accept), t0);
        assert_eq!(actions[0], Action::SendRinging);
        assert!(actions.contains(&Action::Answer));
        assert_eq!(call.state(), CallState::Accepted);
    }

    #[test]
    fn decline_sends_the_reason() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        let actions = call.handle(Input::Decline("Not now".into()), t0);
        assert_eq!(actions[0], Action::SendDecline("Not now".into()));
        assert_eq!(call.state(), CallState::Declined);
        assert_eq!(call.reason(), Some("Not now"));
        // A second press changes nothing.
        assert!(call.handle(Input::Accept, t0).is_empty());
    }

    #[test]
    fn ring_timeout_declines_with_no_answer() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        assert!(call.poll(t0 + Duration::from_secs(29)).is_empty());
        let actions = call.poll(t0 + Duration::from_secs(30));
        assert_eq!(actions[0], Action::SendDecline(NO_ANSWER.into()));
        assert_eq!(call.state(), CallState::Declined);
        assert_eq!(call.deadline(), None);
    }

    #[test]
    fn caller_hanging_up_while_ringing_stops_it_without_a_reply() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        let actions = call.handle(Input::RemoteHangup("caller hung up".into()), t0);
        assert_eq!(
            actions,
            vec![Action::StateChanged(
                CallState::Ended,
                Some("caller hung up".into())
            )]
        );
        assert!(call.handle(Input::Accept, t0).is_empty());
    }

    #[test]
    fn answer_failure_declines_with_the_error() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        call.handle(Input::Accept, t0);
        let actions = call.handle(Input::AnswerFailed("no H.264 in the offer".into()), t0);
        assert_eq!(
            actions[0],
            Action::SendDecline("no H.264 in the offer".into())
        );
        assert_eq!(call.state(), CallState::Error);
    }

    #[test]
    fn connect_timeout_and_lost_peer_end_the_call_and_tell_the_caller() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        call.handle(Input::Accept, t0);
        let actions = call.poll(t0 + CONNECT_TIMEOUT);
        assert_eq!(actions[0], Action::SendHangup(CONNECT_FAILED.into()));

        let mut call = ringing(t0);
        call.handle(Input::Accept, t0);
        call.handle(Input::PeerConnected, t0);
        assert_eq!(call.deadline(), None);
        let actions = call.handle(Input::PeerLost("connection lost".into()), t0);
        assert_eq!(actions[0], Action::SendHangup("connection lost".into()));
        assert_eq!(actions[1], Action::ClosePeer);
    }

    #[test]
    fn a_call_the_rules_decline_never_rings() {
        let t0 = Instant::now();
        let mut call = Call::new(t0, Duration::from_secs(30));
        let actions = call.handle(Input::Offered(Admission::Decline(BUSY.into())), t0);
        assert_eq!(
            actions,
            vec![
                Action::SendDecline(BUSY.into()),
                Action::StateChanged(CallState::Declined, Some(BUSY.into()))
            ]
        );
    }

    fn rules() -> AnswerRules {
        AnswerRules {
            auto: false,
            allow: vec!["Grandma".into()],
            max_viewers: 2,
            dnd_reason: "Do not disturb".into(),
        }
    }

    #[test]
    fn rules_admit_by_dnd_then_capacity_then_allow_list_then_policy() {
        let r = rules();
        assert_eq!(r.admit(Some("Ray"), 0, false), Admission::Ring);
        assert_eq!(r.admit(Some("Grandma"), 1, false), Admission::Accept);
        assert_eq!(
            r.admit(Some("Grandma"), 2, false),
            Admission::Decline(BUSY.into())
        );
        assert_eq!(
            r.admit(Some("Grandma"), 0, true),
            Admission::Decline("Do not disturb".into())
        );
        assert_eq!(r.admit(None, 1, false), Admission::Ring);
        let auto = AnswerRules {
            auto: true,
            ..rules()
        };
        assert_eq!(auto.admit(Some("Ray"), 1, false), Admission::Accept);
        assert_eq!(
            auto.admit(Some("Ray"), 2, false),
            Admission::Decline(BUSY.into())
        );
    }

    #[test]
    fn a_ring_timeout_too_long_for_the_clock_never_fires() {
        let t0 = Instant::now();
        let mut call = Call::new(t0, Duration::from_secs(u64::MAX));
        call.handle(Input::Offered(Admission::Ring), t0);
        assert_eq!(call.deadline(), None);
        assert!(call.poll(t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(call.state(), CallState::Ringing);
    }

    #[test]
    fn local_hangup_while_ringing_is_a_decline() {
        let t0 = Instant::now();
        let mut call = ringing(t0);
        let actions = call.handle(Input::LocalHangup("camera shutting down".into()), t0);
        assert_eq!(
            actions[0],
            Action::SendDecline("camera shutting down".into())
        );
    }

    fn placed(t0: Instant) -> Call {
        let mut call = Call::outgoing(t0);
        assert_eq!(call.role(), Role::Caller);
        assert_eq!(
            call.handle(Input::Placed, t0),
            vec![Action::StateChanged(CallState::Connecting, None)]
        );
        call
    }

    #[test]
    fn a_placed_call_rings_then_connects_early_and_is_established_on_the_answer() {
        let t0 = Instant::now();
        let mut call = placed(t0);
        assert_eq!(call.deadline(), Some(t0 + REPLY_TIMEOUT));
        call.handle(Input::Rang, t0);
        assert_eq!(call.state(), CallState::Ringing);
        // Rings until its owner decides.
        assert_eq!(call.deadline(), None);
        assert!(call.handle(Input::PeerConnected, t0).is_empty());
        assert_eq!(call.state(), CallState::Ringing);
        let actions = call.handle(Input::Answered, t0 + Duration::from_secs(4));
        assert_eq!(
            actions,
            vec![
                Action::OpenMedia,
                Action::StateChanged(CallState::Established, None)
            ]
        );
        // A second answer changes nothing.
        assert!(call.handle(Input::Answered, t0).is_empty());
    }

    #[test]
    fn a_placed_call_answered_before_it_connects_waits_for_the_connection() {
        let t0 = Instant::now();
        let mut call = placed(t0);
        call.handle(Input::Answered, t0);
        assert_eq!(call.state(), CallState::Accepted);
        assert_eq!(call.deadline(), Some(t0 + CONNECT_TIMEOUT));
        call.handle(Input::PeerConnected, t0);
        assert_eq!(call.state(), CallState::Established);
    }

    #[test]
    fn a_placed_call_ends_by_decline_cancel_silence_or_a_failed_offer() {
        let t0 = Instant::now();
        let mut call = placed(t0);
        call.handle(Input::Rang, t0);
        let actions = call.handle(Input::Refused("busy".into()), t0);
        assert_eq!(actions[0], Action::ClosePeer);
        assert_eq!(call.state(), CallState::Declined);
        assert_eq!(call.reason(), Some("busy"));

        let mut call = placed(t0);
        call.handle(Input::Rang, t0);
        let actions = call.handle(Input::LocalHangup("answered by ada".into()), t0);
        assert_eq!(actions[0], Action::SendHangup("answered by ada".into()));
        assert_eq!(call.state(), CallState::Ended);

        let mut call = placed(t0);
        assert!(
            call.poll(t0 + REPLY_TIMEOUT - Duration::from_millis(1))
                .is_empty()
        );
        let actions = call.poll(t0 + REPLY_TIMEOUT);
        assert_eq!(actions[0], Action::SendHangup(NO_REPLY.into()));
        assert_eq!(call.state(), CallState::Ended);

        let mut call = Call::outgoing(t0);
        let actions = call.handle(Input::OfferFailed("no camera".into()), t0);
        assert_eq!(actions[0], Action::ClosePeer);
        assert_eq!(call.state(), CallState::Error);
        // Nothing was sent, so nothing is told on a hang-up before the offer went out.
        let mut call = Call::outgoing(t0);
        let actions = call.handle(Input::LocalHangup("bye".into()), t0);
        assert!(!actions.iter().any(|a| matches!(a, Action::SendHangup(_))));
        assert_eq!(call.state(), CallState::Ended);
    }

    #[test]
    fn roles_do_not_take_each_others_inputs() {
        let t0 = Instant::now();
        let mut incoming = ringing(t0);
        assert!(incoming.handle(Input::Answered, t0).is_empty());
        assert_eq!(incoming.state(), CallState::Ringing);
        let mut outgoing = placed(t0);
        assert!(outgoing.handle(Input::Accept, t0).is_empty());
        assert!(
            outgoing
                .handle(Input::Offered(Admission::Accept), t0)
                .is_empty()
        );
        assert_eq!(outgoing.state(), CallState::Connecting);
    }
}
