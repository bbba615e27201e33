//! The bell's policy on simulated time: whom a press rings, first answer wins, missed,
//! the door.

use std::time::{Duration, Instant};

use serde_json::json;

use super::core::{
    Action, BellConfig, Config, Directory, Doorbell, Input, Lights, MISSED_SHOW, PeerReport, Signal,
};
use crate::call::{CallState, Role};
use crate::control::{ControlError, Press};
use crate::signalling::events::{BellState, DeviceEvent, Side, SkipReason};
use crate::signalling::protocol::{IceCandidate, Presence};

fn config() -> Config {
    Config {
        name: "front-door".into(),
        peerjs: false,
        bell: BellConfig {
            ring: vec!["ray".into(), "ada".into(), "bob".into()],
            ring_timeout: Duration::from_secs(30),
            door_open: Duration::from_secs(3),
            door: true,
            meta: json!({"audio": true, "speaker": true}),
            call_prefix: "b".into(),
        },
        ..super::tests::config()
    }
}

struct Door {
    core: Doorbell,
    now: Instant,
}

impl Door {
    fn new() -> Self {
        Door::with(|_| {})
    }

    fn with(change: impl FnOnce(&mut Config)) -> Self {
        let mut config = config();
        change(&mut config);
        let now = Instant::now();
        let mut door = Door {
            core: Doorbell::new(config, now),
            now,
        };
        door.input(Input::Registered(Side::Phonebook));
        door
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        self.core.handle(input, self.now)
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.core.poll(self.now)
    }

    fn online(&mut self, callees: &[(&str, Presence)]) {
        let all = callees
            .iter()
            .map(|(name, presence)| (name.to_string(), *presence))
            .collect();
        self.input(Input::Directory(Directory::All(all)));
    }

    fn press(&mut self, press: Press) -> (Vec<Action>, Result<String, ControlError>) {
        let actions = self.input(Input::Press {
            press,
            request: Some(1),
        });
        let reply = actions
            .iter()
            .find_map(|a| match a {
                Action::Reply { reply, .. } => Some(reply.clone()),
                _ => None,
            })
            .expect("a press is replied to");
        (actions, reply)
    }

    /// Presses the bell and makes the offers it asks for; returns the calls placed, by
    /// callee, and everything that was done.
    fn ring(&mut self) -> (Vec<(String, String)>, Vec<Action>) {
        let (mut actions, reply) = self.press(Press::Bell);
        assert!(reply.is_ok(), "{reply:?}");
        let asked: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateOffer { call } => Some(call.clone()),
                _ => None,
            })
            .collect();
        let mut placed = Vec::new();
        for call in asked {
            let done = self.input(Input::OfferMade {
                call: call.clone(),
                sdp: format!("offer of {call}"),
            });
            for action in &done {
                if let Action::Signal {
                    call: c,
                    signal: Signal::Place { callee, meta, sdp },
                    side,
                } = action
                {
                    assert_eq!(*c, call);
                    assert_eq!(*side, Side::Phonebook);
                    assert_eq!(*sdp, format!("offer of {call}"));
                    assert_eq!(meta["kind"], "bell");
                    assert_eq!(meta["callerName"], "front-door");
                    assert_eq!(meta["audio"], true);
                    placed.push((callee.clone(), call.clone()));
                }
            }
            actions.extend(done);
        }
        (placed, actions)
    }

    /// A rung page rings and previews the camera: early answer, connected.
    fn previews(&mut self, call: &str) -> Vec<Action> {
        let mut actions = self.input(Input::CalleeRinging {
            call: call.into(),
            answer: Some(format!("answer of {call}")),
        });
        actions.extend(self.peer(call, PeerReport::Connected));
        actions.extend(self.peer(call, PeerReport::DataOpen));
        actions
    }

    fn answers(&mut self, call: &str) -> Vec<Action> {
        self.input(Input::CalleeAccepted {
            call: call.into(),
            sdp: format!("answer of {call}"),
        })
    }

    fn peer(&mut self, call: &str, report: PeerReport) -> Vec<Action> {
        self.input(Input::Peer {
            call: call.into(),
            report,
        })
    }

    fn state(&self, call: &str) -> Option<CallState> {
        self.core.calls().find(|c| c.id == call).map(|c| c.state)
    }

    fn bell_state(&self) -> BellState {
        self.core.bell().expect("a bell").state
    }
}

