//! The buttons a person at the device presses, the lights and buzzer that answer, and
//! how presses reach the daemon.
//!
//! Every source turns presses into [`crate::control::Request`]s on one channel, so the
//! daemon does not know whether a press came from a GPIO pin, a terminal key or the
//! control socket. Pin
//! backends ([`rpi`] through rppal, [`cdev`] through the GPIO character device) report
//! raw [`Edge`]s with the kernel's timestamps; [`PressDecoder`] turns them into short and
//! long presses, so debounce and long-press rules are tested without pins. Outputs go
//! through the [`Indicators`] trait; [`indicator_levels`] says what they should show.

mod backend;
#[cfg(feature = "cdev")]
pub mod cdev;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod settings;
pub mod simulated;

pub use backend::open;

use std::time::Duration;

use settings::{GpioSettings, PinSettings};

use crate::control::Press;

/// A physical button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ButtonId {
    /// Accepts the ringing call.
    Accept,
    /// Declines it; a long press turns do-not-disturb on or off.
    Decline,
    /// Ends every call.
    Hangup,
}

/// A button's pin changed level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Which button.
    pub button: ButtonId,
    /// True when the button went down (after applying active-low).
    pub pressed: bool,
    /// When, on the kernel's monotonic clock.
    pub at: Duration,
}

/// How long a button was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressKind {
    /// Released before the long-press time.
    Short,
    /// Held at least the long-press time.
    Long,
}

/// Turns one button's edges into presses: edges closer than the debounce time to the
/// previous accepted edge are bounce; a press is reported on release, long or short.
#[derive(Debug, Clone)]
pub struct PressDecoder {
    debounce: Duration,
    long: Duration,
    down_at: Option<Duration>,
    last_edge: Option<Duration>,
}

impl PressDecoder {
    /// A decoder with these thresholds.
    pub fn new(debounce: Duration, long: Duration) -> Self {
        PressDecoder {
            debounce,
            long,
            down_at: None,
            last_edge: None,
        }
    }

    /// Feeds one edge; returns the press it completes, if any.
    pub fn edge(&mut self, pressed: bool, at: Duration) -> Option<PressKind> {
        if self
            .last_edge
            .is_some_and(|last| at.saturating_sub(last) < self.debounce)
        {
            return None;
        }
        self.last_edge = Some(at);
        match (pressed, self.down_at) {
            (true, None) => {
                self.down_at = Some(at);
                None
            }
            (false, Some(down)) => {
                self.down_at = None;
                Some(if at.saturating_sub(down) >= self.long {
                    PressKind::Long
                } else {
                    PressKind::Short
                })
            }
            // A repeated level (a missed edge): wait for the opposite one.
            _ => None,
        }
    }
}

/// What a completed press means.
pub fn press_for(button: ButtonId, kind: PressKind) -> Press {
    match (button, kind) {
        (ButtonId::Accept, _) => Press::Accept,
        (ButtonId::Decline, PressKind::Short) => Press::Decline(None),
        (ButtonId::Decline, PressKind::Long) => Press::DoNotDisturb,
        (ButtonId::Hangup, _) => Press::Hangup(None),
    }
}

/// An output a person sees or hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// Blinks while a call rings.
    RingLed,
    /// Lit while anyone watches.
    OnAirLed,
    /// Beeps while a call rings.
    Buzzer,
}

/// The levels of every output at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Levels {
    /// Ring LED on.
    pub ring_led: bool,
    /// On-air LED on.
    pub on_air_led: bool,
    /// Buzzer sounding.
    pub buzzer: bool,
}

/// Ring LED blink half-period.
pub const BLINK: Duration = Duration::from_millis(250);

/// What the outputs show: the ring LED blinks at 2 Hz and the buzzer beeps 0.4 s every
/// 2 s while a call has rung for `ringing_for`; the on-air LED is lit while anyone watches.
pub fn indicator_levels(ringing_for: Option<Duration>, watching: bool) -> Levels {
    let ring_phase = |period_ms: u128, on_ms: u128| {
        ringing_for.is_some_and(|d| d.as_millis() % period_ms < on_ms)
    };
    Levels {
        ring_led: ring_phase(2 * BLINK.as_millis(), BLINK.as_millis()),
        on_air_led: watching,
        buzzer: ring_phase(BUZZER_PERIOD_MS, BUZZER_ON_MS),
    }
}

/// How long after `ringing_for` of ringing [`indicator_levels`] next changes (the ring
/// LED's or the buzzer's next edge), so the daemon wakes for it rather than polling.
pub fn next_indicator_change(ringing_for: Duration) -> Duration {
    let ms = ringing_for.as_millis();
    let next_edge = |period: u128, on: u128| {
        let phase = ms % period;
        ms - phase + if phase < on { on } else { period }
    };
    let blink = BLINK.as_millis();
    let next = next_edge(2 * blink, blink).min(next_edge(BUZZER_PERIOD_MS, BUZZER_ON_MS));
    Duration::from_millis(u64::try_from(next).unwrap_or(u64::MAX)).saturating_sub(ringing_for)
}

