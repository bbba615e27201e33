//! Opening the backend a board's profile names: rppal on a Raspberry Pi, the GPIO
//! character device elsewhere, or no pins at all (outputs logged).

use anyhow::bail;
use tokio::sync::mpsc;

use super::settings::{GpioBackend, GpioSettings};
use super::{Edge, Indicators, simulated};

/// Opens the board's pins: buttons start sending edges on `edges`; the returned outputs
/// go dark when dropped. With backend `none` there are no pins and the outputs are logged.
pub fn open(
    settings: &GpioSettings,
    edges: mpsc::UnboundedSender<Edge>,
) -> anyhow::Result<Box<dyn Indicators>> {
    match settings.backend {
        GpioBackend::None => {
            drop(edges);
            Ok(Box::new(simulated::LoggedIndicators::default()))
        }
        #[cfg(feature = "rpi")]
        GpioBackend::Rppal => Ok(Box::new(super::rpi::RpiGpio::open(settings, edges)?)),
        #[cfg(feature = "cdev")]
        GpioBackend::Cdev => Ok(Box::new(super::cdev::CdevGpio::open(settings, edges)?)),
        #[allow(unreachable_patterns)]
        other => bail!(
            "this build has no {other:?} GPIO backend: rebuild with the feature {} (cargo build --features {})",
            if other == GpioBackend::Rppal {
                "rpi"
            } else {
                "cdev"
            },
            if other == GpioBackend::Rppal {
                "rpi"
            } else {
                "cdev"
            },
        ),
    }
}
