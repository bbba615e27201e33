//! Every call on the device, without IO: which call a press answers, do not disturb,
//! the answer rules, early candidates, what viewers and the service manager are told, and
//! what the ring LED, on-air LED and buzzer show.
//!
//! [`Doorbell`] takes [`Input`]s with the current time and returns [`Action`]s for the
//! shell ([`super::run`]) to carry out; [`Doorbell::next_deadline`] says when it next
//! wants [`Doorbell::poll`] (a ring or connect timeout, the next blink of the ring LED or
//! beep of the buzzer). It never reads a clock, opens a socket or touches GStreamer, so
//! every policy is tested on simulated time (`super::tests`). Each call's own states are
//! [`crate::call::Call`]'s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, info};

pub use super::messages::{Action, Config, Input, Notify, ToCaller};
use crate::call::{self, Call, CallState};
use crate::control::ControlError;
use crate::control::Press;
use crate::gpio::{Levels, indicator_levels, next_indicator_change};
use crate::rtc::PeerEvent;
use crate::signalling::events::{Button, DeviceEvent, Side};
use crate::signalling::protocol::IceCandidate;
use crate::signalling::sanitize::for_log;

mod lifecycle;

/// Candidates kept for a call that has not been answered yet.
pub const MAX_EARLY_CANDIDATES: usize = 64;

/// The reason callers get when the daemon stops.
pub const SHUTTING_DOWN: &str = "camera shutting down";

/// The reason callers get from the hang-up button, unless another is given.
pub const HUNG_UP_AT_THE_DEVICE: &str = "hung up at the device";

/// How long the shutdown waits for each viewer's data channel to send what it holds (the
/// `shutting_down` event) before the calls end.
pub const FLUSH_LIMIT: Duration = Duration::from_millis(500);

struct LiveCall {
    machine: Call,
    side: Side,
    /// When the offer arrived, for the set-up timings in the debug log.
    offered: Instant,
    /// Arrival order: presses go to the call that rang first.
    seq: u64,
    caller: String,
    offer: String,
    /// The shell has a peer for it: candidates go there, not into `early`.
    answered: bool,
    early: Vec<IceCandidate>,
    data_open: bool,
}

/// One call as [`Doorbell::calls`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallView<'a> {
    /// The call's id.
    pub id: &'a str,
    /// The caller's name.
    pub caller: &'a str,
    /// Where it came from.
    pub side: Side,
    /// Where it stands.
    pub state: CallState,
}

/// Every call on the device and the rules they follow.
pub struct Doorbell {
    config: Config,
    calls: BTreeMap<String, LiveCall>,
    next_seq: u64,
    /// The time of the last input, for [`Doorbell::next_deadline`].
    now: Instant,
    registered: bool,
    ever_registered: bool,
    peerjs_open: bool,
    dnd: bool,
    levels: Levels,
    ringing_since: Option<Instant>,
    viewers_announced: usize,
    /// The call an accept press waits for the answer of, to reply once it is made.
    pending_accept: Option<String>,
}

