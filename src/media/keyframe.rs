//! Keyframe coalescing: many viewers asking for a keyframe (joining, PLI, lagging) cost
//! the encoder one forced keyframe, and a forced keyframe that never came is asked again.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest gap between two forced keyframes.
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// A forced keyframe not seen after this long is requested again.
pub const KEYFRAME_GIVE_UP: Duration = Duration::from_secs(1);

/// Decides when to force a keyframe so that many requests cost one keyframe.
///
/// Pure: the caller passes the current time, and gets back whether to force now.
#[derive(Debug, Default)]
pub struct KeyframeGate {
    pending_since: Option<Instant>,
    last_forced: Option<Instant>,
    deferred: bool,
}

impl KeyframeGate {
    /// A viewer needs a keyframe. Returns true when the encoder must be asked now.
    pub fn request(&mut self, now: Instant) -> bool {
        if let Some(since) = self.pending_since
            && now.duration_since(since) < KEYFRAME_GIVE_UP
        {
            // One is on its way and will reach every current subscriber.
            return false;
        }
        if self
            .last_forced
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_MIN_INTERVAL)
        {
            self.deferred = true;
            return false;
        }
        self.force(now)
    }

    /// A frame left the encoder. Returns true when a deferred request is due now.
    pub fn on_frame(&mut self, keyframe: bool, now: Instant) -> bool {
        if keyframe {
            self.pending_since = None;
        }
        if self.deferred && self.pending_since.is_none() {
            let due = self
                .last_forced
                .is_none_or(|t| now.duration_since(t) >= KEYFRAME_MIN_INTERVAL);
            if due {
                self.deferred = false;
                return self.force(now);
            }
        }
        false
    }

    fn force(&mut self, now: Instant) -> bool {
        self.pending_since = Some(now);
        self.last_forced = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn requests_around_one_keyframe_cost_one_force() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        assert!(gate.request(t0));
        assert!(!gate.request(t0 + ms(10)));
        assert!(!gate.on_frame(false, t0 + ms(33)));
        assert!(!gate.on_frame(true, t0 + ms(66)));
        // Late request after the keyframe already went out: deferred, not lost.
        assert!(!gate.request(t0 + ms(100)));
        assert!(!gate.on_frame(false, t0 + ms(133)));
        assert!(gate.on_frame(false, t0 + ms(266)));
        assert!(!gate.on_frame(false, t0 + ms(300)));
    }

    #[test]
    fn a_lost_force_is_retried() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        assert!(gate.request(t0));
        assert!(!gate.request(t0 + ms(500)));
        assert!(gate.request(t0 + ms(1001)));
    }

    #[test]
    fn a_deferred_request_waits_for_the_pending_keyframe() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        assert!(gate.request(t0));
        assert!(!gate.on_frame(true, t0 + ms(30)));
        assert!(!gate.request(t0 + ms(60)), "too soon after the last force");
        // Past the interval, the deferred request goes out on the next frame, once.
        assert!(gate.on_frame(false, t0 + ms(250)));
        assert!(!gate.on_frame(false, t0 + ms(280)));
        // Its keyframe has not come: a frame after the interval does not force again.
        assert!(!gate.on_frame(false, t0 + ms(600)));
    }
}
