//! The doorbell's policy on simulated time: no sockets, GStreamer or binary.

use std::time::{Duration, Instant};

use serde_json::json;

use super::core::{
    Action, BellConfig, Config, Doorbell, FLUSH_LIMIT, Input, Lights, MAX_EARLY_CANDIDATES, Notify,
    PeerReport, SHUTTING_DOWN, Signal,
};
use crate::buttons::Button;
use crate::call::{AnswerRules, BUSY, CONNECT_FAILED, CONNECT_TIMEOUT, CallState, NO_ANSWER};
use crate::control::ControlError;
use crate::control::Press;
use crate::signalling::events::{DeviceEvent, Side};
use crate::signalling::protocol::{IceCandidate, Presence};

/// The doorbell's settings in these tests; the bell's and the shell's tests start from it.
pub(super) fn config() -> Config {
    Config {
        name: "bell".into(),
        rules: AnswerRules {
            auto: false,
            allow: vec!["Grandma".into()],
            max_viewers: 4,
            dnd_reason: "Do not disturb".into(),
        },
        ring_timeout: Duration::from_secs(30),
        decline_reason: "Not now".into(),
        peerjs: true,
        bell: BellConfig::default(),
    }
}

/// The core with a simulated clock.
struct Bell {
    core: Doorbell,
    now: Instant,
}

impl Bell {
    fn new() -> Self {
        Bell::with(|_| {})
    }

    fn with(change: impl FnOnce(&mut Config)) -> Self {
        let mut config = config();
        change(&mut config);
        let now = Instant::now();
        Bell {
            core: Doorbell::new(config, now),
            now,
        }
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.core.poll(self.now)
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        self.core.handle(input, self.now)
    }

    fn offer_via(&mut self, side: Side, call: &str, caller: &str) -> Vec<Action> {
        self.input(Input::Offer {
            call: call.into(),
            side,
            meta: json!({"callerName": caller}),
            sdp: format!("offer of {call}"),
        })
    }

    fn offer(&mut self, call: &str, caller: &str) -> Vec<Action> {
        self.offer_via(Side::Phonebook, call, caller)
    }

    fn press(&mut self, press: Press) -> Vec<Action> {
        self.input(Input::Press {
            press,
            request: Some(7),
        })
    }

    fn peer(&mut self, call: &str, report: PeerReport) -> Vec<Action> {
        self.input(Input::Peer {
            call: call.into(),
            report,
        })
    }

    fn answered(&mut self, call: &str) -> Vec<Action> {
        self.input(Input::AnswerMade {
            call: call.into(),
            sdp: format!("answer of {call}"),
        })
    }

    /// Accepts the oldest ringing call and brings it up to a watching viewer with its
    /// data channel open.
    fn accept_and_watch(&mut self, call: &str) -> Vec<Action> {
        let mut actions = self.press(Press::Accept);
        assert!(
            actions.contains(&Action::CreateAnswer {
                call: call.into(),
                offer: format!("offer of {call}"),
            }),
            "{actions:?}"
        );
        actions.extend(self.answered(call));
        actions.extend(self.peer(call, PeerReport::Connected));
        actions.extend(self.peer(call, PeerReport::DataOpen));
        actions
    }

    fn state(&self, call: &str) -> Option<CallState> {
        self.core.calls().find(|c| c.id == call).map(|c| c.state)
    }
}

/// What the calls' sides were told, in order.
fn told(actions: &[Action], call: &str) -> Vec<Signal> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal {
                call: c, signal, ..
            } if c == call => Some(signal.clone()),
            _ => None,
        })
        .collect()
}

fn reply(actions: &[Action]) -> Result<String, ControlError> {
    let replies: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { reply, request } => {
                assert_eq!(*request, Some(7), "the reply goes to the press's request");
                Some(reply.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1, "one reply per press: {actions:?}");
    replies.into_iter().next().unwrap()
}

/// The data-channel events sent, with their recipients.
fn events(actions: &[Action]) -> Vec<(Vec<String>, DeviceEvent)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { to, event } => Some((to.clone(), event.clone())),
            _ => None,
        })
        .collect()
}

