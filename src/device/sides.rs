//! The other end's side of a call: the signalling it goes through, behind one small
//! interface ([`CallerSide`]), for the calls the device answers and those it places (the
//! bell). Each side also turns what its client reports into the core's [`Input`]s, so the
//! rest of the device does not know one signalling from another.
//!
//! The phonebook's side ([`PhonebookSide`]) speaks our protocol; WHEP players reach the
//! device through the phonebook, so they are phonebook calls. The PeerJS side
//! ([`PeerJsSide`]) speaks to stock PeerJS clients, which know no ringing, decline or
//! hang-up: a decline is sent as EXPIRE (the client reports `peer-unavailable`), a hang-up
//! is the peer connection closing, and `user` in a PeerJS caller's metadata is dropped
//! (only a phonebook can vouch for a user name).

use std::collections::HashMap;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::core::{Directory, Input, Signal};
use crate::signalling::client::ClientEvent;
use crate::signalling::events::Side;
use crate::signalling::peerjs::{PeerJsCommand, PeerJsEvent};
use crate::signalling::protocol::{ClientMessage, IceCandidate, ServerMessage};
use crate::signalling::sanitize::for_log;

/// Where a call's signals go.
pub trait CallerSide: Send {
    /// The device calls `callee` with `sdp`; returns false when this side cannot place
    /// calls (the call then ends at once).
    fn place(&mut self, call: &str, callee: &str, meta: Value, sdp: String) -> bool;
    /// The call rings.
    fn ringing(&mut self, call: &str);
    /// The call is answered with `sdp`.
    fn answer(&mut self, call: &str, sdp: String);
    /// The call is declined for `reason`.
    fn decline(&mut self, call: &str, reason: String);
    /// The call is over for `reason`.
    fn hangup(&mut self, call: &str, reason: String);
    /// One of our candidates (`None`: gathering is complete).
    fn candidate(&mut self, call: &str, candidate: Option<IceCandidate>);
    /// The call is gone: drop what is kept for it.
    fn forget(&mut self, _call: &str) {}
}

/// Hands `signal` to `side`; false when the side could not place a call.
pub fn deliver(side: &mut dyn CallerSide, call: &str, signal: Signal) -> bool {
    match signal {
        Signal::Place { callee, meta, sdp } => return side.place(call, &callee, meta, sdp),
        Signal::Ringing => side.ringing(call),
        Signal::Answer(sdp) => side.answer(call, sdp),
        Signal::Decline(reason) => side.decline(call, reason),
        Signal::Hangup(reason) => side.hangup(call, reason),
        Signal::Candidate(candidate) => side.candidate(call, candidate),
    }
    true
}

/// Calls through our phonebook.
pub struct PhonebookSide {
    out: mpsc::UnboundedSender<ClientMessage>,
}

impl PhonebookSide {
    /// A side that sends through the phonebook client's queue.
    pub fn new(out: mpsc::UnboundedSender<ClientMessage>) -> Self {
        PhonebookSide { out }
    }

    /// Sends `msg` to the phonebook (also what is not about one call, like presence).
    pub fn send(&self, msg: ClientMessage) {
        if self.out.send(msg).is_err() {
            debug!("the phonebook client has stopped");
        }
    }

