//! Call routing: who rings whom, what each end may send the other, and the presence
//! that follows from the calls.

use serde_json::Value;
use tracing::debug;

use super::{
    ConnId, MAX_CANDIDATE_BYTES, MAX_SDP_BYTES, Output, Phonebook, error, is_error, refusal,
};
use crate::signalling::access::Identity;
use crate::signalling::protocol::{
    ClientMessage, ErrorCode, IceCandidate, Presence, ServerMessage, name_key, validate_call_id,
};
use crate::signalling::sanitize::{caller_for_log, for_log};

#[derive(Debug)]
pub(super) struct Route {
    caller: ConnId,
    callee_conn: ConnId,
    /// The [`name_key`] of the name called.
    callee: String,
    accepted: bool,
    /// Candidates relayed so far from each end.
    caller_candidates: usize,
    callee_candidates: usize,
}

impl Phonebook {
    /// The connection a call message from `conn` would be relayed to, for the messages a
    /// sender may repeat (`call`, `ringing`, `candidate`): the socket layer checks the
    /// sender's room there before the message is handled.
    pub fn relay_target(&self, conn: ConnId, msg: &ClientMessage) -> Option<ConnId> {
        match msg {
            ClientMessage::Call { callee, .. } => {
                self.callees.get(&name_key(callee)).map(|r| r.owner)
            }
            ClientMessage::Ringing { call_id, .. } | ClientMessage::Candidate { call_id, .. } => {
                let route = self.calls.get(call_id)?;
                if route.caller == conn {
                    Some(route.callee_conn)
                } else if route.callee_conn == conn {
                    Some(route.caller)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Whether `msg` is `conn` answering a call made to it (`ringing`, `accept`,
    /// `decline`, `candidate`, `hangup`), or a bell's `candidate` and `hangup` on a call it
    /// placed: a camera sends those for every caller and for every phone its bell rings,
    /// so they draw on a larger allowance (a page's own calls do not).
    pub fn answers_call(&self, conn: ConnId, msg: &ClientMessage) -> bool {
        let (call_id, either_end) = match msg {
            ClientMessage::Ringing { call_id, .. }
            | ClientMessage::Accept { call_id, .. }
            | ClientMessage::Decline { call_id, .. } => (call_id, false),
            ClientMessage::Candidate { call_id, .. } | ClientMessage::Hangup { call_id, .. } => {
                (call_id, true)
            }
            _ => return false,
        };
        self.calls.get(call_id).is_some_and(|route| {
            route.callee_conn == conn
                || (either_end && route.caller == conn && self.bell_rings(conn) > 0)
        })
    }

    /// How many names the bell of a name `conn` holds rings (`access.rings`), if any.
    fn bell_rings(&self, conn: ConnId) -> usize {
        self.connections
            .get(&conn)
            .into_iter()
            .flat_map(|c| &c.names)
            .filter_map(|key| self.callees.get(key))
            .map(|r| self.access.rings_of(&r.name))
            .max()
            .unwrap_or(0)
    }

    /// The call messages of a greeted connection.
    pub(super) fn route(&mut self, conn: ConnId, msg: ClientMessage) -> Vec<Output> {
        match msg {
            ClientMessage::Call {
                call_id,
                callee,
                meta,
                sdp,
            } => self.call(conn, call_id, callee, meta, sdp),
            ClientMessage::Ringing {
                call_id,
                sdp: Some(sdp),
            } if sdp.len() > MAX_SDP_BYTES => vec![sdp_too_large(conn, &call_id, sdp.len())],
            ClientMessage::Ringing { call_id, sdp } => {
                self.relay_from_callee(conn, &call_id, |_| ServerMessage::Ringing {
                    call_id: call_id.clone(),
                    sdp,
                })
            }
            ClientMessage::Accept { call_id, sdp } if sdp.len() > MAX_SDP_BYTES => {
                vec![sdp_too_large(conn, &call_id, sdp.len())]
            }
            ClientMessage::Accept { call_id, sdp } => self.accept(conn, call_id, sdp),
            ClientMessage::Decline { call_id, reason } => {
                let mut out = self.relay_from_callee(conn, &call_id, |_| ServerMessage::Declined {
                    call_id: call_id.clone(),
                    reason,
                });
                if !is_error(&out) {
                    out.extend(self.end_call(&call_id));
                }
                out
            }
            ClientMessage::Candidate { call_id, candidate } => {
                self.candidate(conn, call_id, candidate)
            }
            ClientMessage::Hangup { call_id, reason } => {
                let mut out = self.relay_to_other_end(
                    conn,
                    &call_id,
                    ServerMessage::Hangup {
                        call_id: call_id.clone(),
                        reason,
                    },
                );
                if !is_error(&out) {
                    out.extend(self.end_call(&call_id));
                }
                out
            }
            other => vec![error(
                conn,
                ErrorCode::BadMessage,
                format!("{} is not a call message", other.kind()),
                None,
            )],
        }
    }

    /// Ends every call `conn` is part of, telling the other ends.
    pub(super) fn end_calls_of(&mut self, conn: ConnId) -> Vec<Output> {
        let mut ended: Vec<(String, ConnId, &'static str)> = self
            .calls
            .iter()
            .filter_map(|(id, route)| {
                if route.caller == conn {
                    Some((id.clone(), route.callee_conn, "caller disconnected"))
                } else if route.callee_conn == conn {
                    Some((id.clone(), route.caller, "callee disconnected"))
                } else {
                    None
                }
            })
            .collect();
        ended.sort();
        let mut out = Vec::new();
        for (call_id, other, reason) in ended {
            // A connection that called one of its own names is both ends: nobody is left.
            if other != conn {
                out.push(Output::Send(
                    other,
                    ServerMessage::Hangup {
                        call_id: call_id.clone(),
                        reason: reason.into(),
                    },
                ));
            }
            out.extend(self.end_call(&call_id));
        }
        out
    }

    fn call(
        &mut self,
        conn: ConnId,
        call_id: String,
        callee: String,
        meta: Value,
        sdp: String,
    ) -> Vec<Output> {
        if let Err(why) = validate_call_id(&call_id) {
            return vec![error(conn, ErrorCode::BadMessage, why, None)];
        }
        if !meta.is_object() {
            return vec![error(
                conn,
                ErrorCode::BadMessage,
                "meta must be a JSON object",
                Some(&call_id),
            )];
        }
        if self.calls.contains_key(&call_id) {
            return vec![error(
                conn,
                ErrorCode::DuplicateCall,
                format!("a call with id {call_id:?} already exists"),
                Some(&call_id),
            )];
        }
        if sdp.len() > MAX_SDP_BYTES {
            return vec![sdp_too_large(conn, &call_id, sdp.len())];
        }
        let identity = self
            .connections
            .get(&conn)
            .map(|c| c.identity.clone())
            .unwrap_or(Identity::Anonymous);
        if let Err(refused) = self.access.may_call(&identity, &callee) {
            return vec![refusal(conn, refused, Some(&call_id))];
        }
        let pending = self
            .calls
            .values()
            .filter(|r| r.caller == conn && !r.accepted)
            .count();
        // A bell rings its whole household at once.
        let allowed = self.limits.pending_calls.max(self.bell_rings(conn));
        if pending >= allowed {
            return vec![error(
                conn,
                ErrorCode::TooManyCalls,
                format!(
                    "{pending} calls of this connection are still unanswered (the limit is {allowed})"
                ),
                Some(&call_id),
            )];
        }
        // The callee learns who calls from the phonebook, not from what the caller claims:
        // the verified user, and the name the calling connection holds (a device ringing
        // its household: no page can pose as the front door).
        let device = self.connections.get(&conn).and_then(|c| {
            c.names
                .iter()
                .find_map(|key| self.callees.get(key).map(|r| r.name.clone()))
        });
        let mut meta = meta;
        if let Some(fields) = meta.as_object_mut() {
            match identity.user() {
                Some(user) => fields.insert("user".into(), Value::String(user.into())),
                None => fields.remove("user"),
            };
            match device {
                Some(name) => fields.insert("device".into(), Value::String(name)),
                None => fields.remove("device"),
            };
        }
        let key = name_key(&callee);
        let Some(registration) = self.callees.get(&key) else {
            return vec![error(
                conn,
                ErrorCode::UnknownCallee,
                format!("no callee named {callee:?} is registered"),
                Some(&call_id),
            )];
        };
        let callee_conn = registration.owner;
        let callee = registration.name.clone();
        debug!(conn, call = %call_id, callee = %callee, caller = %caller_for_log(&meta), "ringing");
        self.calls.insert(
            call_id.clone(),
            Route {
                caller: conn,
                callee_conn,
                callee: key.clone(),
                accepted: false,
                caller_candidates: 0,
                callee_candidates: 0,
            },
        );
        let mut out = vec![Output::Send(
            callee_conn,
            ServerMessage::IncomingCall {
                call_id,
                callee,
                meta,
                sdp,
            },
        )];
        out.extend(self.push_callee(&key));
        out
    }

    fn accept(&mut self, conn: ConnId, call_id: String, sdp: String) -> Vec<Output> {
        let mut out = self.relay_from_callee(conn, &call_id, |_| ServerMessage::Accepted {
            call_id: call_id.clone(),
            sdp,
        });
        if is_error(&out) {
            return out;
        }
        if let Some(route) = self.calls.get_mut(&call_id) {
            route.accepted = true;
            let key = route.callee.clone();
            out.extend(self.push_callee(&key));
        }
        out
    }

    fn candidate(
        &mut self,
        conn: ConnId,
        call_id: String,
        candidate: Option<IceCandidate>,
    ) -> Vec<Output> {
        if let Some(candidate) = &candidate
            && (candidate.candidate.len() > MAX_CANDIDATE_BYTES
                || candidate.sdp_mid.as_ref().is_some_and(|m| m.len() > 64)
                || candidate
                    .username_fragment
                    .as_ref()
                    .is_some_and(|u| u.len() > 256))
        {
            return vec![error(
                conn,
                ErrorCode::TooLarge,
                format!("candidates are limited to {MAX_CANDIDATE_BYTES} bytes"),
                Some(&call_id),
            )];
        }
        let limit = self.limits.candidates_per_call;
        let Some(route) = self.calls.get_mut(&call_id) else {
            return vec![unknown_call(conn, &call_id)];
        };
        let (sent, other) = if route.caller == conn {
            (&mut route.caller_candidates, route.callee_conn)
        } else if route.callee_conn == conn {
            (&mut route.callee_candidates, route.caller)
        } else {
            return vec![unknown_call(conn, &call_id)];
        };
        if *sent >= limit {
            debug!(conn, call = %for_log(&call_id), "candidate over the limit refused");
            return vec![error(
                conn,
                ErrorCode::TooManyCandidates,
                format!("a call takes at most {limit} candidates from each end"),
                Some(&call_id),
            )];
        }
        *sent += 1;
        vec![Output::Send(
            other,
            ServerMessage::Candidate { call_id, candidate },
        )]
    }

    /// Relays a message that only the callee of `call_id` may send.
    fn relay_from_callee(
        &self,
        conn: ConnId,
        call_id: &str,
        build: impl FnOnce(&Route) -> ServerMessage,
    ) -> Vec<Output> {
        match self.calls.get(call_id) {
            Some(route) if route.callee_conn == conn => {
                vec![Output::Send(route.caller, build(route))]
            }
            _ => vec![unknown_call(conn, call_id)],
        }
    }

    /// Relays a message that either end of `call_id` may send to the other.
    fn relay_to_other_end(&self, conn: ConnId, call_id: &str, msg: ServerMessage) -> Vec<Output> {
        match self.calls.get(call_id) {
            Some(route) if route.caller == conn => vec![Output::Send(route.callee_conn, msg)],
            Some(route) if route.callee_conn == conn => vec![Output::Send(route.caller, msg)],
            _ => vec![unknown_call(conn, call_id)],
        }
    }

    fn end_call(&mut self, call_id: &str) -> Vec<Output> {
        match self.calls.remove(call_id) {
            Some(route)
                if self
                    .callees
                    .get(&route.callee)
                    .is_some_and(|r| r.owner == route.callee_conn) =>
            {
                self.push_callee(&route.callee)
            }
            _ => Vec::new(),
        }
    }

    /// The presence of the callee `key`, from its do-not-disturb and its calls.
    pub(super) fn presence(&self, key: &str) -> Presence {
        let Some(registration) = self.callees.get(key) else {
            return Presence::Available;
        };
        if registration.dnd {
            return Presence::Dnd;
        }
        let owner = registration.owner;
        let mut ringing = false;
        // Calls still held by a connection that gave the name up are not the new owner's.
        for route in self
            .calls
            .values()
            .filter(|r| r.callee == key && r.callee_conn == owner)
        {
            if route.accepted {
                return Presence::InCall;
            }
            ringing = true;
        }
        if ringing {
            Presence::Ringing
        } else {
            Presence::Available
        }
    }
}

fn sdp_too_large(conn: ConnId, call_id: &str, len: usize) -> Output {
    error(
        conn,
        ErrorCode::TooLarge,
        format!("an SDP of {len} bytes is over the limit of {MAX_SDP_BYTES}"),
        Some(call_id),
    )
}

fn unknown_call(conn: ConnId, call_id: &str) -> Output {
    error(
        conn,
        ErrorCode::UnknownCall,
        format!("no call {call_id:?} involves this connection"),
        Some(call_id),
    )
}
