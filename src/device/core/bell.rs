//! The visitor's bell: a press calls, at once, every name in `bell.ring` that the
//! phonebook shows online and free; the first to answer talks with the door and the
//! others are told who did; when nobody answers (nobody online, everyone declined, or the
//! bell's ring timeout) the press is missed. The door output is driven only for the one
//! who answered, during that call.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Action, Directory, Doorbell, LiveCall, Role, Signal};
use crate::buttons::Button;
use crate::call::{self, Call, CallState};
use crate::control::{ControlError, Reply};
use crate::signalling::events::{
    BellState, BellStatus, Declined, DeviceEvent, Side, SkipReason, Skipped, ViewerRequest,
};
use crate::signalling::protocol::{Presence, name_key};
use crate::signalling::sanitize::for_log;

/// The reason the other rung phones get when someone answers.
pub fn answered_by(name: &str) -> String {
    format!("answered by {name}")
}

/// The reason the rung phones get when the bell's ring timeout passes.
pub const MISSED: &str = "missed";

/// The bell's state: the last press, the calls it placed, the phonebook's callee list
/// (whom a press may ring) and the door.
pub(super) struct Bell {
    /// Presence by [`name_key`] of every callee the phonebook lists.
    directory: BTreeMap<String, Presence>,
    /// The callee list arrived once (names never seen are warned about then).
    seen_directory: bool,
    /// The last press as the world sees it.
    status: BellStatus,
    /// What the phonebook shows of it now.
    published: Option<BellStatus>,
    /// The calls of the ringing press still going: call id → callee name.
    calls: BTreeMap<String, String>,
    /// Since when the press rings, and until when (`None`: a ring timeout past what the
    /// clock holds, so until someone decides).
    ringing: Option<(Instant, Option<Instant>)>,
    /// The call of whoever answered, while it lasts.
    answered_call: Option<String>,
    missed_at: Option<Instant>,
    door_until: Option<Instant>,
    next_call: u64,
}

impl Default for Bell {
    fn default() -> Self {
        Bell {
            directory: BTreeMap::new(),
            seen_directory: false,
            status: BellStatus {
                state: BellState::Idle,
                by: None,
                ringing: Vec::new(),
                skipped: Vec::new(),
                declined: Vec::new(),
            },
            published: None,
            calls: BTreeMap::new(),
            ringing: None,
            answered_call: None,
            missed_at: None,
            door_until: None,
            next_call: 0,
        }
    }
}

impl Bell {
    /// Since when the household's phones ring, while they do.
    pub(super) fn ringing_since(&self) -> Option<Instant> {
        self.ringing.map(|(since, _)| since)
    }

    /// When the last press was missed, if it was.
    pub(super) fn missed_at(&self) -> Option<Instant> {
        self.missed_at
            .filter(|_| self.status.state == BellState::Missed)
    }

    /// Whether the door output is on at `now`.
    pub(super) fn door_open(&self, now: Instant) -> bool {
        self.door_until.is_some_and(|until| now < until)
    }

    fn missed(&mut self, now: Instant) {
        self.status.state = BellState::Missed;
        self.status.ringing.clear();
        self.ringing = None;
        self.missed_at = Some(now);
    }
}

impl Doorbell {
    /// The bell's last press, or `None` when the device has no bell.
    pub fn bell(&self) -> Option<&BellStatus> {
        (!self.config.bell.ring.is_empty()).then_some(&self.bell.status)
    }

    pub(super) fn bell_status(&self) -> BellStatus {
        self.bell.status.clone()
    }

    pub(super) fn bell_deadline(&self) -> Option<Instant> {
        let ring_timeout = self.bell.ringing.and_then(|(_, until)| until);
        ring_timeout.into_iter().chain(self.bell.door_until).min()
    }