fn everyone_free() -> [(&'static str, Presence); 4] {
    [
        ("ray", Presence::Available),
        ("ada", Presence::Available),
        ("bob", Presence::Available),
        ("front-door", Presence::Available),
    ]
}

fn hangups(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal {
                call,
                signal: Signal::Hangup(reason),
                ..
            } => Some((call.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn published(actions: &[Action]) -> Vec<BellState> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PublishBell(status) => Some(status.state),
            _ => None,
        })
        .collect()
}

fn lights(actions: &[Action]) -> Option<Lights> {
    actions.iter().rev().find_map(|a| match a {
        Action::Lights(l) => Some(*l),
        _ => None,
    })
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_press_rings_the_online_names_only_and_says_whom_it_skipped() {
    let mut door = Door::new();
    door.online(&[
        ("ray", Presence::Available),
        ("ADA", Presence::Available),
        ("carol", Presence::Available),
    ]);
    let (placed, actions) = door.ring();
    // bob is offline; carol is online but not in bell.ring; names ignore case.
    assert_eq!(
        placed,
        [
            ("ray".to_string(), "b-1".to_string()),
            ("ada".to_string(), "b-2".to_string())
        ]
    );
    assert_eq!(published(&actions), [BellState::Ringing]);
    let meta = actions.iter().find_map(|a| match a {
        Action::Signal {
            signal: Signal::Place { meta, .. },
            ..
        } => Some(meta),
        _ => None,
    });
    assert_eq!(
        meta.unwrap()["door"],
        true,
        "the pages hear of the door output"
    );
    let bell = door.core.bell().unwrap();
    assert_eq!(bell.ringing, ["ray", "ada"]);
    assert_eq!(bell.skipped.len(), 1);
    assert_eq!(
        (bell.skipped[0].name.as_str(), bell.skipped[0].why),
        ("bob", SkipReason::Offline)
    );
    let calls: Vec<_> = door.core.calls().map(|c| (c.id, c.party, c.role)).collect();
    assert_eq!(
        calls,
        [("b-1", "ray", Role::Caller), ("b-2", "ada", Role::Caller)]
    );
    assert_eq!(door.state("b-1"), Some(CallState::Connecting));
    // The device calls out: the slow blink, not an incoming call's.
    let shown = lights(&actions).unwrap();
    assert!(shown.ring_led && shown.buzzer && !shown.on_air_led);
    let later = door.advance(Duration::from_millis(600));
    assert!(
        lights(&later).is_none_or(|l| l.ring_led),
        "still on at 0.6 s"
    );
}

#[test]
fn do_not_disturb_and_busy_are_skipped() {
    let mut door = Door::new();
    door.online(&[
        ("ray", Presence::Dnd),
        ("ada", Presence::InCall),
        ("bob", Presence::Available),
    ]);
    let (_, reply) = door.press(Press::Bell);
    assert_eq!(
        reply,
        Ok("ringing bob (not ray in do not disturb, ada busy)".into())
    );
    let skipped: Vec<_> = door
        .core
        .bell()
        .unwrap()
        .skipped
        .iter()
        .map(|s| s.why)
        .collect();
    assert_eq!(skipped, [SkipReason::Dnd, SkipReason::Busy]);
}

#[test]
fn nobody_online_is_missed_at_once_and_shown_for_a_while() {
    let mut door = Door::new();
    door.online(&[("ray", Presence::Dnd)]);
    let (actions, reply) = door.press(Press::Bell);
    assert_eq!(
        reply,
        Ok("nobody to ring (ray in do not disturb, ada offline, bob offline): missed".into())
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CreateOffer { .. }))
    );
    assert_eq!(published(&actions), [BellState::Missed]);
    assert_eq!(door.bell_state(), BellState::Missed);
    assert!(lights(&actions).unwrap().ring_led, "the missed flashes");
    assert!(!lights(&actions).unwrap().buzzer);
    let dark = door.advance(MISSED_SHOW);
    assert_eq!(lights(&dark), Some(Lights::default()));
    assert_eq!(door.core.next_deadline(), None);
    // Still missed in the status until the next press.
    assert_eq!(door.bell_state(), BellState::Missed);
}

