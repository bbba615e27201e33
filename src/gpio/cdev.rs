//! Any board's GPIO through the Linux GPIO character device (`/dev/gpiochipN`): Orange Pi,
//! Rock, Jetson, and the Raspberry Pi too. Each button is one line request with edge
//! detection and kernel debounce, read on a thread of its own.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use gpiocdev::line::{Bias as LineBias, EdgeDetection, EdgeKind, Value};
use gpiocdev::request::Request;
use tokio::sync::mpsc;
use tracing::warn;

use super::settings::{Bias, GpioSettings};
use super::{Edge, Indicators, Output};

/// Open lines; outputs go dark on drop.
pub struct CdevGpio {
    outputs: HashMap<Output, (Request, u32)>,
}

impl CdevGpio {
    /// Claims the configured lines on the configured chip.
    pub fn open(
        settings: &GpioSettings,
        edges: mpsc::UnboundedSender<Edge>,
    ) -> anyhow::Result<Self> {
        let chip = settings.chip.as_str();
        if !std::path::Path::new(chip).exists() {
            anyhow::bail!(
                "no GPIO chip at {chip}: set gpio.chip to one of /dev/gpiochip*, or use --board dev on a machine without GPIO"
            );
        }
        for (pin_name, pin) in super::buttons(settings) {
            let mut builder = Request::builder();
            builder
                .on_chip(chip)
                .with_consumer("peercam")
                .with_line(pin.line)
                .as_input()
                .with_bias(match pin.bias {
                    Bias::PullUp => Some(LineBias::PullUp),
                    Bias::PullDown => Some(LineBias::PullDown),
                    Bias::None => None,
                })
                .with_edge_detection(EdgeDetection::BothEdges)
                .with_debounce_period(Duration::from_millis(settings.debounce_ms));
            if pin.active_low {
                builder.as_active_low();
            }
            let request = builder.request().with_context(|| {
                format!(
                    "cannot claim line {} of {chip} for the {pin_name} button",
                    pin.line
                )
            })?;
            let edges = edges.clone();
            std::thread::Builder::new()
                .name(format!("gpio-{pin_name}"))
                .spawn(move || {
                    loop {
                        match request.read_edge_event() {
                            Ok(event) => {
                                let edge = Edge {
                                    pin: pin_name,
                                    pressed: event.kind == EdgeKind::Rising,
                                    at: Duration::from_nanos(event.timestamp_ns),
                                };
                                if edges.send(edge).is_err() {
                                    return;
                                }
                            }
                            Err(err) => {
                                warn!(%err, button = pin_name, "cannot read the button; it stops working");
                                return;
                            }
                        }
                    }
                })?;
        }
        let mut outputs = HashMap::new();
        for (output, pin) in super::outputs(settings) {
            let mut builder = Request::builder();
            builder
                .on_chip(chip)
                .with_consumer("peercam")
                .with_line(pin.line)
                .as_output(Value::Inactive);
            if pin.active_low {
                builder.as_active_low();
            }
            let request = builder.request().with_context(|| {
                format!(
                    "cannot claim line {} of {chip} for the {output:?}",
                    pin.line
                )
            })?;
            outputs.insert(output, (request, pin.line));
        }
        Ok(CdevGpio { outputs })
    }
}

impl Indicators for CdevGpio {
    fn set(&mut self, output: Output, on: bool) -> anyhow::Result<()> {
        if let Some((request, line)) = self.outputs.get(&output) {
            let value = if on { Value::Active } else { Value::Inactive };
            request.set_value(*line, value)?;
        }
        Ok(())
    }
}

impl Drop for CdevGpio {
    fn drop(&mut self) {
        for (request, line) in self.outputs.values() {
            let _ = request.set_value(*line, Value::Inactive);
        }
    }
}