    /// What the phonebook client's `event` means for the device.
    pub fn input(event: ClientEvent) -> Option<Input> {
        let side = Side::Phonebook;
        match event {
            ClientEvent::Registered => Some(Input::Registered(side)),
            ClientEvent::Disconnected(why) => Some(Input::SideLost { side, why }),
            ClientEvent::Message(msg) => match msg {
                ServerMessage::IncomingCall {
                    call_id,
                    callee,
                    meta,
                    sdp,
                } => {
                    debug!(%call_id, %callee, "incoming call from the phonebook");
                    Some(Input::Offer {
                        call: call_id,
                        side,
                        meta,
                        sdp,
                    })
                }
                ServerMessage::Candidate { call_id, candidate } => {
                    candidate.map(|candidate| Input::RemoteCandidate {
                        call: call_id,
                        candidate,
                    })
                }
                ServerMessage::Hangup { call_id, reason } => Some(Input::RemoteHangup {
                    call: call_id,
                    reason,
                }),
                // The replies to the calls the device placed.
                ServerMessage::Ringing { call_id, sdp } => Some(Input::CalleeRinging {
                    call: call_id,
                    answer: sdp,
                }),
                ServerMessage::Accepted { call_id, sdp } => {
                    Some(Input::CalleeAccepted { call: call_id, sdp })
                }
                ServerMessage::Declined { call_id, reason } => Some(Input::CalleeDeclined {
                    call: call_id,
                    reason,
                }),
                ServerMessage::Callees { callees } => Some(Input::Directory(Directory::All(
                    callees.into_iter().map(|c| (c.name, c.presence)).collect(),
                ))),
                ServerMessage::CalleeUpdate { callee } => Some(Input::Directory(
                    Directory::Changed(callee.name, callee.presence),
                )),
                ServerMessage::CalleeRemoved { name } => {
                    Some(Input::Directory(Directory::Removed(name)))
                }
                ServerMessage::Error {
                    code,
                    message,
                    call_id,
                } => {
                    warn!(?code, message = %for_log(&message), "the phonebook reported an error");
                    call_id.map(|call| Input::RemoteHangup {
                        call,
                        reason: format!("phonebook: {message}"),
                    })
                }
                other => {
                    debug!(?other, "ignored");
                    None
                }
            },
        }
    }
}

impl CallerSide for PhonebookSide {
    fn place(&mut self, call: &str, callee: &str, meta: Value, sdp: String) -> bool {
        self.send(ClientMessage::Call {
            call_id: call.into(),
            callee: callee.into(),
            meta,
            sdp,
        });
        true
    }

    fn ringing(&mut self, call: &str) {
        self.send(ClientMessage::Ringing {
            call_id: call.into(),
            sdp: None,
        });
    }

    fn answer(&mut self, call: &str, sdp: String) {
        self.send(ClientMessage::Accept {
            call_id: call.into(),
            sdp,
        });
    }

    fn decline(&mut self, call: &str, reason: String) {
        self.send(ClientMessage::Decline {
            call_id: call.into(),
            reason,
        });
    }

    fn hangup(&mut self, call: &str, reason: String) {
        self.send(ClientMessage::Hangup {
            call_id: call.into(),
            reason,
        });
    }

    fn candidate(&mut self, call: &str, candidate: Option<IceCandidate>) {
        self.send(ClientMessage::Candidate {
            call_id: call.into(),
            candidate,
        });
    }
}

/// Calls from stock PeerJS clients through a PeerJS server.
pub struct PeerJsSide {
    out: mpsc::UnboundedSender<PeerJsCommand>,
    /// Per call: the caller's peer id and the media connection's id.
    addresses: HashMap<String, (String, String)>,
}

impl PeerJsSide {
    /// A side that sends through the PeerJS client's queue.
    pub fn new(out: mpsc::UnboundedSender<PeerJsCommand>) -> Self {
        PeerJsSide {
            out,
            addresses: HashMap::new(),
        }
    }

    /// What the PeerJS client's `event` means for the device (LEAVE ends every call of
    /// that peer, so it may be several inputs).
    pub fn inputs(&mut self, event: PeerJsEvent) -> Vec<Input> {
        let side = Side::PeerJs;
        match event {
            PeerJsEvent::Open => vec![Input::Registered(side)],
            PeerJsEvent::Disconnected(why) => vec![Input::SideLost { side, why }],
            PeerJsEvent::Offer {
                src,
                connection_id,
                sdp,
                metadata,
            } => {
                let call = peerjs_call_id(&connection_id);
                let meta = peerjs_meta(metadata, &src);
                self.addresses
                    .entry(call.clone())
                    .or_insert((src, connection_id));
                vec![Input::Offer {
                    call,
                    side,
                    meta,
                    sdp,
                }]
            }
            PeerJsEvent::Candidate {
                connection_id,
                candidate,
                ..
            } => vec![Input::RemoteCandidate {
                call: peerjs_call_id(&connection_id),
                candidate,
            }],
            PeerJsEvent::Leave { src } => {
                let mut gone: Vec<&String> = self
                    .addresses
                    .iter()
                    .filter(|(_, (peer, _))| *peer == src)
                    .map(|(call, _)| call)
                    .collect();
                gone.sort();
                gone.into_iter()
                    .map(|call| Input::RemoteHangup {
                        call: call.clone(),
                        reason: "caller left".into(),
                    })
                    .collect()
            }
        }
    }