    /// A press of the bell: rings whoever may be rung, or says why nobody is.
    pub(super) fn press_bell(&mut self) -> Reply {
        if self.config.bell.ring.is_empty() {
            return Err(ControlError::Bell(
                "this device has no bell: set bell.ring to the names it rings".into(),
            ));
        }
        if self.bell.ringing.is_some() {
            return Err(ControlError::Bell("the bell is already ringing".into()));
        }
        if let Some(by) = self
            .bell
            .answered_call
            .as_ref()
            .and(self.bell.status.by.as_ref())
        {
            return Err(ControlError::Bell(format!(
                "{by} is talking with the door: nobody new is rung"
            )));
        }
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        for name in &self.config.bell.ring {
            let why = match self.bell.directory.get(&name_key(name)) {
                None => Some(SkipReason::Offline),
                Some(Presence::Dnd) => Some(SkipReason::Dnd),
                Some(Presence::InCall | Presence::Ringing) => Some(SkipReason::Busy),
                Some(Presence::Available) => None,
            };
            match why {
                Some(why) => skipped.push(Skipped {
                    name: name.clone(),
                    why,
                }),
                None => targets.push(name.clone()),
            }
        }
        let skipped_text = skipped
            .iter()
            .map(|s| format!("{} {}", s.name, skip_word(s.why)))
            .collect::<Vec<_>>()
            .join(", ");
        self.bell.status = BellStatus {
            state: BellState::Ringing,
            by: None,
            ringing: targets.clone(),
            skipped,
            declined: Vec::new(),
        };
        self.bell.missed_at = None;
        if targets.is_empty() {
            info!(skipped = %skipped_text, "the bell was pressed with nobody to ring: missed");
            self.bell.missed(self.now);
            return Ok(format!("nobody to ring ({skipped_text}): missed"));
        }
        let until = self.now.checked_add(self.config.bell.ring_timeout);
        self.bell.ringing = Some((self.now, until));
        info!(ringing = %targets.join(", "), skipped = %skipped_text, "the bell rings");
        for name in &targets {
            self.bell.next_call += 1;
            let id = format!("{}-{}", self.config.bell.call_prefix, self.bell.next_call);
            self.next_seq += 1;
            self.calls.insert(
                id.clone(),
                LiveCall {
                    machine: Call::outgoing(self.now),
                    side: Side::Phonebook,
                    offered: self.now,
                    seq: self.next_seq,
                    party: name.clone(),
                    offer: String::new(),
                    ready: false,
                    early: Vec::new(),
                    data_open: false,
                },
            );
            self.bell.calls.insert(id, name.clone());
        }
        let mut text = format!("ringing {}", targets.join(", "));
        if !skipped_text.is_empty() {
            text.push_str(&format!(" (not {skipped_text})"));
        }
        Ok(text)
    }

    /// The offers the press needs, once its reply is out.
    pub(super) fn request_offers(&mut self, out: &mut Vec<Action>) {
        for (id, call) in &self.calls {
            if call.machine.role() == Role::Caller
                && call.machine.state() == CallState::Initial
                && self.bell.calls.contains_key(id)
                && !call.ready
            {
                out.push(Action::CreateOffer { call: id.clone() });
            }
        }
    }

    /// What a rung callee is told of the device.
    fn bell_meta(&self) -> Value {
        let mut meta = match &self.config.bell.meta {
            Value::Object(map) => Value::Object(map.clone()),
            _ => json!({}),
        };
        meta["kind"] = json!("bell");
        meta["callerName"] = json!(self.config.name);
        meta["door"] = json!(self.config.bell.door);
        meta
    }

    pub(super) fn offer_made(&mut self, id: String, sdp: String, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get(&id).filter(|c| {
            c.machine.role() == Role::Caller && c.machine.state() == CallState::Initial
        }) else {
            // Hung up while the offer was made.
            out.push(Action::ClosePeer { call: id });
            return;
        };
        let callee = call.party.clone();
        out.push(Action::Signal {
            side: call.side,
            call: id.clone(),
            signal: Signal::Place {
                callee,
                meta: self.bell_meta(),
                sdp,
            },
        });
        self.apply(&id, call::Input::Placed, out);
    }

    pub(super) fn callee_ringing(
        &mut self,
        id: String,
        answer: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if !self.is_placed(&id) {
            return;
        }
        self.apply(&id, call::Input::Rang, out);
        if let Some(sdp) = answer {
            self.hand_answer(&id, sdp, out);
        }
    }

