//! Telling systemd the truth (`sd_notify`): READY once the camera is usable and the callee
//! registered, STATUS lines, watchdog pings from the device's own loop (so a hung loop
//! gets the service restarted), and STOPPING on the way down.
//!
//! The protocol is a datagram to the socket named by `$NOTIFY_SOCKET`; outside systemd
//! that variable is unset and every call here does nothing.
//!
//! Socket activation goes the other way: a service manager (or a test harness) that holds
//! the phonebook's listening socket passes it as fd 3 with `$LISTEN_FDS` and `$LISTEN_PID`
//! ([`inherited_listener`]), so a restarted phonebook keeps its port with no moment in
//! which another program could take it.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use tracing::debug;

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: std::os::fd::RawFd = 3;

/// Why a socket passed by socket activation cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `$LISTEN_FDS` or `$LISTEN_PID` is not a number.
    #[error("{0} is not a number: {1:?}")]
    NotANumber(&'static str, String),
    /// More (or fewer) sockets than the one phonebook listener.
    #[error("socket activation passed {0} sockets; the phonebook takes exactly one")]
    Count(u32),
    /// Descriptor 3 is not a listening TCP socket.
    #[error("the socket passed as descriptor 3 is not a listening TCP socket: {0}")]
    NotListening(std::io::Error),
    /// The socket was taken already: a descriptor has one owner.
    #[error("the passed socket was taken already")]
    Taken,
}

/// The listening TCP socket this process was started with by socket activation (as
/// `sd_listen_fds` reads `$LISTEN_FDS` and `$LISTEN_PID`), or `None` when it was not
/// given one (the variables are unset, or meant for another process). It can be taken
/// once.
pub fn inherited_listener() -> Result<Option<std::net::TcpListener>, ActivationError> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::sync::atomic::{AtomicBool, Ordering};

    static TAKEN: AtomicBool = AtomicBool::new(false);
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::NotANumber("LISTEN_PID", pid.clone()))?;
    // The variables are inherited by children too; only the process named owns the fds.
    if pid != std::process::id() {
        return Ok(None);
    }
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| ActivationError::NotANumber("LISTEN_FDS", count.clone()))?;
    if count != 1 {
        return Err(ActivationError::Count(count));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ActivationError::Taken);
    }
    let fd = LISTEN_FDS_START;
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `accepting`; a descriptor that is
    // not a socket only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut accepting).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(ActivationError::NotListening(
            std::io::Error::last_os_error(),
        ));
    }
    if accepting == 0 {
        return Err(ActivationError::NotListening(std::io::Error::other(
            "the socket does not accept connections",
        )));
    }
    // SAFETY: descriptor 3 was handed to this process (LISTEN_PID is ours) and is a
    // listening socket; TAKEN makes this the only owner.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .map_err(ActivationError::NotListening)?;
    // Not to be inherited by what this process starts (GStreamer helpers, say).
    // SAFETY: F_SETFD on a descriptor this process owns.
    unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    listener
        .set_nonblocking(true)
        .map_err(ActivationError::NotListening)?;
    Ok(Some(listener))
}

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