#[test]
fn the_first_answer_wins_and_the_others_hear_who_answered() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    let [ray, ada, bob] = [&placed[0].1, &placed[1].1, &placed[2].1];
    for call in [ray, ada, bob] {
        let actions = door.previews(call);
        // The early answer goes to the peer; the page hears how the bell stands.
        assert!(actions.contains(&Action::ApplyAnswer {
            call: call.clone(),
            sdp: format!("answer of {call}")
        }));
        assert!(actions.iter().any(|a| matches!(a,
            Action::Event { to, event: DeviceEvent::Bell(b) } if to == std::slice::from_ref(call) && b.state == BellState::Ringing)));
        assert_eq!(door.state(call), Some(CallState::Ringing));
    }
    // Ringing pages with a picture are not viewers: the on-air LED stays dark.
    assert_eq!(door.core.watching(), 0);

    let actions = door.answers(ada);
    // The answer was already applied; it is not applied twice.
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::ApplyAnswer { .. }))
    );
    assert!(actions.contains(&Action::OpenTwoWay { call: ada.clone() }));
    assert!(actions.contains(&Action::Event {
        to: vec![ada.clone()],
        event: DeviceEvent::Accepted
    }));
    assert_eq!(
        hangups(&actions),
        [
            (ray.clone(), "answered by ada".into()),
            (bob.clone(), "answered by ada".into())
        ]
    );
    assert_eq!(published(&actions), [BellState::Answered]);
    assert_eq!(door.core.bell().unwrap().by.as_deref(), Some("ada"));
    assert_eq!(door.state(ada), Some(CallState::Established));
    assert_eq!(door.core.calls().count(), 1);
    let shown = lights(&actions).unwrap();
    assert!(shown.on_air_led && !shown.ring_led && !shown.buzzer);

    // ada's page says it twice: her call goes on.
    assert!(door.answers(ada).is_empty());
    assert_eq!(door.state(ada), Some(CallState::Established));

    // A late answer from a page that was cancelled: its call is gone.
    let late = door.answers(ray);
    assert!(late.is_empty() || !late.iter().any(|a| matches!(a, Action::OpenTwoWay { .. })));

    // A press during the conversation rings nobody new.
    let (actions, reply) = door.press(Press::Bell);
    assert_eq!(
        reply,
        Err(ControlError::Bell(
            "ada is talking with the door: nobody new is rung".into()
        ))
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CreateOffer { .. }))
    );

    // ada hangs up: the conversation is over, the bell stays "answered by ada", and the
    // next press rings again.
    door.input(Input::RemoteHangup {
        call: ada.clone(),
        reason: "callee hung up".into(),
    });
    assert_eq!(door.bell_state(), BellState::Answered);
    let (_, reply) = door.press(Press::Bell);
    assert!(reply.is_ok(), "{reply:?}");
}

#[test]
fn when_everyone_declines_or_goes_away_the_press_is_missed() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    door.previews(&placed[0].1);
    let actions = door.input(Input::CalleeDeclined {
        call: placed[0].1.clone(),
        reason: "not home".into(),
    });
    // One decline does not stop the others.
    assert!(hangups(&actions).is_empty());
    assert_eq!(door.bell_state(), BellState::Ringing);
    assert_eq!(door.core.bell().unwrap().ringing, ["ada", "bob"]);
    // bob closes his tab while it rings.
    door.input(Input::RemoteHangup {
        call: placed[2].1.clone(),
        reason: "callee disconnected".into(),
    });
    assert_eq!(door.bell_state(), BellState::Ringing);
    let actions = door.input(Input::CalleeDeclined {
        call: placed[1].1.clone(),
        reason: "busy".into(),
    });
    assert_eq!(published(&actions), [BellState::Missed]);
    let bell = door.core.bell().unwrap();
    assert_eq!(bell.state, BellState::Missed);
    let declined: Vec<_> = bell.declined.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(declined, ["ray", "ada"]);
    assert_eq!(door.core.calls().count(), 0);
}

#[test]
fn the_ring_timeout_hangs_up_every_ringing_page_with_missed() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    for (_, call) in &placed {
        door.input(Input::CalleeRinging {
            call: call.clone(),
            answer: None,
        });
    }
    assert_eq!(door.core.next_deadline().map(|d| d > door.now), Some(true));
    assert!(hangups(&door.advance(secs(29))).is_empty());
    let actions = door.advance(secs(1));
    let reasons: Vec<_> = hangups(&actions).into_iter().map(|(_, r)| r).collect();
    assert_eq!(reasons, ["missed", "missed", "missed"]);
    assert_eq!(door.bell_state(), BellState::Missed);
    assert_eq!(published(&actions), [BellState::Missed]);
    // An answer racing the timeout finds nothing to answer.
    assert!(door.answers(&placed[0].1).is_empty());
}

