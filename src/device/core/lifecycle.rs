//! The inputs that concern every call at once: presses, registrations, lost sides and
//! the shutdown.

use super::{
    Action, Doorbell, FLUSH_LIMIT, HUNG_UP_AT_THE_DEVICE, Lights, Notify, RequestId, SHUTTING_DOWN,
};
use crate::buttons::Button;
use crate::call::{self, CallState, Role};
use crate::control::Press;
use crate::control::{ControlError, Reply};
use crate::signalling::events::{DeviceEvent, Side};
use crate::signalling::protocol::Presence;
use tracing::{info, warn};

impl Doorbell {
    pub(super) fn on_registered(&mut self, side: Side, out: &mut Vec<Action>) {
        match side {
            Side::Phonebook => {
                self.registered = true;
                let status = self.status_line();
                out.push(Action::Notify(if self.ever_registered {
                    Notify::Status(status)
                } else {
                    // The camera's elements and encoder were checked before we got here.
                    self.ever_registered = true;
                    Notify::Ready(status)
                }));
                if self.dnd {
                    // A restarted phonebook forgot it.
                    out.push(Action::SetPresence(Presence::Dnd));
                }
                out.push(Action::Say(format!(
                    "registered as {:?}; waiting for calls",
                    self.config.name
                )));
            }
            Side::PeerJs => {
                self.peerjs_open = true;
                out.push(Action::Say("registered on the PeerJS server".into()));
            }
        }
    }

    pub(super) fn side_lost(&mut self, side: Side, why: &str, out: &mut Vec<Action>) {
        let reason = match side {
            Side::Phonebook => {
                if self.registered {
                    warn!(%why, "lost the phonebook; reconnecting");
                }
                self.registered = false;
                self.forget_directory();
                out.push(Action::Notify(Notify::Status(format!(
                    "phonebook unreachable ({why}); reconnecting"
                ))));
                "phonebook connection lost"
            }
            Side::PeerJs => {
                if self.peerjs_open {
                    warn!(%why, "lost the PeerJS server; reconnecting");
                }
                self.peerjs_open = false;
                "PeerJS server connection lost"
            }
        };
        // Calls still being set up need their signalling; established ones are peer to
        // peer and go on.
        let waiting = self.ids(|c| c.side == side && c.machine.state() != CallState::Established);
        for id in waiting {
            self.apply(&id, call::Input::RemoteHangup(reason.into()), out);
        }
    }

    pub(super) fn press(
        &mut self,
        press: Press,
        request: Option<RequestId>,
        out: &mut Vec<Action>,
    ) {
        let button = press.button();
        let reply = match press {
            Press::Accept => match self.oldest_ringing() {
                Some(id) => {
                    // The reply waits for the answer (Input::AnswerMade or the call's end).
                    self.pending_accept = Some((id.clone(), request));
                    self.apply(&id, call::Input::Accept, out);
                    return;
                }
                None => Err(ControlError::NothingRinging),
            },
            Press::Bell => return self.bell_pressed(request, out),
            Press::Decline(reason) => match self.oldest_ringing() {
                Some(id) => {
                    let caller = self.calls[&id].party.clone();
                    let reason = reason.unwrap_or_else(|| self.config.decline_reason.clone());
                    self.apply(&id, call::Input::Decline(reason.clone()), out);
                    Ok(format!("declined the call from {caller}: {reason}"))
                }
                None => Err(ControlError::NothingRinging),
            },
            Press::DoNotDisturb => Ok(self.toggle_dnd(out)),
            Press::Hangup(reason) => {
                let reason = reason.unwrap_or_else(|| HUNG_UP_AT_THE_DEVICE.into());
                let ids = self.ids(|_| true);
                if ids.is_empty() {
                    Err(ControlError::NothingToHangUp)
                } else {
                    self.cancel_bell();
                    for id in &ids {
                        self.apply(id, call::Input::LocalHangup(reason.clone()), out);
                    }
                    Ok(format!("ended {} call(s)", ids.len()))
                }
            }
        };
        self.reply(request, reply, button, out);
    }

    /// Replies to a press, and tells the viewers it was pressed when it did something.
    pub(super) fn reply(
        &mut self,
        request: Option<RequestId>,
        reply: Reply,
        button: Button,
        out: &mut Vec<Action>,
    ) {
        let done = reply.is_ok();
        out.push(Action::Reply { request, reply });
        if done {
            self.broadcast(DeviceEvent::Button { button }, out);
        }
    }

    pub(super) fn toggle_dnd(&mut self, out: &mut Vec<Action>) -> String {
        self.dnd = !self.dnd;
        out.push(Action::SetPresence(if self.dnd {
            Presence::Dnd
        } else {
            Presence::Available
        }));
        if !self.dnd {
            out.push(Action::Say("do not disturb is off".into()));
            return "do not disturb is off".into();
        }
        let reason = self.config.rules.dnd_reason.clone();
        for id in self
            .ids(|c| c.machine.role() == Role::Callee && c.machine.state() == CallState::Ringing)
        {
            self.apply(&id, call::Input::Decline(reason.clone()), out);
        }
        out.push(Action::Say(
            "do not disturb is on: calls are declined until the next long press".into(),
        ));
        format!("do not disturb is on: calls are declined with {reason:?}")
    }

    pub(super) fn shutdown(&mut self, out: &mut Vec<Action>) {
        info!("shutting down: ending every call");
        out.push(Action::Notify(Notify::Stopping(format!(
            "ending {} call(s)",
            self.calls.len()
        ))));
        self.broadcast(DeviceEvent::ShuttingDown, out);
        let answered = self.ids(|c| c.ready);
        if !answered.is_empty() {
            out.push(Action::Flush {
                calls: answered,
                limit: FLUSH_LIMIT,
            });
        }
        self.cancel_bell();
        for id in self.ids(|_| true) {
            self.apply(&id, call::Input::LocalHangup(SHUTTING_DOWN.into()), out);
        }
        self.ringing_since = None;
        self.close_door();
        self.lights = Lights::default();
        // Dark whatever the indicators showed, even if that was already nothing.
        out.push(Action::Lights(self.lights));
    }
}