    /// Gives a placed call's peer the callee's answer, once.
    fn hand_answer(&mut self, id: &str, sdp: String, out: &mut Vec<Action>) {
        if self.calls.get(id).is_some_and(|c| !c.ready) {
            out.push(Action::ApplyAnswer {
                call: id.to_owned(),
                sdp,
            });
            self.take_candidates(id, out);
        }
    }

    pub(super) fn callee_accepted(&mut self, id: String, sdp: String, out: &mut Vec<Action>) {
        if !self.is_placed(&id) {
            return;
        }
        let Some(name) = self.bell.calls.get(&id).cloned() else {
            return;
        };
        if self.bell.answered_call.as_deref() == Some(id.as_str()) {
            // The winner's page said it twice: nothing more to do.
            return;
        }
        if self.bell.answered_call.is_some() || self.bell.status.state != BellState::Ringing {
            // Too late: someone else answered, or the press ended meanwhile.
            let reason = match &self.bell.status.by {
                Some(by) => answered_by(by),
                None => MISSED.into(),
            };
            self.apply(&id, call::Input::LocalHangup(reason), out);
            return;
        }
        info!(call = %id, by = %name, "the bell was answered");
        out.push(Action::Say(format!("{name} answered the bell")));
        self.hand_answer(&id, sdp, out);
        self.bell.status.state = BellState::Answered;
        self.bell.status.by = Some(name.clone());
        self.bell.status.ringing.clear();
        self.bell.ringing = None;
        self.bell.answered_call = Some(id.clone());
        self.apply(&id, call::Input::Answered, out);
        let reason = answered_by(&name);
        let others: Vec<String> = self
            .bell
            .calls
            .keys()
            .filter(|other| **other != id)
            .cloned()
            .collect();
        for other in others {
            self.apply(&other, call::Input::LocalHangup(reason.clone()), out);
        }
        self.bell_changed(out);
    }

    fn is_placed(&self, id: &str) -> bool {
        self.calls
            .get(id)
            .is_some_and(|c| c.machine.role() == Role::Caller)
    }

    /// A placed call is over: the press may be missed now, or its conversation ended.
    pub(super) fn bell_call_over(
        &mut self,
        id: &str,
        name: &str,
        machine: &Call,
        out: &mut Vec<Action>,
    ) {
        if self.bell.calls.remove(id).is_none() {
            return;
        }
        if self.bell.answered_call.as_deref() == Some(id) {
            self.bell.answered_call = None;
        }
        if machine.state() == CallState::Declined {
            self.bell.status.declined.push(Declined {
                name: name.to_owned(),
                reason: machine.reason().unwrap_or_default().to_owned(),
            });
        }
        self.bell.status.ringing.retain(|n| n != name);
        if self.bell.status.state == BellState::Ringing && self.bell.calls.is_empty() {
            info!("nobody answered the bell: missed");
            self.bell.missed(self.now);
        }
        self.bell_changed(out);
    }

    /// The bell's ring timeout and the door closing.
    pub(super) fn bell_poll(&mut self, out: &mut Vec<Action>) {
        if self.bell.door_until.is_some_and(|until| until <= self.now) {
            self.bell.door_until = None;
            info!("the door output is off again");
        }
        if self
            .bell
            .ringing
            .and_then(|(_, until)| until)
            .is_some_and(|until| until <= self.now)
        {
            info!("nobody answered the bell in time: missed");
            self.bell.missed(self.now);
            for id in self.bell.calls.keys().cloned().collect::<Vec<_>>() {
                self.apply(&id, call::Input::LocalHangup(MISSED.into()), out);
            }
            self.bell_changed(out);
        }
    }

    /// The device hangs up every call (a press, the shutdown): a ringing press is
    /// cancelled rather than missed.
    pub(super) fn cancel_bell(&mut self) {
        if self.bell.status.state == BellState::Ringing {
            self.bell.status.state = BellState::Cancelled;
            self.bell.status.ringing.clear();
            self.bell.ringing = None;
        }
    }

    /// Turns the door output off now (the daemon stops).
    pub(super) fn close_door(&mut self) {
        self.bell.door_until = None;
    }

