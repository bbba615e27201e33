//! The board's pins as its profile names them (`[gpio]`): which driver, which lines, and
//! how buttons are debounced. `crate::config` layers these; the backends read them.

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
#[serde(deny_unknown_fields, default)]
pub struct GpioSettings {
    /// Which driver.
    pub backend: GpioBackend,
    /// The GPIO chip for `cdev`.
    pub chip: String,
    /// Edges closer than this are contact bounce.
    pub debounce_ms: u64,
    /// A press held this long is a long press (decline: do not disturb).
    pub long_press_ms: u64,
    /// The accept button.
    pub accept: Option<PinSettings>,
    /// The decline button (long press: do not disturb on/off).
    pub decline: Option<PinSettings>,
    /// The optional hang-up button.
    pub hangup: Option<PinSettings>,
    /// LED that blinks while a call rings.
    pub ring_led: Option<PinSettings>,
    /// LED lit while anyone watches.
    pub on_air_led: Option<PinSettings>,
    /// Buzzer that beeps while a call rings.
    pub buzzer: Option<PinSettings>,
}

impl Default for GpioSettings {
    fn default() -> Self {
        GpioSettings {
            backend: GpioBackend::None,
            chip: "/dev/gpiochip0".into(),
            debounce_ms: 30,
            long_press_ms: 1500,
            accept: None,
            decline: None,
            hangup: None,
            ring_led: None,
            on_air_led: None,
            buzzer: None,
        }
    }
}