#[test]
fn a_second_press_while_it_rings_is_ignored_and_a_hangup_at_the_device_cancels() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    let (actions, reply) = door.press(Press::Bell);
    assert_eq!(
        reply,
        Err(ControlError::Bell("the bell is already ringing".into()))
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CreateOffer { .. }))
    );
    let (actions, reply) = door.press(Press::Hangup(None));
    assert_eq!(reply, Ok("ended 3 call(s)".into()));
    assert_eq!(hangups(&actions).len(), 3);
    assert!(
        hangups(&actions)
            .iter()
            .all(|(_, r)| r == "hung up at the device")
    );
    assert_eq!(door.bell_state(), BellState::Cancelled);
    assert_eq!(published(&actions), [BellState::Cancelled]);
    assert_eq!(lights(&actions), Some(Lights::default()));
    assert!(door.state(&placed[0].1).is_none());
}

#[test]
fn the_door_opens_only_for_whoever_answered_and_only_during_that_call() {
    let mut door = Door::new();
    door.online(&everyone_free());
    // An ordinary viewer of the camera may not open the door.
    door.input(Input::Offer {
        call: "c1".into(),
        side: Side::Phonebook,
        meta: json!({"callerName": "eve"}),
        sdp: "offer".into(),
    });
    door.input(Input::Press {
        press: Press::Accept,
        request: None,
    });
    door.input(Input::AnswerMade {
        call: "c1".into(),
        sdp: "answer".into(),
    });
    door.peer("c1", PeerReport::Connected);
    door.peer("c1", PeerReport::DataOpen);
    let open = || PeerReport::Text(r#"{"request":"open_door"}"#.into());
    let refused = |actions: &[Action], call: &str| {
        actions.iter().any(|a| matches!(a,
            Action::Event { to, event: DeviceEvent::Door { open: false, reason: Some(_), .. } } if to == &[call.to_string()]))
    };
    let actions = door.peer("c1", open());
    assert!(refused(&actions, "c1"), "{actions:?}");
    assert!(!door.core.lights().door);

    let (placed, _) = door.ring();
    let [ray, ada] = [&placed[0].1, &placed[1].1];
    door.previews(ray);
    door.previews(ada);
    // A page that still rings may not either.
    assert!(refused(&door.peer(ray, open()), ray));
    door.answers(ada);
    let actions = door.peer(ada, open());
    assert!(lights(&actions).unwrap().door);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Event { event: DeviceEvent::Door { open: true, by: Some(by), secs: Some(3), .. }, .. } if by == "ada")));
    // Plain text stays text.
    let said = door.peer(ada, PeerReport::Text("open_door please".into()));
    assert!(said.contains(&Action::Say("ada says: open_door please".into())));
    assert!(lights(&door.advance(Duration::from_millis(2999))).is_none());
    assert_eq!(
        lights(&door.advance(Duration::from_millis(1))).map(|l| l.door),
        Some(false)
    );
    // After the call, not even ada.
    door.input(Input::RemoteHangup {
        call: ada.clone(),
        reason: "callee hung up".into(),
    });
    assert!(door.peer(ada, open()).is_empty(), "the call is gone");
    // A board without a door output says so.
    let mut plain = Door::with(|c| c.bell.door = false);
    plain.online(&everyone_free());
    let (placed, _) = plain.ring();
    let call = &placed[0].1;
    plain.previews(call);
    plain.answers(call);
    let actions = plain.peer(call, open());
    assert!(actions.iter().any(|a| matches!(a,
        Action::Event { event: DeviceEvent::Door { reason: Some(r), .. }, .. } if r.contains("no door output"))));
}

#[test]
fn the_callees_candidates_wait_for_its_answer() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    let call = &placed[0].1;
    let candidate = |n: u16| IceCandidate {
        candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    };
    let early = door.input(Input::RemoteCandidate {
        call: call.clone(),
        candidate: candidate(1),
    });
    assert!(early.is_empty(), "no answer yet: {early:?}");
    let actions = door.input(Input::CalleeRinging {
        call: call.clone(),
        answer: Some("answer".into()),
    });
    let apply = actions
        .iter()
        .position(|a| matches!(a, Action::ApplyAnswer { .. }))
        .unwrap();
    let add = actions
        .iter()
        .position(|a| matches!(a, Action::AddCandidates { candidates, .. } if candidates == &[candidate(1)]))
        .unwrap();
    assert!(apply < add, "the answer first: {actions:?}");
    let later = door.input(Input::RemoteCandidate {
        call: call.clone(),
        candidate: candidate(2),
    });
    assert_eq!(
        later,
        [Action::AddCandidates {
            call: call.clone(),
            candidates: vec![candidate(2)]
        }]
    );
    // Our own candidates go to the callee.
    let ours = door.peer(call, PeerReport::Candidate(Some(candidate(3))));
    assert!(matches!(
        &ours[..],
        [Action::Signal {
            signal: Signal::Candidate(Some(_)),
            ..
        }]
    ));
}

