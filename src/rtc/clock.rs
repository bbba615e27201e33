//! RTP timestamps from the encoder's presentation times.

use std::time::Duration;

use crate::media::Frame;

/// Maps frames' PTS to an RTP timestamp (90 kHz for video, 48 kHz for Opus) that only
/// moves forward, across pipeline restarts (a new epoch starts its PTS again near zero)
/// and viewers that skip frames.
#[derive(Debug, Clone)]
pub struct RtpClock {
    rate: u64,
    start: u32,
    anchor: Option<Anchor>,
    last: u32,
    last_step: u32,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    epoch: u64,
    pts: Duration,
    rtp: u32,
}

impl RtpClock {
    /// A clock running at `rate` Hz whose first timestamp is `start` (random, as
    /// RFC 3550 asks).
    pub fn new(start: u32, rate: u32) -> Self {
        RtpClock {
            rate: rate as u64,
            start,
            anchor: None,
            last: start,
            // One video frame at 30 fps, or one 20 ms audio packet, until measured.
            last_step: rate / 50,
        }
    }

    /// The RTP timestamp for `frame`.
    pub fn timestamp(&mut self, frame: &Frame) -> u32 {
        let anchor = match self.anchor {
            Some(a) if a.epoch == frame.epoch && frame.pts >= a.pts => a,
            Some(_) => {
                // A new pipeline run: continue one frame interval after the last picture.
                let a = Anchor {
                    epoch: frame.epoch,
                    pts: frame.pts,
                    rtp: self.last.wrapping_add(self.last_step),
                };
                self.anchor = Some(a);
                a
            }
            None => {
                let a = Anchor {
                    epoch: frame.epoch,
                    pts: frame.pts,
                    rtp: self.start,
                };
                self.anchor = Some(a);
                a
            }
        };
        let ticks = (frame.pts - anchor.pts).as_nanos() * self.rate as u128 / 1_000_000_000;
        let ts = anchor.rtp.wrapping_add(ticks as u32);
        let step = ts.wrapping_sub(self.last);
        if step > 0 && (step as u64) < self.rate {
            self.last_step = step;
        }
        self.last = ts;
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(epoch: u64, ms: u64) -> Frame {
        Frame::new(Bytes::new(), Duration::from_millis(ms), false, epoch)
    }

    #[test]
    fn follows_pts_at_90_khz() {
        let mut clock = RtpClock::new(1000, 90_000);
        assert_eq!(clock.timestamp(&frame(1, 500)), 1000);
        assert_eq!(clock.timestamp(&frame(1, 533)), 1000 + 2970);
        // A skipped stretch keeps real time.
        assert_eq!(clock.timestamp(&frame(1, 1500)), 1000 + 90_000);
    }

    #[test]
    fn a_restart_continues_forward() {
        let mut clock = RtpClock::new(u32::MAX - 10, 90_000);
        clock.timestamp(&frame(1, 0));
        let before = clock.timestamp(&frame(1, 100));
        let after = clock.timestamp(&frame(2, 3));
        assert_eq!(after, before.wrapping_add(9000));
    }
}