    /// Tells the phonebook and the data channels how the bell stands, if that changed.
    pub(super) fn bell_changed(&mut self, out: &mut Vec<Action>) {
        if self.config.bell.ring.is_empty()
            || self.bell.published.as_ref() == Some(&self.bell.status)
        {
            return;
        }
        let summary = self.bell.status.summary();
        if self.bell.published.as_ref().map(BellStatus::summary) != Some(summary.clone()) {
            out.push(Action::PublishBell(summary));
        }
        self.bell.published = Some(self.bell.status.clone());
        self.broadcast(DeviceEvent::Bell(self.bell.status.clone()), out);
    }

    /// Keeps the phonebook's callee list, for whom a press may ring.
    pub(super) fn directory(&mut self, change: Directory) {
        match change {
            Directory::All(callees) => {
                self.bell.directory = callees
                    .into_iter()
                    .map(|(name, presence)| (name_key(&name), presence))
                    .collect();
                if !self.bell.seen_directory {
                    self.bell.seen_directory = true;
                    self.warn_unknown_bell_names();
                }
            }
            Directory::Changed(name, presence) => {
                self.bell.directory.insert(name_key(&name), presence);
            }
            Directory::Removed(name) => {
                self.bell.directory.remove(&name_key(&name));
            }
        }
    }

    /// The phonebook's list is gone with the connection: nobody is known to be online.
    pub(super) fn forget_directory(&mut self) {
        self.bell.directory.clear();
    }

    fn warn_unknown_bell_names(&self) {
        let online: BTreeSet<&String> = self.bell.directory.keys().collect();
        let missing: Vec<&str> = self
            .config
            .bell
            .ring
            .iter()
            .filter(|name| !online.contains(&name_key(name)))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            warn!(
                names = %missing.join(", "),
                "bell.ring names callees the phonebook does not list now: a press rings them only once they are online"
            );
        }
    }

    /// A viewer's request on its data channel.
    pub(super) fn viewer_request(
        &mut self,
        id: &str,
        request: ViewerRequest,
        out: &mut Vec<Action>,
    ) {
        match request {
            ViewerRequest::OpenDoor => self.open_door(id, out),
        }
    }

    fn open_door(&mut self, id: &str, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get(id) else {
            return;
        };
        let party = call.party.clone();
        let in_the_answered_call = self.bell.answered_call.as_deref() == Some(id)
            && matches!(
                call.machine.state(),
                CallState::Accepted | CallState::Established
            );
        let refusal = if !self.config.bell.door {
            Some("this device has no door output")
        } else if !in_the_answered_call {
            Some("only whoever answered the bell can open the door, during that call")
        } else {
            None
        };
        if let Some(reason) = refusal {
            warn!(call = %id, party = %for_log(&party), reason, "a request to open the door was refused");
            if call.data_open {
                out.push(Action::Event {
                    to: vec![id.to_owned()],
                    event: DeviceEvent::Door {
                        open: false,
                        by: None,
                        secs: None,
                        reason: Some(reason.into()),
                    },
                });
            }
            return;
        }
        let open = self.config.bell.door_open;
        self.bell.door_until = self.now.checked_add(open);
        info!(call = %id, by = %party, secs = open.as_secs_f32(), "the door was opened");
        out.push(Action::Say(format!("{party} opened the door")));
        self.broadcast(
            DeviceEvent::Door {
                open: true,
                by: Some(party),
                secs: Some(open.as_secs()),
                reason: None,
            },
            out,
        );
    }

    /// Replies to a bell press and, when it rang someone, asks for the offers.
    pub(super) fn bell_pressed(
        &mut self,
        request: Option<super::RequestId>,
        out: &mut Vec<Action>,
    ) {
        let reply = self.press_bell();
        let rang = reply.is_ok();
        self.reply(request, reply, Button::Bell, out);
        if rang {
            self.request_offers(out);
            self.bell_changed(out);
        }
    }
}

fn skip_word(why: SkipReason) -> &'static str {
    match why {
        SkipReason::Offline => "offline",
        SkipReason::Dnd => "in do not disturb",
        SkipReason::Busy => "busy",
    }
}
