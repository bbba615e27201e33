//! Telling systemd the truth (`sd_notify`): READY once the camera is usable and the callee
//! registered, STATUS lines, watchdog pings from the device's own loop (so a hung loop
//! gets the service restarted), and STOPPING on the way down.
//!
//! The protocol is a datagram to the socket named by `$NOTIFY_SOCKET`; outside systemd
//! that variable is unset and every call here does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use tracing::debug;

/// A connection to the service manager, or nothing when not run by one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    ready: bool,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&path).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier {
            target,
            watchdog,
            last_ping: None,
            ready: false,
        }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            last_ping: None,
            ready: false,
        }
    }

    /// The service is up.
    pub fn ready(&mut self, status: &str) {
        self.ready = true;
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// What the service is doing, for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// The service is stopping.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Pings the watchdog if half its interval has passed since the last ping. Call it
    /// from the loop whose health the ping vouches for. systemd arms the watchdog once
    /// the service is ready, so pings start with READY.
    pub fn watchdog(&mut self, now: Instant) {
        let Some(interval) = self.watchdog.filter(|_| self.ready) else {
            return;
        };
        if self
            .last_ping
            .is_none_or(|last| now.duration_since(last) >= interval / 2)
        {
            self.last_ping = Some(now);
            self.send("WATCHDOG=1");
        }
    }

    /// How often [`Notifier::watchdog`] must be called at least, if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(err) = socket.send_to_addr(message.as_bytes(), address)
        {
            debug!(%err, "cannot notify the service manager");
        }
    }
}
