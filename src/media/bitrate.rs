//! The encoder's bitrate, from the viewers' bandwidth estimates (REMB).

use std::time::Duration;

use tokio::time::Instant;

/// Share of the slowest estimate the encoder aims at, leaving room for RTP overhead.
/// Browsers' REMB tracks the rate they receive (and grows above it while the path is
/// clear), so a larger margin would drag the bitrate down step after step.
pub const HEADROOM: f64 = 0.95;
/// Relative change below which the encoder is left alone.
pub const HYSTERESIS: f64 = 1.0 / 6.0;
/// Wait after a change before lowering again.
pub const DOWN_HOLD: Duration = Duration::from_millis(500);
/// Wait after a change before raising.
pub const UP_HOLD: Duration = Duration::from_secs(3);

/// Turns the viewers' bandwidth estimates into one encoder bitrate: the slowest viewer's
/// estimate (with headroom), within the board's bounds, changed only when it moved by
/// more than a sixth, down quickly and up slowly.
///
/// Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct BitrateController {
    min_kbps: u32,
    max_kbps: u32,
    current_kbps: u32,
    configured_kbps: u32,
    last_change: Option<Instant>,
}

impl BitrateController {
    /// Starts at `configured_kbps`, and never leaves `min_kbps..=max_kbps`.
    pub fn new(configured_kbps: u32, min_kbps: u32, max_kbps: u32) -> Self {
        BitrateController {
            min_kbps,
            max_kbps,
            current_kbps: configured_kbps,
            configured_kbps,
            last_change: None,
        }
    }

    /// The bitrate the encoder runs at now.
    pub fn current_kbps(&self) -> u32 {
        self.current_kbps
    }

    /// Takes the viewers' latest estimates (bits per second; none: back to the configured
    /// bitrate) and returns a new encoder bitrate when one is due.
    pub fn update(
        &mut self,
        estimates: impl IntoIterator<Item = u64>,
        now: Instant,
    ) -> Option<u32> {
        let target = match estimates.into_iter().min() {
            Some(bps) => {
                ((bps as f64 * HEADROOM / 1000.0) as u32).clamp(self.min_kbps, self.max_kbps)
            }
            None => self.configured_kbps,
        };
        let current = self.current_kbps as f64;
        let change = (target as f64 - current) / current;
        if change.abs() <= HYSTERESIS && !(target == self.min_kbps && target < self.current_kbps) {
            return None;
        }
        let hold = if change < 0.0 { DOWN_HOLD } else { UP_HOLD };
        if self
            .last_change
            .is_some_and(|t| now.duration_since(t) < hold)
        {
            return None;
        }
        self.current_kbps = target;
        self.last_change = Some(now);
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bitrate_follows_the_slowest_viewer_within_bounds() {
        let t0 = Instant::now();
        let mut b = BitrateController::new(2000, 300, 4000);
        // Small moves are ignored.
        assert_eq!(b.update([2_200_000], t0), None);
        // The slowest of two viewers wins, with headroom.
        assert_eq!(b.update([5_000_000, 1_000_000], t0), Some(950));
        // Down again quickly is held for a moment, then allowed.
        assert_eq!(b.update([500_000], t0 + ms(100)), None);
        assert_eq!(b.update([500_000], t0 + ms(600)), Some(475));
        // Never under the minimum, never over the maximum.
        assert_eq!(b.update([10_000], t0 + ms(1200)), Some(300));
        assert_eq!(
            b.update([100_000_000], t0 + ms(2000)),
            None,
            "up waits longer"
        );
        assert_eq!(b.update([100_000_000], t0 + ms(5000)), Some(4000));
        // Nobody reports: back to the configured bitrate.
        assert_eq!(b.update([], t0 + ms(9000)), Some(2000));
    }

    #[test]
    fn a_change_of_a_sixth_or_less_is_ignored_either_way() {
        let t0 = Instant::now();
        let mut b = BitrateController::new(1200, 100, 5000);
        // 1200 kbps ± 1/6 is 1000..=1400; estimates are divided by the headroom first.
        let bps = |kbps: f64| (kbps * 1000.0 / HEADROOM).ceil() as u64;
        assert_eq!(b.update([bps(1000.0)], t0), None);
        assert_eq!(b.update([bps(1400.0)], t0 + ms(5000)), None);
        assert_eq!(b.update([bps(1401.0)], t0 + ms(5000)), Some(1401));
        assert_eq!(b.current_kbps(), 1401);
    }
}
