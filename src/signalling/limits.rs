//! How much one client may ask of the phonebook, and the budgets that keep one client's
//! traffic from costing anybody else their connection.
//!
//! A leaf module: the config (`[limits]`) and the server both use it, and it uses
//! nothing of the crate.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How many times the message allowance a connection gets for the messages of calls it
/// answers (a camera relays every call's answer and candidates).
pub const CALLEE_RATE_FACTOR: u32 = 10;

/// Frames above this size close the connection outright (the phonebook answers frames
/// between its `MAX_MESSAGE_BYTES` and this with a `too_large` error).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Unanswered calls one connection may have at once, unless set otherwise.
pub const DEFAULT_PENDING_CALLS: usize = 4;

/// How much one client may ask of the phonebook; each limit answers with a stable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Messages per second one connection may send, on average (`rate_limited`).
    pub messages_per_second: u32,
    /// Messages one connection may send in a burst above that rate.
    pub message_burst: u32,
    /// WebSocket connections open at once from one IP address (HTTP 429 on the upgrade).
    pub connections_per_address: usize,
    /// TCP connections open at once from one IP address, WebSockets and page loads
    /// together; more are closed as soon as they are accepted.
    pub tcp_connections_per_address: usize,
    /// TCP connections open at once in all; more are closed as soon as they are accepted,
    /// so the daemon never runs out of file descriptors.
    pub tcp_connections: usize,
    /// Seconds a client may take to send a request's headers, and an idle HTTP
    /// connection stays open between requests.
    pub header_timeout_secs: u64,
    /// Unanswered calls one connection may have at once (`too_many_calls`).
    pub pending_calls: usize,
    /// Names one connection may hold at once (`too_many_names`).
    pub names_per_connection: usize,
    /// ICE candidates each end may send in one call (`too_many_candidates`).
    pub candidates_per_call: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            messages_per_second: 20,
            message_burst: 60,
            connections_per_address: 64,
            tcp_connections_per_address: 128,
            tcp_connections: 1024,
            header_timeout_secs: 10,
            pending_calls: DEFAULT_PENDING_CALLS,
            names_per_connection: 8,
            candidates_per_call: 100,
        }
    }
}

impl Limits {
    /// How long a client may take over a request's headers.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }
}

/// Unread messages one sender may have waiting at one receiver: beyond this the sender's
/// messages to it are refused (`rate_limited`), so a flood is charged to whoever sends it
/// and a receiver's queue never fills up from one sender.
pub const RELAY_WINDOW: Usage = Usage {
    messages: 128,
    bytes: 256 * 1024,
};

/// Unread relayed messages one receiver may have waiting from all senders together.
pub const RECEIVER_WINDOW: Usage = Usage {
    messages: 4096,
    bytes: 4 * 1024 * 1024,
};

/// Unread callee-list messages one listener may have waiting; beyond this they are
/// dropped for it, and it gets the whole list again once it has read what it had.
pub const LIST_WINDOW: Usage = Usage {
    messages: 256,
    bytes: 1024 * 1024,
};

/// Unread answers to a connection's own requests (errors, welcome): a connection that
/// piles up more than this without reading is disconnected: that one is its own doing.
pub const REPLY_WINDOW: Usage = Usage {
    messages: 1024,
    bytes: 1024 * 1024,
};

/// A frame the server cannot write for this long means the client stopped reading.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// A number of messages and their size in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: usize,
    /// Their bytes.
    pub bytes: usize,
}

impl Usage {
    /// Whether one more message of `bytes` fits under `window`. A message larger than the
    /// whole window still fits when nothing is waiting, so every message can go one day.
    pub fn fits(&self, bytes: usize, window: Usage) -> bool {
        self.messages == 0
            || (self.messages < window.messages && self.bytes + bytes <= window.bytes)
    }

    /// Counts one more message of `bytes`.
    pub fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }

    /// Counts one message of `bytes` less.
    pub fn remove(&mut self, bytes: usize) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// The key the per-address limits count by: an IPv4 address, or the /64 an IPv6 address
/// belongs to (one host gets a whole /64, so counting single IPv6 addresses limits
/// nobody).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// A token bucket: `rate` messages a second on average, `burst` at once.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimit {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one message's worth at `now`; false when the bucket is empty.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 5, start);
        assert_eq!((0..8).filter(|_| limit.allow(start)).count(), 5);
        // 0.3 s later three more have dripped in.
        let later = start + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| limit.allow(later)).count(), 3);
        // A long pause refills no more than the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limit.allow(much_later)).count(), 5);
    }

    #[test]
    fn a_window_counts_messages_and_bytes() {
        let window = Usage {
            messages: 3,
            bytes: 100,
        };
        let mut used = Usage::default();
        // Even an oversized message goes when nothing waits.
        assert!(used.fits(500, window));
        used.add(40);
        assert!(used.fits(60, window));
        assert!(!used.fits(61, window));
        used.add(10);
        used.add(10);
        assert!(!used.fits(1, window), "three messages are the most");
        used.remove(40);
        assert!(used.fits(1, window));
        assert_eq!(
            used,
            Usage {
                messages: 2,
                bytes: 20
            }
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
    }
}
