//! The buttons a person at the device presses, the lights and buzzer that answer, and
//! how presses reach the daemon.
//!
//! Every source turns presses into [`crate::control::Request`]s on one channel, so the
//! daemon does not know whether a press came from a GPIO pin, a terminal key or the
//! control socket. Pin
//! backends ([`rpi`] through rppal, [`cdev`] through the GPIO character device) report
//! raw [`Edge`]s with the kernel's timestamps; [`PressDecoder`] turns them into short and
//! long presses, so debounce and long-press rules are tested without pins. Outputs go
//! through the [`Indicators`] trait; the device core says what they should show.

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

use crate::buttons::Button;
use crate::control::Press;

/// A button's pin changed level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Which button, by its pin's name (a `[gpio]` key of [`crate::buttons::BUTTONS`]).
    pub pin: &'static str,
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

/// What a completed press of the button on `pin` means.
pub fn press_for(pin: &str, kind: PressKind) -> Option<Press> {
    Button::on_pin(pin, kind == PressKind::Long).map(|button| Press::new(button, None))
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
    /// A relay for a door strike: opens the door while on.
    Door,
}

/// Every output with the `[gpio]` key of its pin.
pub const OUTPUTS: &[(Output, &str)] = &[
    (Output::RingLed, "ring_led"),
    (Output::OnAirLed, "on_air_led"),
    (Output::Buzzer, "buzzer"),
    (Output::Door, "door"),
];

/// The levels of every output at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Levels {
    /// Ring LED on.
    pub ring_led: bool,
    /// On-air LED on.
    pub on_air_led: bool,
    /// Buzzer sounding.
    pub buzzer: bool,
    /// Door strike released.
    pub door: bool,
}

/// Outputs a person sees or hears.
pub trait Indicators: Send {
    /// Switches one output; outputs the board does not have are ignored.
    fn set(&mut self, output: Output, on: bool) -> anyhow::Result<()>;

    /// Switches every output to `levels`.
    fn show(&mut self, levels: Levels) -> anyhow::Result<()> {
        self.set(Output::RingLed, levels.ring_led)?;
        self.set(Output::OnAirLed, levels.on_air_led)?;
        self.set(Output::Buzzer, levels.buzzer)?;
        self.set(Output::Door, levels.door)
    }
}

/// The buttons a board has: their pins' names and settings.
pub fn buttons(settings: &GpioSettings) -> Vec<(&'static str, PinSettings)> {
    crate::buttons::button_pins()
        .into_iter()
        .filter_map(|name| settings.pin(name).map(|pin| (name, pin)))
        .collect()
}

/// Checks that every pin in `settings` is named after a button or an output. (The pins
/// are a map, so serde cannot refuse an unknown key for us.)
pub fn validate_pins(settings: &GpioSettings) -> Result<(), String> {
    let buttons = crate::buttons::button_pins();
    let outputs: Vec<&str> = OUTPUTS.iter().map(|(_, name)| *name).collect();
    for name in settings.pins.keys() {
        if !buttons.contains(&name.as_str()) && !outputs.contains(&name.as_str()) {
            return Err(format!(
                "unknown key gpio.{name}: the buttons' pins are {}, the outputs' {}",
                buttons.join(", "),
                outputs.join(", ")
            ));
        }
    }
    Ok(())
}

/// The outputs a board has, with their pins.
pub fn outputs(settings: &GpioSettings) -> Vec<(Output, PinSettings)> {
    OUTPUTS
        .iter()
        .filter_map(|(output, name)| settings.pin(name).map(|pin| (*output, pin)))
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
            press_for("decline", PressKind::Long),
            Some(Press::DoNotDisturb)
        );
        assert_eq!(
            press_for("decline", PressKind::Short),
            Some(Press::Decline(None))
        );
        assert_eq!(press_for("accept", PressKind::Long), Some(Press::Accept));
        assert_eq!(press_for("bell", PressKind::Short), Some(Press::Bell));
    }

    #[test]
    fn a_release_without_a_press_is_ignored() {
        let mut d = decoder();
        assert_eq!(d.edge(false, ms(100)), None);
        assert_eq!(d.edge(true, ms(200)), None);
        assert_eq!(d.edge(true, ms(300)), None);
        assert_eq!(d.edge(false, ms(400)), Some(PressKind::Short));
    }
}
