//! Every call on the device, without IO: which call a press answers, do not disturb,
//! the answer rules, early candidates, the visitor's bell (whom a press rings, first
//! answer wins, missed), the door output, what viewers and the service manager are told,
//! and what the ring LED, on-air LED and buzzer show.
//!
//! [`Doorbell`] takes [`Input`]s with the current time and returns [`Action`]s for the
//! shell ([`super::run`]) to carry out; [`Doorbell::next_deadline`] says when it next
//! wants [`Doorbell::poll`] (a ring, reply or connect timeout, the bell's ring timeout,
//! the door closing, the next blink of the ring LED or beep of the buzzer). It never reads
//! a clock, opens a socket or touches GStreamer, so every policy is tested on simulated
//! time (`super::tests`). Each call's own states are [`crate::call::Call`]'s; the bell's
//! policy is in `core/bell.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::{debug, info};

pub use super::messages::{
    Action, BellConfig, Config, Directory, Input, Lights, Notify, PeerReport, RequestId, Signal,
};
use crate::buttons::Button;
use crate::call::{self, Call, CallState, Role};
use crate::control::ControlError;
use crate::signalling::events::{DeviceEvent, Side, ViewerRequest};
use crate::signalling::protocol::IceCandidate;
use crate::signalling::sanitize::for_log;
use lights::Signals;

mod bell;
mod incoming;
mod lifecycle;
mod lights;

pub use lights::MISSED_SHOW;

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
    /// When the offer arrived (or was asked for), for the set-up timings in the debug log.
    offered: Instant,
    /// Arrival order: presses go to the call that rang first.
    seq: u64,
    /// The other end: the caller of an incoming call, the callee of a placed one.
    party: String,
    /// An incoming call's offer, until it is answered.
    offer: String,
    /// The peer can take the other end's candidates (it answered, or holds the callee's
    /// answer): they go there, not into `early`.
    ready: bool,
    early: Vec<IceCandidate>,
    data_open: bool,
}

