//! The board's pins as its profile names them (`[gpio]`): which driver, which lines, and
//! how buttons are debounced. `crate::config` layers these; the backends read them.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Which GPIO driver runs the buttons and lights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpioBackend {
    /// No pins: the terminal and the control socket are the buttons.
    #[default]
    None,
    /// The Raspberry Pi's GPIO through rppal (feature `rpi`).
    Rppal,
    /// Any board's GPIO character device (feature `cdev`): Orange Pi, Rock, Jetson …
    Cdev,
}

/// Pull resistor of an input pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// No pull resistor (an external one is fitted).
    None,
    /// Pull up: the button connects the pin to ground.
    #[default]
    PullUp,
    /// Pull down: the button connects the pin to 3.3 V.
    PullDown,
}

/// One pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinSettings {
    /// BCM number on a Raspberry Pi; line offset on the chip for `cdev`.
    pub line: u32,
    /// True when the pin reads low while the button is pressed (or the output is on
    /// when low). Buttons to ground with a pull-up are active-low.
    #[serde(default)]
    pub active_low: bool,
    /// Pull resistor, for inputs.
    #[serde(default)]
    pub bias: Bias,
}

/// Buttons and lights.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GpioSettings {
    /// Which driver.
    pub backend: GpioBackend,
    /// The GPIO chip for `cdev`.
    pub chip: String,
    /// Edges closer than this are contact bounce.
    pub debounce_ms: u64,
    /// A press held this long is a long press (decline: do not disturb).
    pub long_press_ms: u64,
    /// The pins, by the names of the buttons ([`crate::buttons::BUTTONS`]: `accept`,
    /// `decline`, `hangup`, `bell`) and of the outputs ([`super::OUTPUTS`]: `ring_led`,
    /// `on_air_led`, `buzzer`, `door`); [`super::validate_pins`] refuses other names.
    #[serde(flatten)]
    pub pins: BTreeMap<String, PinSettings>,
}

impl Default for GpioSettings {
    fn default() -> Self {
        GpioSettings {
            backend: GpioBackend::None,
            chip: "/dev/gpiochip0".into(),
            debounce_ms: 30,
            long_press_ms: 1500,
            pins: BTreeMap::new(),
        }
    }
}

impl GpioSettings {
    /// The pin named `name`, if the board has one.
    pub fn pin(&self, name: &str) -> Option<PinSettings> {
        self.pins.get(name).copied()
    }
}
