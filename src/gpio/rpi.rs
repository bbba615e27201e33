//! The Raspberry Pi's GPIO through rppal: buttons as inputs with pull resistors and
//! kernel-debounced edge interrupts, LEDs and buzzer as outputs. rppal supports models up
//! to the Pi 5 and is no longer maintained, so it stays behind [`super::Indicators`] and
//! the edge channel.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rppal::gpio::{Gpio, InputPin, OutputPin, Trigger};
use tokio::sync::mpsc;

use super::settings::{Bias, GpioSettings, PinSettings};
use super::{Edge, Indicators, Output};

/// Open pins; inputs keep their interrupts while this lives, outputs go dark on drop.
pub struct RpiGpio {
    _inputs: Vec<InputPin>,
    outputs: HashMap<Output, (OutputPin, PinSettings)>,
}

impl RpiGpio {
    /// Claims the configured pins.
    pub fn open(
        settings: &GpioSettings,
        edges: mpsc::UnboundedSender<Edge>,
    ) -> anyhow::Result<Self> {
        let gpio = Gpio::new().map_err(|err| {
            anyhow!(
                "not a Raspberry Pi, or its GPIO is not accessible ({err}): use --board dev on other machines, gpio.backend = \"cdev\" on other boards, or add the user to the gpio group"
            )
        })?;
        let debounce = Duration::from_millis(settings.debounce_ms);
        let mut inputs = Vec::new();
        for (pin_name, pin) in super::buttons(settings) {
            let raw = gpio.get(bcm(pin.line)?).with_context(|| {
                format!("cannot claim GPIO {} for the {pin_name} button", pin.line)
            })?;
            let mut input = match pin.bias {
                Bias::PullUp => raw.into_input_pullup(),
                Bias::PullDown => raw.into_input_pulldown(),
                Bias::None => raw.into_input(),
            };
            let edges = edges.clone();
            let active_low = pin.active_low;
            input
                .set_async_interrupt(Trigger::Both, Some(debounce), move |event| {
                    let high = event.trigger == Trigger::RisingEdge;
                    let _ = edges.send(Edge {
                        pin: pin_name,
                        pressed: high != active_low,
                        at: event.timestamp,
                    });
                })
                .with_context(|| format!("cannot watch GPIO {}", pin.line))?;
            inputs.push(input);
        }
        let mut outputs = HashMap::new();
        for (output, pin) in super::outputs(settings) {
            let raw = gpio
                .get(bcm(pin.line)?)
                .with_context(|| format!("cannot claim GPIO {} for the {output:?}", pin.line))?;
            let out = if pin.active_low {
                raw.into_output_high()
            } else {
                raw.into_output_low()
            };
            outputs.insert(output, (out, pin));
        }
        Ok(RpiGpio {
            _inputs: inputs,
            outputs,
        })
    }
}

fn bcm(line: u32) -> anyhow::Result<u8> {
    u8::try_from(line)
        .ok()
        .filter(|l| *l <= 27)
        .ok_or_else(|| anyhow!("GPIO {line} is not a BCM pin of the header (0 to 27)"))
}

impl Indicators for RpiGpio {
    fn set(&mut self, output: Output, on: bool) -> anyhow::Result<()> {
        if let Some((pin, settings)) = self.outputs.get_mut(&output) {
            if on != settings.active_low {
                pin.set_high();
            } else {
                pin.set_low();
            }
        }
        Ok(())
    }
}

impl Drop for RpiGpio {
    fn drop(&mut self) {
        for (pin, settings) in self.outputs.values_mut() {
            if settings.active_low {
                pin.set_high();
            } else {
                pin.set_low();
            }
        }
    }
}