/// One call as [`Doorbell::calls`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallView<'a> {
    /// The call's id.
    pub id: &'a str,
    /// The other end's name: the caller of an incoming call, the callee of a placed one.
    pub party: &'a str,
    /// Whether the device answers or placed it.
    pub role: Role,
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
    lights: Lights,
    ringing_since: Option<Instant>,
    viewers_announced: usize,
    /// The call an accept press waits for the answer of, to reply once it is made.
    pending_accept: Option<(String, Option<RequestId>)>,
    bell: bell::Bell,
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
            lights: Lights::default(),
            ringing_since: None,
            viewers_announced: 0,
            pending_accept: None,
            bell: bell::Bell::default(),
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
            Input::Press { press, request } => self.press(press, request, &mut out),
            Input::Peer { call, report } => self.peer_report(call, report, &mut out),
            Input::AnswerMade { call, sdp } => self.answer_made(call, sdp, &mut out),
            Input::AnswerFailed { call, reason } => {
                self.apply(&call, call::Input::AnswerFailed(reason), &mut out)
            }
            Input::OfferMade { call, sdp } => self.offer_made(call, sdp, &mut out),
            Input::OfferFailed { call, reason } => {
                self.apply(&call, call::Input::OfferFailed(reason), &mut out)
            }
            Input::CalleeRinging { call, answer } => self.callee_ringing(call, answer, &mut out),
            Input::CalleeAccepted { call, sdp } => self.callee_accepted(call, sdp, &mut out),
            Input::CalleeDeclined { call, reason } => {
                self.apply(&call, call::Input::Refused(reason), &mut out)
            }
            Input::Directory(change) => self.directory(change),
            Input::Shutdown => self.shutdown(&mut out),
        }
        self.show_lights(&mut out);
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
        // The bell's ring timeout first: its calls end as "missed", not by their own.
        self.bell_poll(&mut out);
        for id in due {
            if let Some(call) = self.calls.get_mut(&id) {
                let actions = call.machine.poll(now);
                self.perform(&id, actions, &mut out);
                self.settle(&id, &mut out);
            }
        }
        self.show_lights(&mut out);
        out
    }

    /// When [`Doorbell::poll`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let lights = self
            .signals()
            .next_change()
            .and_then(|after| self.now.checked_add(after));
        self.calls
            .values()
            .filter_map(|c| c.machine.deadline())
            .chain(lights)
            .chain(self.bell_deadline())
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

    /// What the indicators and the door output show.
    pub fn lights(&self) -> Lights {
        self.lights
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
            party: &c.party,
            role: c.machine.role(),
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

    fn peer_report(&mut self, id: String, report: PeerReport, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        match report {
            PeerReport::Candidate(candidate) => out.push(Action::Signal {
                side: call.side,
                call: id,
                signal: Signal::Candidate(candidate),
            }),
            PeerReport::DataClosed(label) => {
                // A PeerJS caller hangs up by closing its connection; the data channel it
                // opened on the call is the first to tell. Our own pages say hangup.
                if call.side == Side::PeerJs {
                    debug!(call = %id, label = %for_log(&label), "PeerJS caller's data channel closed");
                    self.apply(&id, call::Input::RemoteHangup("caller hung up".into()), out);
                }
            }
            PeerReport::Connected => {
                debug!(
                    call = %id,
                    ms = self.now.saturating_duration_since(call.offered).as_millis() as u64,
                    "connected (ICE and DTLS) after the offer"
                );
                self.apply(&id, call::Input::PeerConnected, out);
            }
            PeerReport::Lost(reason) => self.apply(&id, call::Input::PeerLost(reason), out),
            PeerReport::DataOpen => {
                call.data_open = true;
                if call.machine.role() == Role::Caller {
                    // A rung page's channel opens while it still rings: it hears how the
                    // bell stands, and "accepted" once it answers.
                    let event = DeviceEvent::Bell(self.bell_status());
                    out.push(Action::Event {
                        to: vec![id],
                        event,
                    });
                    return;
                }
                let count = self.watching();
                for event in [DeviceEvent::Accepted, DeviceEvent::Viewers { count }] {
                    out.push(Action::Event {
                        to: vec![id.clone()],
                        event,
                    });
                }
            }
            PeerReport::Text(text) => {
                if let Some(request) = ViewerRequest::parse(&text) {
                    return self.viewer_request(&id, request, out);
                }
                // Viewers type what they like: no control characters reach the log or
                // the terminal.
                let shown = sanitise(&text, 500);
                info!(call = %id, party = %call.party, text = %shown, "message from a viewer");
                out.push(Action::Say(format!("{} says: {shown}", call.party)));
            }
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
        let (side, party, role) = (c.side, c.party.clone(), c.machine.role());
        let signal = |signal| Action::Signal {
            side,
            call: id.to_owned(),
            signal,
        };
        for action in actions {
            match action {
                call::Action::SendRinging => out.push(signal(Signal::Ringing)),
                call::Action::SendDecline(reason) => out.push(signal(Signal::Decline(reason))),
                call::Action::SendHangup(reason) => out.push(signal(Signal::Hangup(reason))),
                call::Action::ClosePeer => out.push(Action::ClosePeer { call: id.into() }),
                call::Action::OpenMedia => {
                    out.push(Action::OpenTwoWay { call: id.into() });
                    if self.calls.get(id).is_some_and(|c| c.data_open) {
                        out.push(Action::Event {
                            to: vec![id.into()],
                            event: DeviceEvent::Accepted,
                        });
                    }
                }
                call::Action::Answer => {
                    // A call is answered once: the offer is not needed after.
                    let offer = self
                        .calls
                        .get_mut(id)
                        .map(|c| std::mem::take(&mut c.offer))
                        .unwrap_or_default();
                    out.push(Action::CreateAnswer {
                        call: id.into(),
                        offer,
                    });
                }
                call::Action::StateChanged(state, reason) if role == Role::Caller => {
                    let reason = reason.unwrap_or_default();
                    info!(call = id, callee = %party, %state, reason = %for_log(&reason), "bell call");
                }
                call::Action::StateChanged(state, reason) => {
                    let reason = reason.unwrap_or_default();
                    let caller = &party;
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
        let over = self
            .calls
            .get(id)
            .is_some_and(|c| c.machine.state().is_over());
        if let Some(call) = over.then(|| self.calls.remove(id)).flatten() {
            out.push(Action::Forget {
                side: call.side,
                call: id.into(),
            });
            if let Some((_, request)) = self.pending_accept.take_if(|(pending, _)| pending == id) {
                self.reply(
                    request,
                    Err(ControlError::NotAnswered(call.party.clone())),
                    Button::Accept,
                    out,
                );
            }
            if call.machine.role() == Role::Caller {
                self.bell_call_over(id, &call.party, &call.machine, out);
            }
        }
        self.show_lights(out);
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

    /// What goes on, as the lights see it.
    fn signals(&self) -> Signals {
        let since = |at: Option<Instant>| at.map(|at| self.now.saturating_duration_since(at));
        Signals {
            incoming: since(self.ringing_since),
            outgoing: since(self.bell.ringing_since()),
            missed: since(self.bell.missed_at()),
            watching: self.watching() > 0,
            door: self.bell.door_open(self.now),
        }
    }

    /// Sets the ring LED, on-air LED, buzzer and door from the calls as they are now.
    fn show_lights(&mut self, out: &mut Vec<Action>) {
        let ringing = self
            .calls
            .values()
            .any(|c| c.machine.role() == Role::Callee && c.machine.state() == CallState::Ringing);
        self.ringing_since = match (ringing, self.ringing_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(self.now),
            (false, _) => None,
        };
        let lights = self.signals().lights();
        if lights != self.lights {
            self.lights = lights;
            out.push(Action::Lights(lights));
        }
    }

    /// Calls that take a viewer's place: incoming ones, and placed ones once answered
    /// (the bell's ringing calls make nobody busy).
    fn active_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| {
                c.machine.role() == Role::Callee
                    || matches!(
                        c.machine.state(),
                        CallState::Accepted | CallState::Established
                    )
            })
            .count()
    }

    /// The incoming call that rang first (presses answer incoming calls only).
    fn oldest_ringing(&self) -> Option<String> {
        self.calls
            .iter()
            .filter(|(_, c)| {
                c.machine.role() == Role::Callee && c.machine.state() == CallState::Ringing
            })
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
