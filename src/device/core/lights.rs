//! What the ring LED, on-air LED, buzzer and door output show, from what goes on: each
//! signal is a pattern repeating from the moment it started, so the core computes the
//! levels and the next change without a timer of its own.

use std::time::Duration;

use super::super::messages::Lights;

/// On-intervals (start, end in ms) within a repeating period.
struct Pattern {
    period_ms: u64,
    on: &'static [(u64, u64)],
}

impl Pattern {
    fn phase(&self, t: Duration) -> u64 {
        (t.as_millis() % u128::from(self.period_ms)) as u64
    }

    fn is_on(&self, t: Duration) -> bool {
        let phase = self.phase(t);
        self.on
            .iter()
            .any(|&(from, to)| (from..to).contains(&phase))
    }

    /// How long after `t` the level next changes.
    fn next_change(&self, t: Duration) -> Duration {
        let phase = self.phase(t);
        let edge = self
            .on
            .iter()
            .flat_map(|&(from, to)| [from, to])
            .filter(|&edge| edge > phase)
            .min()
            .unwrap_or(self.period_ms + self.on.first().map_or(0, |&(from, _)| from));
        Duration::from_millis(edge - phase)
    }
}

/// An incoming call rings: the ring LED blinks at 2 Hz.
const INCOMING_LED: Pattern = Pattern {
    period_ms: 500,
    on: &[(0, 250)],
};
/// An incoming call rings: the buzzer beeps 0.4 s every 2 s.
const INCOMING_BUZZER: Pattern = Pattern {
    period_ms: 2000,
    on: &[(0, 400)],
};
/// The bell calls out: the ring LED blinks slowly (1 s on, 1 s off), so the visitor sees
/// the house is being called, not a call coming in.
const OUTGOING_LED: Pattern = Pattern {
    period_ms: 2000,
    on: &[(0, 1000)],
};
/// The bell calls out: a short tick every 3 s, like a ringing tone.
const OUTGOING_BUZZER: Pattern = Pattern {
    period_ms: 3000,
    on: &[(0, 150)],
};
/// Nobody answered the bell: three quick flashes every 2 s.
const MISSED_LED: Pattern = Pattern {
    period_ms: 2000,
    on: &[(0, 100), (200, 300), (400, 500)],
};

/// How long the missed pattern shows after a press nobody answered.
pub const MISSED_SHOW: Duration = Duration::from_secs(10);

/// What goes on, as the lights see it: how long each signal has been going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// An incoming call has rung this long.
    pub incoming: Option<Duration>,
    /// The bell has called out this long.
    pub outgoing: Option<Duration>,
    /// The bell was missed this long ago (shown for [`MISSED_SHOW`]).
    pub missed: Option<Duration>,
    /// Someone watches (or talks).
    pub watching: bool,
    /// The door is being opened.
    pub door: bool,
}

impl Signals {
    fn missed_showing(&self) -> Option<Duration> {
        self.missed.filter(|&t| t < MISSED_SHOW)
    }

    /// The levels now. An incoming call outranks the bell calling out (someone at the
    /// device must press accept), which outranks a missed bell.
    pub fn lights(&self) -> Lights {
        let (led, buzzer) = if let Some(t) = self.incoming {
            (INCOMING_LED.is_on(t), INCOMING_BUZZER.is_on(t))
        } else if let Some(t) = self.outgoing {
            (OUTGOING_LED.is_on(t), OUTGOING_BUZZER.is_on(t))
        } else if let Some(t) = self.missed_showing() {
            (MISSED_LED.is_on(t), false)
        } else {
            (false, false)
        };
        Lights {
            ring_led: led,
            on_air_led: self.watching,
            buzzer,
            door: self.door,
        }
    }