fn indicators(actions: &[Action]) -> Vec<Lights> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Lights(levels) => Some(*levels),
            _ => None,
        })
        .collect()
}

fn notified(actions: &[Action]) -> Vec<Notify> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn said(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Say(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn candidate(n: usize) -> IceCandidate {
    IceCandidate {
        candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {} typ host", 5000 + n),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_decline_reason_arrives_verbatim_and_an_unanswered_call_times_out() {
    let mut bell = Bell::new();
    let actions = bell.offer("c1", "Ray");
    assert_eq!(told(&actions, "c1"), [Signal::Ringing]);
    let reason = "Pas maintenant ☕ — plus tard";
    let actions = bell.press(Press::Decline(Some(reason.into())));
    assert_eq!(told(&actions, "c1"), [Signal::Decline(reason.into())]);
    assert!(reply(&actions).unwrap().contains("Ray"));
    assert_eq!(bell.core.calls().count(), 0);

    let t0 = bell.now;
    bell.offer("c2", "Egon");
    // The ring timeout is the call's deadline; the blinking wakes the loop before it.
    assert!(bell.core.next_deadline().unwrap() < t0 + secs(30));
    let mut declined_at = None;
    for _ in 0..400 {
        let Some(due) = bell.core.next_deadline() else {
            break;
        };
        let actions = bell.advance(due - bell.now);
        if told(&actions, "c2") == [Signal::Decline(NO_ANSWER.into())] {
            declined_at = Some(bell.now);
            break;
        }
    }
    assert_eq!(declined_at, Some(t0 + secs(30)));
    assert_eq!(bell.core.calls().count(), 0);
    assert_eq!(
        bell.core.next_deadline(),
        None,
        "nothing left to wake up for"
    );
    assert_eq!(bell.core.lights(), Lights::default());
}

#[test]
fn presses_without_a_call_are_refused() {
    let mut bell = Bell::new();
    for press in [Press::Accept, Press::Decline(None)] {
        let actions = bell.press(press);
        assert_eq!(reply(&actions), Err(ControlError::NothingRinging));
        assert!(
            events(&actions).is_empty(),
            "no button event for a refused press"
        );
    }
    assert_eq!(
        reply(&bell.press(Press::Hangup(None))),
        Err(ControlError::NothingToHangUp)
    );
}

#[test]
fn of_two_callers_the_first_is_accepted_the_second_declined_then_the_device_hangs_up() {
    let mut bell = Bell::new();
    bell.offer("ray", "Ray");
    bell.advance(secs(1));
    // Ids sort before the first call's: the press still goes to the call that rang first.
    bell.offer("egon", "Egon");

    let actions = bell.press(Press::Accept);
    assert_eq!(bell.state("ray"), Some(CallState::Accepted));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Reply { .. })),
        "the reply waits for the answer"
    );
    let actions = bell.answered("ray");
    assert_eq!(
        told(&actions, "ray"),
        [Signal::Answer("answer of ray".into())]
    );
    assert_eq!(reply(&actions), Ok("accepted the call from Ray".into()));

    let actions = bell.press(Press::Decline(None));
    assert_eq!(told(&actions, "egon"), [Signal::Decline("Not now".into())]);
    assert_eq!(
        reply(&actions),
        Ok("declined the call from Egon: Not now".into())
    );

    bell.peer("ray", PeerReport::Connected);
    let actions = bell.peer("ray", PeerReport::DataOpen);
    assert_eq!(
        events(&actions),
        [
            (vec!["ray".to_owned()], DeviceEvent::Accepted),
            (vec!["ray".to_owned()], DeviceEvent::Viewers { count: 1 }),
        ]
    );

    // A third caller rings while Ray watches: Ray hears of it, and can be joined.
    let actions = bell.offer("peter", "Peter");
    assert_eq!(
        events(&actions),
        [(
            vec!["ray".to_owned()],
            DeviceEvent::Ringing {
                caller: "Peter".into()
            }
        )]
    );
    let actions = bell.accept_and_watch("peter");
    // Ray hears the count change when Peter connects; Peter when its channel opens.
    let counts: Vec<_> = events(&actions)
        .into_iter()
        .filter(|(_, e)| matches!(e, DeviceEvent::Viewers { .. }))
        .collect();
    assert_eq!(
        counts,
        [
            (vec!["ray".to_owned()], DeviceEvent::Viewers { count: 2 }),
            (vec!["peter".to_owned()], DeviceEvent::Viewers { count: 2 }),
        ]
    );
    assert_eq!(bell.core.watching(), 2);

    let actions = bell.press(Press::Hangup(None));
    assert_eq!(reply(&actions), Ok("ended 2 call(s)".into()));
    for call in ["ray", "peter"] {
        assert_eq!(
            told(&actions, call),
            [Signal::Hangup("hung up at the device".into())]
        );
        assert!(actions.contains(&Action::ClosePeer { call: call.into() }));
        assert!(actions.contains(&Action::Forget {
            side: Side::Phonebook,
            call: call.into()
        }));
    }
    assert_eq!(bell.core.calls().count(), 0);
}

