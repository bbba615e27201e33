//! The calls that come in: an offer is admitted by the rules, the other end's candidates
//! wait until the peer can take them, and the answer goes out once it is made.

use serde_json::Value;
use tracing::debug;

use super::{Action, Doorbell, LiveCall, MAX_EARLY_CANDIDATES, Role, Signal, caller_name};
use crate::buttons::Button;
use crate::call::{self, Call, CallState};
use crate::signalling::events::Side;
use crate::signalling::protocol::IceCandidate;

impl Doorbell {
    pub(super) fn offer(
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
            self.active_calls(),
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
                party: caller,
                offer,
                ready: false,
                early: Vec::new(),
                data_open: false,
            },
        );
        self.apply(&id, call::Input::Offered(admission), out);
    }

    pub(super) fn remote_candidate(
        &mut self,
        id: String,
        candidate: IceCandidate,
        out: &mut Vec<Action>,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.ready {
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

    pub(super) fn answer_made(&mut self, id: String, sdp: String, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(&id).filter(|c| {
            c.machine.role() == Role::Callee && c.machine.state() == CallState::Accepted && !c.ready
        }) else {
            // The call ended while its peer was being made: that peer has no use.
            out.push(Action::ClosePeer { call: id });
            return;
        };
        debug!(
            call = %id,
            ms = self.now.saturating_duration_since(call.offered).as_millis() as u64,
            "answered after the offer"
        );
        let caller = call.party.clone();
        out.push(Action::Signal {
            side: call.side,
            call: id.clone(),
            signal: Signal::Answer(sdp),
        });
        self.take_candidates(&id, out);
        if let Some((_, request)) = self.pending_accept.take_if(|(pending, _)| *pending == id) {
            self.reply(
                request,
                Ok(format!("accepted the call from {caller}")),
                Button::Accept,
                out,
            );
        }
    }

    /// The call's peer can take candidates from now on: hands it those that waited.
    pub(super) fn take_candidates(&mut self, id: &str, out: &mut Vec<Action>) {
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        call.ready = true;
        let early = std::mem::take(&mut call.early);
        if !early.is_empty() {
            out.push(Action::AddCandidates {
                call: id.to_owned(),
                candidates: early,
            });
        }
    }
}