    fn send(&self, command: PeerJsCommand) {
        if self.out.send(command).is_err() {
            debug!("the PeerJS client has stopped");
        }
    }
}

impl CallerSide for PeerJsSide {
    fn place(&mut self, call: &str, callee: &str, _meta: Value, _sdp: String) -> bool {
        // The bell rings through the phonebook; a stock PeerJS peer has no ringing.
        warn!(call, callee = %for_log(callee), "calls are placed through the phonebook only");
        false
    }

    fn ringing(&mut self, _call: &str) {
        // PeerJS has no ringing: its caller just waits for the answer.
    }

    fn answer(&mut self, call: &str, sdp: String) {
        if let Some((peer, connection_id)) = self.addresses.get(call) {
            self.send(PeerJsCommand::Answer {
                dst: peer.clone(),
                connection_id: connection_id.clone(),
                sdp,
            });
        }
    }

    fn decline(&mut self, call: &str, reason: String) {
        if let Some((peer, _)) = self.addresses.get(call) {
            // PeerJS has no decline; EXPIRE makes the stock client report
            // `peer-unavailable` instead of waiting forever.
            info!(call, peer = %for_log(peer), reason = %for_log(&reason), "declining a PeerJS call (sent as EXPIRE)");
            self.send(PeerJsCommand::Expire { dst: peer.clone() });
        }
    }

    fn hangup(&mut self, _call: &str, _reason: String) {
        // The caller learns of it from its connection closing (the core closes the peer),
        // which fires `close` on its MediaConnection.
    }

    fn candidate(&mut self, call: &str, candidate: Option<IceCandidate>) {
        // PeerJS never sends an end of candidates.
        if let (Some(candidate), Some((peer, connection_id))) =
            (candidate, self.addresses.get(call))
        {
            self.send(PeerJsCommand::Candidate {
                dst: peer.clone(),
                connection_id: connection_id.clone(),
                candidate,
            });
        }
    }

    fn forget(&mut self, call: &str) {
        self.addresses.remove(call);
    }
}

/// The device's id for a PeerJS media connection.
pub fn peerjs_call_id(connection_id: &str) -> String {
    format!("peerjs-{connection_id}")
}

