//! Keyframe coalescing: many viewers asking for a keyframe (joining, PLI, lagging) cost
//! the encoder few forced keyframes, and a forced keyframe that never came is asked again.

use std::time::Duration;

use tokio::time::Instant;

/// The window in which at most [`KEYFRAME_BURST`] keyframes are forced.
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Forced keyframes allowed within [`KEYFRAME_MIN_INTERVAL`]. Two, because viewers often
/// come in pairs a few tens of milliseconds apart (the bell rings the household's phones
/// at once; two browsers answer together): the second would otherwise ask just after the
/// first one's keyframe went out and wait the whole interval for a picture.
pub const KEYFRAME_BURST: usize = 2;

/// A forced keyframe not seen after this long is requested again.
pub const KEYFRAME_GIVE_UP: Duration = Duration::from_secs(1);

/// Decides when to force a keyframe so that many requests cost few keyframes.
///
/// Pure: the caller passes the current time, and gets back whether to force now.
#[derive(Debug, Default)]
pub struct KeyframeGate {
    pending_since: Option<Instant>,
    /// When the last [`KEYFRAME_BURST`] keyframes were forced, the oldest first.
    forced: std::collections::VecDeque<Instant>,
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
        if !self.may_force(now) {
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
        if self.deferred && self.pending_since.is_none() && self.may_force(now) {
            self.deferred = false;
            return self.force(now);
        }
        false
    }

    /// Whether fewer than [`KEYFRAME_BURST`] keyframes were forced in the interval
    /// before `now`.
    fn may_force(&self, now: Instant) -> bool {
        self.forced.len() < KEYFRAME_BURST
            || self
                .forced
                .front()
                .is_none_or(|t| now.duration_since(*t) >= KEYFRAME_MIN_INTERVAL)
    }

    fn force(&mut self, now: Instant) -> bool {
        self.pending_since = Some(now);
        if self.forced.len() == KEYFRAME_BURST {
            self.forced.pop_front();
        }
        self.forced.push_back(now);
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
    fn requests_around_one_keyframe_cost_one_force_and_a_pair_two() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        assert!(gate.request(t0));
        assert!(!gate.request(t0 + ms(10)), "one is on its way");
        assert!(!gate.on_frame(false, t0 + ms(33)));
        assert!(!gate.on_frame(true, t0 + ms(66)));
        // A viewer just after that keyframe went out gets one of its own at once.
        assert!(gate.request(t0 + ms(100)));
        assert!(!gate.on_frame(true, t0 + ms(133)));
        // A third in the interval is deferred, not lost: it goes out once the first
        // force is an interval old.
        assert!(!gate.request(t0 + ms(150)));
        assert!(!gate.on_frame(false, t0 + ms(200)));
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
        assert!(gate.request(t0 + ms(60)), "the second of a burst");
        assert!(!gate.on_frame(true, t0 + ms(90)));
        assert!(!gate.request(t0 + ms(120)), "too soon after two forces");
        // Past the interval, the deferred request goes out on the next frame, once.
        assert!(gate.on_frame(false, t0 + ms(250)));
        assert!(!gate.on_frame(false, t0 + ms(280)));
        // Its keyframe has not come: a frame after the interval does not force again.
        assert!(!gate.on_frame(false, t0 + ms(600)));
    }

    #[test]
    fn at_most_a_burst_of_forces_in_any_interval() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        let mut forced = Vec::new();
        // A viewer asking every 10 ms, each keyframe out 5 ms after it was forced.
        for step in 0..200u64 {
            let now = t0 + ms(step * 10);
            if gate.on_frame(false, now) || gate.request(now) {
                forced.push(now);
            }
            if gate.on_frame(true, now + ms(5)) {
                forced.push(now + ms(5));
            }
        }
        for window in forced.windows(KEYFRAME_BURST + 1) {
            let span = window[KEYFRAME_BURST].duration_since(window[0]);
            assert!(span >= KEYFRAME_MIN_INTERVAL, "{span:?}");
        }
        assert!(
            forced.len() >= 2 * 2000 / 250 - 1,
            "{} forces",
            forced.len()
        );
    }
}