impl Doorbell {
    /// A device with no calls, unregistered, at `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        Doorbell {
            config,
            calls: BTreeMap::new(),
            next_seq: 0,
            now,
            registered: false,
            ever_registered: false,
            peerjs_open: false,
            dnd: false,
            levels: Levels::default(),
            ringing_since: None,
            viewers_announced: 0,
            pending_accept: None,
        }
    }

    /// Applies `input` at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        self.now = now;
        let mut out = Vec::new();
        match input {
            Input::Offer {
                call,
                side,
                meta,
                sdp,
            } => self.offer(call, side, &meta, sdp, &mut out),
            Input::RemoteCandidate { call, candidate } => {
                self.remote_candidate(call, candidate, &mut out)
            }
            Input::RemoteHangup { call, reason } => {
                self.apply(&call, call::Input::RemoteHangup(reason), &mut out)
            }
            Input::Registered(side) => self.on_registered(side, &mut out),
            Input::SideLost { side, why } => self.side_lost(side, &why, &mut out),
            Input::Press(press) => self.press(press, &mut out),
            Input::Peer { call, event } => self.peer_event(call, event, &mut out),
            Input::AnswerMade { call, sdp } => self.answer_made(call, sdp, &mut out),
            Input::AnswerFailed { call, reason } => {
                self.apply(&call, call::Input::AnswerFailed(reason), &mut out)
            }
            Input::Shutdown => self.shutdown(&mut out),
        }
        self.show_indicators(&mut out);
        out
    }

    /// Fires what is due at `now`: ring and connect timeouts, the indicators' blinking.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.now = now;
        let mut out = Vec::new();
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.machine.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(call) = self.calls.get_mut(&id) {
                let actions = call.machine.poll(now);
                self.perform(&id, actions, &mut out);
                self.settle(&id, &mut out);
            }
        }
        self.show_indicators(&mut out);
        out
    }

    /// When [`Doorbell::poll`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let blink = self.ringing_since.and_then(|since| {
            let rung = self.now.saturating_duration_since(since);
            since.checked_add(rung + next_indicator_change(rung))
        });
        self.calls
            .values()
            .filter_map(|c| c.machine.deadline())
            .chain(blink)
            .min()
    }

    /// The callee name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Registered on the phonebook now.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// Registered on the PeerJS server now, or `None` without one.
    pub fn peerjs_open(&self) -> Option<bool> {
        self.config.peerjs.then_some(self.peerjs_open)
    }

    /// Do not disturb is on.
    pub fn dnd(&self) -> bool {
        self.dnd
    }

    /// What the indicators show.
    pub fn levels(&self) -> Levels {
        self.levels
    }

    /// Calls in which media flows.
    pub fn watching(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.machine.state() == CallState::Established)
            .count()
    }

    /// Every call, in the order of their ids.
    pub fn calls(&self) -> impl Iterator<Item = CallView<'_>> {
        self.calls.iter().map(|(id, c)| CallView {
            id,
            caller: &c.caller,
            side: c.side,
            state: c.machine.state(),
        })
    }

    /// One line for `systemctl status`.
    pub fn status_line(&self) -> String {
        let watching = self.watching();
        format!(
            "registered as {:?}, {watching} viewer{}",
            self.config.name,
            if watching == 1 { "" } else { "s" }
        )
    }

    fn offer(
        &mut self,
        id: String,
        side: Side,
        meta: &Value,
        offer: String,
        out: &mut Vec<Action>,
    ) {
        if self.calls.contains_key(&id) {
            return;
        }
        let caller = caller_name(meta);
        let admission = self.config.rules.admit(
            meta.get("user")
                .or_else(|| meta.get("callerName"))
                .and_then(Value::as_str),
            self.calls.len(),
            self.dnd,
        );
        debug!(call = %id, ?side, ?admission, "incoming call");
        self.next_seq += 1;
        self.calls.insert(
            id.clone(),
            LiveCall {
                machine: Call::new(self.now, self.config.ring_timeout),
                side,
                offered: self.now,
                seq: self.next_seq,
                caller,
                offer,
                answered: false,
                early: Vec::new(),
                data_open: false,
            },
        );
        self.apply(&id, call::Input::Offered(admission), out);
    }

    fn remote_candidate(&mut self, id: String, candidate: IceCandidate, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.answered {
            out.push(Action::AddCandidates {
                call: id,
                candidates: vec![candidate],
            });
        } else if call.early.len() < MAX_EARLY_CANDIDATES {
            call.early.push(candidate);
        } else {
            debug!(call = %id, "too many early candidates; dropping one");
        }
    }

    fn peer_event(&mut self, id: String, event: PeerEvent, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        match event {
            PeerEvent::Candidate(candidate) => out.push(Action::ToCaller {
                side: call.side,
                call: id,
                message: ToCaller::Candidate(candidate),
            }),
            PeerEvent::DataClosed(label) => {
                // A PeerJS caller hangs up by closing its connection; the data channel it
                // opened on the call is the first to tell. Our own pages say hangup.
                if call.side == Side::PeerJs {
                    debug!(call = %id, label = %for_log(&label), "PeerJS caller's data channel closed");
                    self.apply(&id, call::Input::RemoteHangup("caller hung up".into()), out);
                }
            }
            PeerEvent::Connected => {
                debug!(
                    call = %id,
                    ms = self.now.saturating_duration_since(call.offered).as_millis() as u64,
                    "connected (ICE and DTLS) after the offer"
                );
                self.apply(&id, call::Input::PeerConnected, out);
            }
            PeerEvent::Lost(reason) => self.apply(&id, call::Input::PeerLost(reason), out),
            PeerEvent::DataOpen => {
                call.data_open = true;
                let count = self.watching();
                for event in [DeviceEvent::Accepted, DeviceEvent::Viewers { count }] {
                    out.push(Action::Event {
                        to: vec![id.clone()],
                        event,
                    });
                }
            }
            PeerEvent::Text(text) => {
                // Viewers type what they like: no control characters reach the log or
                // the terminal.
                let shown = sanitise(&text, 500);
                info!(call = %id, caller = %call.caller, text = %shown, "message from a viewer");
                out.push(Action::Say(format!("{} says: {shown}", call.caller)));
            }
        }
    }

    fn answer_made(&mut self, id: String, sdp: String, out: &mut Vec<Action>) {
        let Some(call) = self
            .calls
            .get_mut(&id)
            .filter(|c| c.machine.state() == CallState::Accepted && !c.answered)
        else {
            // The call ended while its peer was being made: that peer has no use.
            out.push(Action::ClosePeer { call: id });
            return;
        };
        call.answered = true;
        debug!(
            call = %id,
            ms = self.now.saturating_duration_since(call.offered).as_millis() as u64,
            "answered after the offer"
        );
        let early = std::mem::take(&mut call.early);
        let caller = call.caller.clone();
        out.push(Action::ToCaller {
            side: call.side,
            call: id.clone(),
            message: ToCaller::Answer(sdp),
        });
        if !early.is_empty() {
            out.push(Action::AddCandidates {
                call: id.clone(),
                candidates: early,
            });
        }
        if self.pending_accept.as_deref() == Some(id.as_str()) {
            self.pending_accept = None;
            self.reply(
                Ok(format!("accepted the call from {caller}")),
                Button::from(&Press::Accept),
                out,
            );
        }
    }

    /// Feeds `input` to the call's machine, carries out what it asks and settles.
    fn apply(&mut self, id: &str, input: call::Input, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let actions = call.machine.handle(input, self.now);
        self.perform(id, actions, out);
        self.settle(id, out);
    }

    fn perform(&mut self, id: &str, actions: Vec<call::Action>, out: &mut Vec<Action>) {
        let Some(c) = self.calls.get(id) else {
            return;
        };
        let (side, caller) = (c.side, c.caller.clone());
        let to_caller = |message| Action::ToCaller {
            side,
            call: id.to_owned(),
            message,
        };
        for action in actions {
            match action {
                call::Action::SendRinging => out.push(to_caller(ToCaller::Ringing)),
                call::Action::SendDecline(reason) => out.push(to_caller(ToCaller::Decline(reason))),
                call::Action::SendHangup(reason) => out.push(to_caller(ToCaller::Hangup(reason))),
                call::Action::ClosePeer => out.push(Action::ClosePeer { call: id.into() }),
                call::Action::Answer => {
                    // A call is answered once: the offer is not needed after.
                    let offer = self
                        .calls
                        .get_mut(id)
                        .map(|c| std::mem::take(&mut c.offer))
                        .unwrap_or_default();
                    out.push(Action::CreatePeer {
                        call: id.into(),
                        offer,
                    });
                }
                call::Action::StateChanged(state, reason) => {
                    let reason = reason.unwrap_or_default();
                    info!(call = id, %caller, %state, reason = %for_log(&reason), "call");
                    match state {
                        CallState::Ringing => {
                            out.push(Action::Say(format!(
                                "call from {caller} is ringing: press a to accept, d to decline (or `peercam press accept`)"
                            )));
                            self.broadcast(
                                DeviceEvent::Ringing {
                                    caller: caller.clone(),
                                },
                                out,
                            );
                        }
                        CallState::Established => {
                            out.push(Action::Say(format!("{caller} is watching")))
                        }
                        s if s.is_over() => {
                            out.push(Action::Say(format!("call from {caller}: {s} ({reason})")))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// After a call changed: drops it once over, and tells what changed for everyone
    /// (the indicators, the number of viewers).
    fn settle(&mut self, id: &str, out: &mut Vec<Action>) {
        if let Some(call) = self.calls.get(id).filter(|c| c.machine.state().is_over()) {
            let side = call.side;
            let caller = call.caller.clone();
            self.calls.remove(id);
            out.push(Action::Forget {
                side,
                call: id.into(),
            });
            if self.pending_accept.as_deref() == Some(id) {
                self.pending_accept = None;
                self.reply(
                    Err(ControlError::NotAnswered(caller)),
                    Button::from(&Press::Accept),
                    out,
                );
            }
        }
        self.show_indicators(out);
        let watching = self.watching();
        if watching != self.viewers_announced {
            self.viewers_announced = watching;
            out.push(Action::Notify(Notify::Status(self.status_line())));
            self.broadcast(DeviceEvent::Viewers { count: watching }, out);
        }
    }

    /// Sends `event` to every viewer whose data channel is open.
    fn broadcast(&self, event: DeviceEvent, out: &mut Vec<Action>) {
        let to = self.ids(|c| c.data_open);
        if !to.is_empty() {
            out.push(Action::Event { to, event });
        }
    }

    /// Sets the ring LED, on-air LED and buzzer from the calls as they are now.
    fn show_indicators(&mut self, out: &mut Vec<Action>) {
        let ringing = self
            .calls
            .values()
            .any(|c| c.machine.state() == CallState::Ringing);
        self.ringing_since = match (ringing, self.ringing_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(self.now),
            (false, _) => None,
        };
        let levels = indicator_levels(
            self.ringing_since
                .map(|since| self.now.saturating_duration_since(since)),
            self.watching() > 0,
        );
        if levels != self.levels {
            self.levels = levels;
            out.push(Action::Indicators(levels));
        }
    }

    fn oldest_ringing(&self) -> Option<String> {
        self.calls
            .iter()
            .filter(|(_, c)| c.machine.state() == CallState::Ringing)
            .min_by_key(|(_, c)| c.seq)
            .map(|(id, _)| id.clone())
    }

    fn ids(&self, pick: impl Fn(&LiveCall) -> bool) -> Vec<String> {
        self.calls
            .iter()
            .filter(|(_, c)| pick(c))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The caller's name from its metadata: the user name the phonebook verified (`user`),
/// else `callerName` (as deepstream's examples use) or `name`, else "someone". Callers
/// choose it, so it is cut to 64 characters without control characters.
pub fn caller_name(meta: &Value) -> String {
    meta.get("user")
        .or_else(|| meta.get("callerName"))
        .or_else(|| meta.get("name"))
        .and_then(Value::as_str)
        .map(|s| sanitise(s, 64))
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "someone".into())
}

/// `text` without control characters, cut to `max` characters.
fn sanitise(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}