#[test]
fn beyond_max_viewers_callers_get_busy() {
    let mut bell = Bell::with(|c| {
        c.rules.auto = true;
        c.rules.max_viewers = 1;
    });
    let actions = bell.offer("one", "One");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::CreateAnswer { .. }))
    );
    let actions = bell.offer("two", "Two");
    assert_eq!(told(&actions, "two"), [Signal::Decline(BUSY.into())]);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CreateAnswer { .. }))
    );
    assert_eq!(bell.core.calls().count(), 1);
}

#[test]
fn do_not_disturb_declines_ringing_and_new_calls_and_survives_a_reregistration() {
    let mut bell = Bell::new();
    bell.input(Input::Registered(Side::Phonebook));
    bell.offer("early", "Early");

    let actions = bell.press(Press::DoNotDisturb);
    assert!(actions.contains(&Action::SetPresence(Presence::Dnd)));
    assert_eq!(
        told(&actions, "early"),
        [Signal::Decline("Do not disturb".into())]
    );
    assert!(reply(&actions).unwrap().contains("on"));
    assert!(bell.core.dnd());

    let actions = bell.offer("later", "Later");
    assert_eq!(
        told(&actions, "later"),
        [Signal::Decline("Do not disturb".into())]
    );

    // A phonebook that restarted forgot the presence: it is set again.
    bell.input(Input::SideLost {
        side: Side::Phonebook,
        why: "gone".into(),
    });
    let actions = bell.input(Input::Registered(Side::Phonebook));
    assert!(actions.contains(&Action::SetPresence(Presence::Dnd)));

    let actions = bell.press(Press::DoNotDisturb);
    assert!(actions.contains(&Action::SetPresence(Presence::Available)));
    assert_eq!(reply(&actions), Ok("do not disturb is off".into()));
    let actions = bell.offer("again", "Again");
    assert_eq!(told(&actions, "again"), [Signal::Ringing]);
    let actions = bell.input(Input::Registered(Side::Phonebook));
    assert!(!actions.iter().any(|a| matches!(a, Action::SetPresence(_))));
}

#[test]
fn allow_listed_callers_are_accepted_without_ringing_for_long() {
    let mut bell = Bell::new();
    let actions = bell.offer("grandma", "Grandma");
    assert_eq!(told(&actions, "grandma"), [Signal::Ringing]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::CreateAnswer { .. }))
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Reply { .. })),
        "nobody pressed"
    );
    bell.answered("grandma");
    bell.peer("grandma", PeerReport::Connected);
    bell.offer("stranger", "Stranger");
    assert_eq!(bell.state("grandma"), Some(CallState::Established));
    assert_eq!(bell.state("stranger"), Some(CallState::Ringing));

    // Only a verified `user` or `callerName` counts, not a free `name`.
    let actions = bell.input(Input::Offer {
        call: "named".into(),
        side: Side::Phonebook,
        meta: json!({"name": "Grandma"}),
        sdp: String::new(),
    });
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CreateAnswer { .. }))
    );
}