/// A PeerJS caller's metadata as the core reads it: without `user` (a PeerJS caller could
/// claim any), named by its peer id when it gives no name.
fn peerjs_meta(metadata: Value, src: &str) -> Value {
    let mut meta = match metadata {
        Value::Object(mut map) => {
            map.remove("user");
            Value::Object(map)
        }
        _ => json!({}),
    };
    if super::core::caller_name(&meta) == "someone" {
        meta["name"] = Value::String(src.to_owned());
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signalling::protocol::ErrorCode;

    fn candidate() -> IceCandidate {
        serde_json::from_value(json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}))
            .unwrap()
    }

    #[test]
    fn phonebook_messages_become_inputs() {
        let offer = PhonebookSide::input(ClientEvent::Message(ServerMessage::IncomingCall {
            call_id: "c1".into(),
            callee: "bell".into(),
            meta: json!({"user": "ray"}),
            sdp: "v=0".into(),
        }));
        assert_eq!(
            offer,
            Some(Input::Offer {
                call: "c1".into(),
                side: Side::Phonebook,
                meta: json!({"user": "ray"}),
                sdp: "v=0".into()
            })
        );
        let end_of_candidates = ServerMessage::Candidate {
            call_id: "c1".into(),
            candidate: None,
        };
        assert_eq!(
            PhonebookSide::input(ClientEvent::Message(end_of_candidates)),
            None
        );
        let error = ServerMessage::Error {
            code: ErrorCode::UnknownCall,
            message: "no such call".into(),
            call_id: Some("c1".into()),
        };
        assert_eq!(
            PhonebookSide::input(ClientEvent::Message(error)),
            Some(Input::RemoteHangup {
                call: "c1".into(),
                reason: "phonebook: no such call".into()
            })
        );
        assert_eq!(
            PhonebookSide::input(ClientEvent::Disconnected("gone".into())),
            Some(Input::SideLost {
                side: Side::Phonebook,
                why: "gone".into()
            })
        );
    }

    #[test]
    fn a_phonebook_call_hears_every_message() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut side = PhonebookSide::new(tx);
        deliver(&mut side, "c1", Signal::Ringing);
        deliver(&mut side, "c1", Signal::Decline("Not now".into()));
        deliver(&mut side, "c1", Signal::Hangup("bye".into()));
        deliver(&mut side, "c1", Signal::Candidate(None));
        let placed = Signal::Place {
            callee: "ada".into(),
            meta: json!({"kind": "bell"}),
            sdp: "v=0".into(),
        };
        assert!(deliver(&mut side, "b-1", placed));
        let sent: Vec<&str> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| m.kind())
            .collect();
        assert_eq!(sent, ["ringing", "decline", "hangup", "candidate", "call"]);
    }

    fn offer(side: &mut PeerJsSide, src: &str, connection: &str, metadata: Value) -> Input {
        let mut inputs = side.inputs(PeerJsEvent::Offer {
            src: src.into(),
            connection_id: connection.into(),
            sdp: "v=0".into(),
            metadata,
        });
        assert_eq!(inputs.len(), 1);
        inputs.remove(0)
    }

    #[test]
    fn a_peerjs_caller_cannot_claim_a_user_and_is_named_by_its_id() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut side = PeerJsSide::new(tx);
        let Input::Offer { call, meta, .. } =
            offer(&mut side, "abc", "mc_1", json!({"user": "admin"}))
        else {
            panic!("an offer")
        };
        assert_eq!(call, "peerjs-mc_1");
        assert_eq!(meta, json!({"name": "abc"}));
        let Input::Offer { meta, .. } =
            offer(&mut side, "abc", "mc_2", json!({"callerName": "Ray"}))
        else {
            panic!("an offer")
        };
        assert_eq!(meta, json!({"callerName": "Ray"}));
        let Input::Offer { meta, .. } = offer(&mut side, "abc", "mc_3", json!("odd")) else {
            panic!("an offer")
        };
        assert_eq!(meta, json!({"name": "abc"}));
    }

    #[test]
    fn peerjs_declines_with_expire_and_says_no_ringing_nor_hangup() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut side = PeerJsSide::new(tx);
        offer(&mut side, "abc", "mc_1", json!({}));
        let call = "peerjs-mc_1";
        deliver(&mut side, call, Signal::Ringing);
        deliver(&mut side, call, Signal::Hangup("bye".into()));
        deliver(&mut side, call, Signal::Candidate(None));
        assert!(rx.try_recv().is_err(), "nothing to send for these");
        deliver(&mut side, call, Signal::Candidate(Some(candidate())));
        assert!(matches!(
            rx.try_recv(),
            Ok(PeerJsCommand::Candidate { dst, connection_id, .. }) if dst == "abc" && connection_id == "mc_1"
        ));
        deliver(&mut side, call, Signal::Answer("v=0 answer".into()));
        assert_eq!(
            rx.try_recv().unwrap(),
            PeerJsCommand::Answer {
                dst: "abc".into(),
                connection_id: "mc_1".into(),
                sdp: "v=0 answer".into()
            }
        );
        deliver(&mut side, call, Signal::Decline("busy".into()));
        assert_eq!(
            rx.try_recv().unwrap(),
            PeerJsCommand::Expire { dst: "abc".into() }
        );
        side.forget(call);
        deliver(&mut side, call, Signal::Decline("busy".into()));
        assert!(rx.try_recv().is_err(), "a forgotten call has no address");
        let placed = Signal::Place {
            callee: "ada".into(),
            meta: json!({}),
            sdp: "v=0".into(),
        };
        assert!(!deliver(&mut side, "b-1", placed), "PeerJS places no calls");
    }

    #[test]
    fn leave_ends_that_peers_calls_only() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut side = PeerJsSide::new(tx);
        offer(&mut side, "abc", "mc_1", json!({}));
        offer(&mut side, "abc", "mc_2", json!({}));
        offer(&mut side, "xyz", "mc_3", json!({}));
        let inputs = side.inputs(PeerJsEvent::Leave { src: "abc".into() });
        let ended: Vec<&str> = inputs
            .iter()
            .map(|i| match i {
                Input::RemoteHangup { call, reason } if reason == "caller left" => call.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ended, ["peerjs-mc_1", "peerjs-mc_2"]);
    }
}