/// The buzzer's beep period and length, in ms.
const BUZZER_PERIOD_MS: u128 = 2000;
const BUZZER_ON_MS: u128 = 400;

/// Outputs a person sees or hears.
pub trait Indicators: Send {
    /// Switches one output; outputs the board does not have are ignored.
    fn set(&mut self, output: Output, on: bool) -> anyhow::Result<()>;

    /// Switches every output to `levels`.
    fn show(&mut self, levels: Levels) -> anyhow::Result<()> {
        self.set(Output::RingLed, levels.ring_led)?;
        self.set(Output::OnAirLed, levels.on_air_led)?;
        self.set(Output::Buzzer, levels.buzzer)
    }
}

/// The buttons a board has, with their pins.
pub fn buttons(settings: &GpioSettings) -> Vec<(ButtonId, PinSettings)> {
    [
        (ButtonId::Accept, settings.accept),
        (ButtonId::Decline, settings.decline),
        (ButtonId::Hangup, settings.hangup),
    ]
    .into_iter()
    .filter_map(|(id, pin)| pin.map(|p| (id, p)))
    .collect()
}

/// The outputs a board has, with their pins.
pub fn outputs(settings: &GpioSettings) -> Vec<(Output, PinSettings)> {
    [
        (Output::RingLed, settings.ring_led),
        (Output::OnAirLed, settings.on_air_led),
        (Output::Buzzer, settings.buzzer),
    ]
    .into_iter()
    .filter_map(|(id, pin)| pin.map(|p| (id, p)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn decoder() -> PressDecoder {
        PressDecoder::new(ms(30), ms(1500))
    }

    #[test]
    fn a_bouncy_short_press_is_one_short_press() {
        let mut d = decoder();
        let edges = [
            (true, 1000),
            (false, 1003),
            (true, 1006),
            (false, 1200),
            (true, 1205),
            (false, 1210),
        ];
        let presses: Vec<_> = edges
            .iter()
            .filter_map(|&(p, t)| d.edge(p, ms(t)))
            .collect();
        assert_eq!(presses, vec![PressKind::Short]);
    }

    #[test]
    fn holding_past_the_long_press_time_is_a_long_press() {
        let mut d = decoder();
        assert_eq!(d.edge(true, ms(0)), None);
        assert_eq!(d.edge(false, ms(1499)), Some(PressKind::Short));
        assert_eq!(d.edge(true, ms(3000)), None);
        assert_eq!(d.edge(false, ms(4500)), Some(PressKind::Long));
        assert_eq!(
            press_for(ButtonId::Decline, PressKind::Long),
            Press::DoNotDisturb
        );
        assert_eq!(
            press_for(ButtonId::Decline, PressKind::Short),
            Press::Decline(None)
        );
        assert_eq!(press_for(ButtonId::Accept, PressKind::Long), Press::Accept);
    }

    #[test]
    fn a_release_without_a_press_is_ignored() {
        let mut d = decoder();
        assert_eq!(d.edge(false, ms(100)), None);
        assert_eq!(d.edge(true, ms(200)), None);
        assert_eq!(d.edge(true, ms(300)), None);
        assert_eq!(d.edge(false, ms(400)), Some(PressKind::Short));
    }

    #[test]
    fn ring_led_blinks_and_buzzer_beeps_only_while_ringing() {
        let quiet = indicator_levels(None, false);
        assert_eq!(quiet, Levels::default());
        assert!(indicator_levels(Some(ms(0)), false).ring_led);
        assert!(!indicator_levels(Some(ms(260)), false).ring_led);
        assert!(indicator_levels(Some(ms(510)), false).ring_led);
        assert!(indicator_levels(Some(ms(100)), false).buzzer);
        assert!(!indicator_levels(Some(ms(500)), false).buzzer);
        assert!(indicator_levels(None, true).on_air_led);
    }

    #[test]
    fn the_next_change_is_the_next_edge_of_either_output() {
        assert_eq!(next_indicator_change(ms(0)), ms(250));
        assert_eq!(next_indicator_change(ms(100)), ms(150));
        assert_eq!(next_indicator_change(ms(380)), ms(20));
        assert_eq!(next_indicator_change(ms(1999)), ms(1));
        // At every step the levels hold until the predicted change, and differ after it.
        let mut t = ms(0);
        for _ in 0..40 {
            let step = next_indicator_change(t);
            assert!(step > Duration::ZERO);
            let before = indicator_levels(Some(t + step - ms(1)), false);
            assert_eq!(indicator_levels(Some(t), false), before);
            assert_ne!(indicator_levels(Some(t + step), false), before);
            t += step;
        }
    }
}