#[test]
fn the_data_channel_carries_text_and_events_and_the_lights_follow() {
    let mut bell = Bell::new();
    let actions = bell.offer("ray", "Ray");
    // The ring LED and the buzzer start at once, then blink on the deadlines the core
    // gives: both LED levels show within a second.
    assert_eq!(
        indicators(&actions),
        [Lights {
            ring_led: true,
            on_air_led: false,
            buzzer: true,
            door: false,
        }]
    );
    let start = bell.now;
    let mut led = vec![true];
    while bell.now < start + secs(1) {
        let due = bell.core.next_deadline().unwrap();
        bell.advance(due - bell.now);
        let on = bell.core.lights().ring_led;
        if led.last() != Some(&on) {
            led.push(on);
        }
    }
    assert_eq!(led, [true, false, true, false, true]);

    let actions = bell.accept_and_watch("ray");
    let last = *indicators(&actions).last().unwrap();
    assert_eq!(
        last,
        Lights {
            ring_led: false,
            on_air_led: true,
            buzzer: false,
            door: false,
        }
    );
    let actions = bell.peer("ray", PeerReport::Text("hello\u{1b}[2J camera\n".into()));
    assert_eq!(said(&actions), ["Ray says: hello[2J camera"]);
    assert_eq!(
        bell.core.next_deadline(),
        None,
        "a watched call has no deadline"
    );

    let actions = bell.input(Input::Shutdown);
    assert_eq!(
        notified(&actions)[0],
        Notify::Stopping("ending 1 call(s)".into())
    );
    let at = |pick: &dyn Fn(&Action) -> bool| actions.iter().position(pick).unwrap();
    let event = at(
        &|a| matches!(a, Action::Event { event: DeviceEvent::ShuttingDown, to } if to == &["ray"]),
    );
    let flush = at(
        &|a| matches!(a, Action::Flush { calls, limit } if calls == &["ray"] && *limit == FLUSH_LIMIT),
    );
    let hangup = at(
        &|a| matches!(a, Action::Signal { signal: Signal::Hangup(r), .. } if r == SHUTTING_DOWN),
    );
    assert!(event < flush && flush < hangup, "{actions:?}");
    assert_eq!(indicators(&actions).last(), Some(&Lights::default()));
    assert_eq!(bell.core.calls().count(), 0);
}

#[test]
fn early_candidates_wait_for_the_answer_up_to_a_cap() {
    let mut bell = Bell::new();
    bell.offer("c1", "Ray");
    for n in 0..MAX_EARLY_CANDIDATES + 5 {
        let actions = bell.input(Input::RemoteCandidate {
            call: "c1".into(),
            candidate: candidate(n),
        });
        assert!(actions.is_empty(), "kept, not added: {actions:?}");
    }
    bell.press(Press::Accept);
    let actions = bell.answered("c1");
    let added: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::AddCandidates { call, candidates } if call == "c1" => Some(candidates.clone()),
            _ => None,
        })
        .collect();
    let expected: Vec<_> = (0..MAX_EARLY_CANDIDATES).map(candidate).collect();
    assert_eq!(added, [expected]);
    // The answer goes out before the candidates are added, as the caller needs it first.
    let answer = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Signal {
                    signal: Signal::Answer(_),
                    ..
                }
            )
        })
        .unwrap();
    let candidates = actions
        .iter()
        .position(|a| matches!(a, Action::AddCandidates { .. }))
        .unwrap();
    assert!(answer < candidates);

    let actions = bell.input(Input::RemoteCandidate {
        call: "c1".into(),
        candidate: candidate(99),
    });
    assert_eq!(
        actions,
        [Action::AddCandidates {
            call: "c1".into(),
            candidates: vec![candidate(99)]
        }]
    );
    // Our own candidates go to the caller's side, end of candidates included.
    let actions = bell.peer("c1", PeerReport::Candidate(None));
    assert_eq!(told(&actions, "c1"), [Signal::Candidate(None)]);
}