#[test]
fn a_page_that_answers_without_a_preview_is_connected_after_its_answer() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    let call = &placed[1].1;
    door.input(Input::CalleeRinging {
        call: call.clone(),
        answer: None,
    });
    let actions = door.answers(call);
    assert!(actions.contains(&Action::ApplyAnswer {
        call: call.clone(),
        sdp: format!("answer of {call}")
    }));
    assert_eq!(door.state(call), Some(CallState::Accepted));
    door.peer(call, PeerReport::Connected);
    assert_eq!(door.state(call), Some(CallState::Established));
    assert_eq!(door.core.watching(), 1);
}

#[test]
fn failures_while_placing_end_those_calls_and_may_miss_the_press() {
    let mut door = Door::new();
    door.online(&[("ray", Presence::Available)]);
    let (actions, _) = door.press(Press::Bell);
    let call = actions
        .iter()
        .find_map(|a| match a {
            Action::CreateOffer { call } => Some(call.clone()),
            _ => None,
        })
        .unwrap();
    let actions = door.input(Input::OfferFailed {
        call: call.clone(),
        reason: "no camera".into(),
    });
    assert!(actions.contains(&Action::ClosePeer { call: call.clone() }));
    assert_eq!(door.bell_state(), BellState::Missed);
    // An offer made for a call that is gone is closed, not placed.
    let late = door.input(Input::OfferMade {
        call,
        sdp: "offer".into(),
    });
    assert!(matches!(&late[..], [Action::ClosePeer { .. }]));

    // A phonebook refusal (unknown callee, forbidden) ends the call like a hang-up.
    let (placed, _) = door.ring();
    door.input(Input::RemoteHangup {
        call: placed[0].1.clone(),
        reason: "phonebook: this device may not call ray".into(),
    });
    assert_eq!(door.bell_state(), BellState::Missed);
}

#[test]
fn losing_the_phonebook_mid_ring_misses_the_press_and_forgets_who_was_online() {
    let mut door = Door::new();
    door.online(&everyone_free());
    door.ring();
    door.input(Input::SideLost {
        side: Side::Phonebook,
        why: "gone".into(),
    });
    assert_eq!(door.bell_state(), BellState::Missed);
    assert_eq!(door.core.calls().count(), 0);
    let (_, reply) = door.press(Press::Bell);
    assert_eq!(
        reply,
        Ok("nobody to ring (ray offline, ada offline, bob offline): missed".into())
    );
}

#[test]
fn the_bell_ringing_out_makes_no_incoming_caller_busy_nor_takes_the_accept_button() {
    let mut door = Door::with(|c| c.rules.max_viewers = 1);
    door.online(&everyone_free());
    door.ring();
    door.input(Input::Offer {
        call: "c1".into(),
        side: Side::Phonebook,
        meta: json!({"callerName": "eve"}),
        sdp: "offer".into(),
    });
    assert_eq!(door.state("c1"), Some(CallState::Ringing));
    let actions = door.input(Input::Press {
        press: Press::Accept,
        request: Some(1),
    });
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::CreateAnswer { call, .. } if call == "c1"))
    );
    // An incoming call outranks the bell on the ring LED: someone must press accept.
    assert_eq!(door.core.bell().unwrap().state, BellState::Ringing);
}

#[test]
fn a_device_without_a_bell_says_so_and_publishes_nothing() {
    let mut door = Door::with(|c| c.bell.ring.clear());
    let (actions, reply) = door.press(Press::Bell);
    assert!(matches!(reply, Err(ControlError::Bell(why)) if why.contains("no bell")));
    assert!(published(&actions).is_empty());
    assert!(door.core.bell().is_none());
}

#[test]
fn shutting_down_mid_ring_cancels_and_darkens_the_door() {
    let mut door = Door::new();
    door.online(&everyone_free());
    let (placed, _) = door.ring();
    let call = &placed[0].1;
    door.previews(call);
    door.answers(call);
    door.peer(call, PeerReport::Text(r#"{"request": "open_door"}"#.into()));
    assert!(door.core.lights().door);
    let actions = door.input(Input::Shutdown);
    assert_eq!(lights(&actions), Some(Lights::default()));
    assert_eq!(
        hangups(&actions),
        [(call.clone(), "camera shutting down".into())]
    );
}
