//! The pause before reconnecting to a server that went away: short at first, doubling
//! with each failure up to a ceiling, and jittered so that many devices dropped at once
//! (a phonebook restart) do not all come back in the same instant.

use std::ops::Range;
use std::time::Duration;

/// The spread of each pause around its nominal length, as a factor.
pub const JITTER: Range<f64> = 0.8..1.2;

/// Reconnect pauses: `first`, then doubling up to `max`, each jittered by [`JITTER`].
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The pauses of the phonebook and PeerJS clients: from 250 ms up to 10 s.
    pub const fn reconnect() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// Back to the first pause: the last connection worked.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The next pause, jittered at random.
    pub fn pause(&mut self) -> Duration {
        self.pause_with(rand::random_range(JITTER))
    }

    /// The next pause, scaled by `jitter` (held to [`JITTER`]); the one after is twice as
    /// long, up to the ceiling.
    pub fn pause_with(&mut self, jitter: f64) -> Duration {
        let jitter = if jitter.is_finite() {
            jitter.clamp(JITTER.start, JITTER.end)
        } else {
            1.0
        };
        let pause = self.next.mul_f64(jitter);
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<_> = (0..5).map(|_| backoff.pause_with(1.0)).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500].map(Duration::from_millis));
        backoff.reset();
        assert_eq!(backoff.pause_with(1.0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_scales_each_pause_within_its_range() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        assert_eq!(backoff.pause_with(0.8), Duration::from_millis(1600 / 2));
        // Out of range or not a number: held to the range, or none.
        assert_eq!(backoff.pause_with(5.0), Duration::from_millis(2400));
        assert_eq!(backoff.pause_with(f64::NAN), Duration::from_secs(4));
        for _ in 0..20 {
            let pause = backoff.pause();
            assert!(
                (Duration::from_millis(6400)..=Duration::from_millis(9600)).contains(&pause),
                "{pause:?}"
            );
        }
    }
}