#[test]
fn a_caller_hanging_up_while_it_rings_stops_the_ringing() {
    let mut bell = Bell::new();
    bell.offer("c1", "Ray");
    assert!(bell.core.lights().ring_led);
    let actions = bell.input(Input::RemoteHangup {
        call: "c1".into(),
        reason: "caller hung up".into(),
    });
    assert!(
        told(&actions, "c1").is_empty(),
        "no reply to a caller that left"
    );
    assert_eq!(indicators(&actions), [Lights::default()]);
    assert_eq!(bell.core.next_deadline(), None);
    assert_eq!(
        reply(&bell.press(Press::Accept)),
        Err(ControlError::NothingRinging)
    );
}

#[test]
fn losing_a_side_ends_its_calls_that_are_not_established() {
    let mut bell = Bell::new();
    bell.input(Input::Registered(Side::Phonebook));
    bell.input(Input::Registered(Side::PeerJs));
    bell.offer("watching", "Ray");
    bell.accept_and_watch("watching");
    bell.offer("ringing", "Egon");
    bell.offer_via(Side::PeerJs, "peerjs-mc_1", "Pia");

    let actions = bell.input(Input::SideLost {
        side: Side::Phonebook,
        why: "connection reset".into(),
    });
    assert!(!bell.core.registered());
    assert_eq!(
        notified(&actions),
        [Notify::Status(
            "phonebook unreachable (connection reset); reconnecting".into()
        )]
    );
    assert_eq!(bell.state("ringing"), None);
    assert_eq!(bell.state("watching"), Some(CallState::Established));
    assert_eq!(
        bell.state("peerjs-mc_1"),
        Some(CallState::Ringing),
        "a PeerJS call needs no phonebook"
    );

    bell.input(Input::SideLost {
        side: Side::PeerJs,
        why: "closed".into(),
    });
    assert_eq!(bell.state("peerjs-mc_1"), None);
    assert_eq!(bell.core.peerjs_open(), Some(false));
}

#[test]
fn a_peerjs_caller_hangs_up_by_closing_its_data_channel() {
    let mut bell = Bell::new();
    bell.offer_via(Side::PeerJs, "peerjs-mc_1", "Pia");
    bell.accept_and_watch("peerjs-mc_1");
    bell.offer("page", "Ray");
    bell.accept_and_watch("page");

    // Our own pages hang up in the signalling: their channel closing alone ends nothing.
    let actions = bell.peer("page", PeerReport::DataClosed("peercam".into()));
    assert!(actions.is_empty(), "{actions:?}");
    let actions = bell.peer("peerjs-mc_1", PeerReport::DataClosed("dc_1".into()));
    assert!(told(&actions, "peerjs-mc_1").is_empty());
    assert!(actions.contains(&Action::ClosePeer {
        call: "peerjs-mc_1".into()
    }));
    assert_eq!(bell.state("peerjs-mc_1"), None);
    assert_eq!(bell.core.watching(), 1);
}

#[test]
fn systemd_hears_ready_once_then_status() {
    let mut bell = Bell::new();
    let actions = bell.input(Input::Registered(Side::Phonebook));
    assert_eq!(
        notified(&actions),
        [Notify::Ready("registered as \"bell\", 0 viewers".into())]
    );
    assert!(bell.core.registered());
    bell.offer("c1", "Ray");
    bell.press(Press::Accept);
    bell.answered("c1");
    let actions = bell.peer("c1", PeerReport::Connected);
    assert_eq!(
        notified(&actions),
        [Notify::Status("registered as \"bell\", 1 viewer".into())]
    );
    let actions = bell.input(Input::Registered(Side::Phonebook));
    assert_eq!(
        notified(&actions),
        [Notify::Status("registered as \"bell\", 1 viewer".into())]
    );
    // Registering on PeerJS is no service readiness.
    let actions = bell.input(Input::Registered(Side::PeerJs));
    assert!(notified(&actions).is_empty());
    assert_eq!(bell.core.peerjs_open(), Some(true));
}

