//! The device's call state machine, one step per input byte.
//!
//! The first byte picks the ring timeout (0xFF and 0xFE: longer than the clock can
//! hold). Then each byte's low nibble picks the step: 0-2 an offer (ring, accept,
//! decline), 3-9 the other inputs, 10-11 a poll, 12-15 time passing; the high bits pick
//! the reason or how much time passes.
//!
//! Besides not panicking: a finished call never acts again, states move only forward,
//! the caller hears at most one ending, a peer connection is closed at most once and
//! only after it was made, and a hang-up at the device ends any call that has started
//! with its peer connection closed.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use peercam::call::{Action, Admission, CONNECT_TIMEOUT, Call, CallState, Input};

const REASONS: &[&str] = &["Not now", "bye", "", "connection lost"];

fn forward(from: CallState, to: CallState) -> bool {
    use CallState::*;
    matches!(
        (from, to),
        (Initial, Ringing | Declined)
            | (Ringing, Accepted | Declined | Ended)
            | (Accepted, Established | Ended | Error)
            | (Established, Ended)
    )
}

#[derive(Default)]
struct Ledger {
    answered: u32,
    closed: u32,
    told: u32,
}

impl Ledger {
    fn apply(&mut self, call: &Call, before: CallState, actions: &[Action]) {
        if before.is_over() {
            assert!(actions.is_empty(), "a finished call acted: {actions:?}");
        }
        let mut state = before;
        for action in actions {
            match action {
                Action::StateChanged(next, _) => {
                    assert!(forward(state, *next), "{state:?} -> {next:?}");
                    state = *next;
                }
                Action::Answer => self.answered += 1,
                Action::ClosePeer => {
                    self.closed += 1;
                    assert!(self.closed <= self.answered, "closed a peer never made");
                }
                Action::SendDecline(_) | Action::SendHangup(_) => self.told += 1,
                Action::SendRinging => {}
            }
        }
        assert_eq!(call.state(), state, "{actions:?}");
        assert!(self.answered <= 1 && self.told <= 1);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, steps)) = data.split_first() else {
        return;
    };
    let ring = match first {
        0xff => Duration::MAX,
        0xfe => Duration::from_secs(u64::MAX),
        n => Duration::from_secs(u64::from(n % 64)),
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut call = Call::new(t0, ring);
    let mut ledger = Ledger::default();
    for &byte in steps {
        let high = byte >> 4;
        let reason = REASONS[usize::from(high) % REASONS.len()].to_owned();
        let input = match byte & 0x0f {
            0 => Input::Offered(Admission::Ring),
            1 => Input::Offered(Admission::Accept),
            2 => Input::Offered(Admission::Decline(reason)),
            3 => Input::Accept,
            4 => Input::Decline(reason),
            5 => Input::AnswerFailed(reason),
            6 => Input::PeerConnected,
            7 => Input::PeerLost(reason),
            8 => Input::RemoteHangup(reason),
            9 => Input::LocalHangup(reason),
            10 | 11 => {
                let before = call.state();
                let actions = call.poll(now);
                ledger.apply(&call, before, &actions);
                continue;
            }
            12 => {
                now += Duration::from_millis(u64::from(high) * 250);
                continue;
            }
            13 => {
                now += Duration::from_secs(u64::from(high) * 4);
                continue;
            }
            14 => {
                now += CONNECT_TIMEOUT;
                continue;
            }
            _ => {
                now += ring.min(Duration::from_secs(3600));
                continue;
            }
        };
        let before = call.state();
        let actions = call.handle(input, now);
        ledger.apply(&call, before, &actions);
    }
    if call.state() != CallState::Initial {
        let before = call.state();
        let actions = call.handle(Input::LocalHangup("shutting down".into()), now);
        ledger.apply(&call, before, &actions);
        assert!(
            call.state().is_over(),
            "{:?} survived a hang-up",
            call.state()
        );
        assert_eq!(
            ledger.closed, ledger.answered,
            "a peer connection was left open"
        );
        assert_eq!(call.deadline(), None);
    }
});