    /// How long until [`Signals::lights`] next changes by itself, if it will.
    pub fn next_change(&self) -> Option<Duration> {
        if let Some(t) = self.incoming {
            Some(
                INCOMING_LED
                    .next_change(t)
                    .min(INCOMING_BUZZER.next_change(t)),
            )
        } else if let Some(t) = self.outgoing {
            Some(
                OUTGOING_LED
                    .next_change(t)
                    .min(OUTGOING_BUZZER.next_change(t)),
            )
        } else {
            self.missed_showing()
                .map(|t| MISSED_LED.next_change(t).min(MISSED_SHOW - t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn incoming(t: u64) -> Signals {
        Signals {
            incoming: Some(ms(t)),
            ..Signals::default()
        }
    }

    #[test]
    fn an_incoming_call_blinks_the_led_at_2_hz_and_beeps_every_2_s() {
        assert_eq!(Signals::default().lights(), Lights::default());
        assert!(incoming(0).lights().ring_led);
        assert!(!incoming(260).lights().ring_led);
        assert!(incoming(510).lights().ring_led);
        assert!(incoming(100).lights().buzzer);
        assert!(!incoming(500).lights().buzzer);
        let watching = Signals {
            watching: true,
            ..Signals::default()
        };
        assert!(watching.lights().on_air_led);
        assert_eq!(incoming(0).next_change(), Some(ms(250)));
        assert_eq!(incoming(100).next_change(), Some(ms(150)));
        assert_eq!(incoming(380).next_change(), Some(ms(20)));
        assert_eq!(incoming(1999).next_change(), Some(ms(1)));
    }

    #[test]
    fn every_pattern_holds_until_its_predicted_change_and_differs_after_it() {
        let cases = [
            incoming(0),
            Signals {
                outgoing: Some(ms(0)),
                ..Signals::default()
            },
            Signals {
                missed: Some(ms(0)),
                ..Signals::default()
            },
        ];
        for start in cases {
            let mut signals = start;
            for _ in 0..40 {
                let Some(step) = signals.next_change() else {
                    // Only the missed pattern ends.
                    assert!(signals.missed.is_some());
                    assert!(!signals.lights().ring_led);
                    break;
                };
                assert!(step > Duration::ZERO);
                let before = signals.lights();
                let mut later = signals;
                let advance = |t: &mut Option<Duration>, by: Duration| {
                    if let Some(t) = t {
                        *t += by;
                    }
                };
                advance(&mut later.incoming, step - ms(1));
                advance(&mut later.outgoing, step - ms(1));
                advance(&mut later.missed, step - ms(1));
                assert_eq!(later.lights(), before, "{start:?}");
                advance(&mut later.incoming, ms(1));
                advance(&mut later.outgoing, ms(1));
                advance(&mut later.missed, ms(1));
                if later.next_change().is_none() {
                    // The missed pattern's end: dark from now on.
                    assert!(!later.lights().ring_led);
                    break;
                }
                assert_ne!(later.lights(), before, "{start:?}");
                signals = later;
            }
        }
    }

    #[test]
    fn calling_out_and_missed_look_unlike_an_incoming_call_and_ranks_hold() {
        let out = |t| Signals {
            outgoing: Some(ms(t)),
            ..Signals::default()
        };
        assert!(out(600).lights().ring_led, "slow: still on at 0.6 s");
        assert!(!out(1200).lights().ring_led);
        assert!(out(100).lights().buzzer && !out(200).lights().buzzer);
        let missed = |t| Signals {
            missed: Some(ms(t)),
            ..Signals::default()
        };
        let flashes = (0..2000)
            .step_by(50)
            .filter(|&t| missed(t).lights().ring_led)
            .count();
        assert_eq!(flashes, 6, "three 100 ms flashes");
        assert!(!missed(100_000).lights().ring_led, "shown for a while only");
        assert_eq!(missed(MISSED_SHOW.as_millis() as u64).next_change(), None);
        let both = Signals {
            incoming: Some(ms(300)),
            outgoing: Some(ms(300)),
            ..Signals::default()
        };
        assert_eq!(both.lights(), incoming(300).lights());
    }
}