#[test]
fn viewers_hear_of_presses_and_of_the_count_changing() {
    let mut bell = Bell::new();
    bell.offer("a", "Ann");
    bell.accept_and_watch("a");
    bell.offer("b", "Bob");
    let actions = bell.accept_and_watch("b");
    // The accept press is told to the viewer already watching once the answer is made.
    assert!(events(&actions).contains(&(
        vec!["a".to_owned()],
        DeviceEvent::Button {
            button: Button::Accept
        }
    )));
    let actions = bell.peer("b", PeerReport::Lost("ICE failed".into()));
    assert_eq!(told(&actions, "b"), [Signal::Hangup("ICE failed".into())]);
    assert_eq!(
        events(&actions),
        [(vec!["a".to_owned()], DeviceEvent::Viewers { count: 1 })]
    );
    let actions = bell.press(Press::DoNotDisturb);
    assert_eq!(
        events(&actions),
        [(
            vec!["a".to_owned()],
            DeviceEvent::Button {
                button: Button::Dnd
            }
        )]
    );
}

#[test]
fn an_answer_that_cannot_be_made_declines_with_the_error() {
    let mut bell = Bell::new();
    bell.offer("c1", "Ray");
    bell.press(Press::Accept);
    let actions = bell.input(Input::AnswerFailed {
        call: "c1".into(),
        reason: "no H.264 in the offer".into(),
    });
    assert_eq!(
        told(&actions, "c1"),
        [Signal::Decline("no H.264 in the offer".into())]
    );
    assert_eq!(
        reply(&actions),
        Err(ControlError::NotAnswered("Ray".into()))
    );
    assert_eq!(bell.state("c1"), None);
    // A peer made for a call that is gone is closed again.
    assert_eq!(
        bell.answered("c1"),
        [Action::ClosePeer { call: "c1".into() }]
    );
}

#[test]
fn an_accepted_call_that_never_connects_ends() {
    let mut bell = Bell::new();
    bell.offer("c1", "Ray");
    bell.advance(secs(5));
    bell.press(Press::Accept);
    bell.answered("c1");
    assert_eq!(bell.core.next_deadline(), Some(bell.now + CONNECT_TIMEOUT));
    let actions = bell.advance(CONNECT_TIMEOUT);
    assert_eq!(
        told(&actions, "c1"),
        [Signal::Hangup(CONNECT_FAILED.into())]
    );
    assert_eq!(bell.state("c1"), None);
}

#[test]
fn a_repeated_offer_changes_nothing_and_names_are_cleaned() {
    let mut bell = Bell::new();
    bell.input(Input::Offer {
        call: "c1".into(),
        side: Side::Phonebook,
        meta: json!({"callerName": "Ray\u{7}\nmond"}),
        sdp: String::new(),
    });
    assert!(bell.offer("c1", "Other").is_empty());
    assert_eq!(bell.core.calls().next().unwrap().party, "Raymond");
    bell.input(Input::Offer {
        call: "c2".into(),
        side: Side::Phonebook,
        meta: json!({"name": "  "}),
        sdp: String::new(),
    });
    assert_eq!(bell.core.calls().nth(1).unwrap().party, "someone");
    // Presses and peer events for unknown calls are ignored.
    assert!(bell.peer("nope", PeerReport::Connected).is_empty());
}

#[test]
fn dnd_is_shown_to_a_press_without_registration_too() {
    let mut bell = Bell::with(|c| c.peerjs = false);
    assert_eq!(bell.core.peerjs_open(), None);
    let actions = bell.press(Press::DoNotDisturb);
    assert_eq!(
        reply(&actions),
        Ok("do not disturb is on: calls are declined with \"Do not disturb\"".into())
    );
}
