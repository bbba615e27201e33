//! A viewer's side of a feed: its place in a stream's ring, and the handle its RTCP uses
//! to talk back (keyframe requests, bandwidth estimates).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::broadcast;

use super::Inner;
use crate::media::{Codec, Frame};

/// One viewer's view of one stream of the feed. Dropping it leaves the feed.
pub struct Subscription {
    feed: Arc<Inner>,
    codec: Codec,
    id: u64,
    rx: broadcast::Receiver<Frame>,
    need_keyframe: bool,
    epoch: Option<u64>,
    skipped: u64,
}

impl Subscription {
    pub(super) fn new(
        feed: Arc<Inner>,
        codec: Codec,
        id: u64,
        rx: broadcast::Receiver<Frame>,
    ) -> Self {
        Subscription {
            feed,
            codec,
            id,
            rx,
            need_keyframe: true,
            epoch: None,
            skipped: 0,
        }
    }

    /// The next frame this viewer can decode: after joining, lagging or a restart of the
    /// source that is the next keyframe. `None` once the feed is gone.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.rx.recv().await {
                Ok(frame) => {
                    if self.epoch != Some(frame.epoch) {
                        self.epoch = Some(frame.epoch);
                        self.need_keyframe = true;
                    }
                    if self.need_keyframe && !frame.keyframe {
                        self.count_skipped(1);
                        continue;
                    }
                    self.need_keyframe = false;
                    return Some(frame);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.count_skipped(missed);
                    self.need_keyframe = true;
                    self.feed.request_keyframe(self.codec);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Drops what is queued and asks for a keyframe: the viewer is ready to start.
    pub fn want_keyframe(&mut self) {
        self.rx = self.rx.resubscribe();
        self.need_keyframe = true;
        self.feed.request_keyframe(self.codec);
    }

    /// A handle for the parts of the call that talk back to the feed (RTCP).
    pub fn control(&self) -> FeedControl {
        FeedControl {
            feed: Arc::downgrade(&self.feed),
            codec: self.codec,
            viewer: self.id,
        }
    }

    /// The stream this subscription receives.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Frames this viewer missed or skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn count_skipped(&mut self, n: u64) {
        self.skipped += n;
        self.feed.counters.skipped.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.leave(self.codec, self.id);
    }
}

/// What a viewer's RTCP can ask of the feed: a keyframe, a bitrate.
#[derive(Clone)]
pub struct FeedControl {
    feed: Weak<Inner>,
    codec: Codec,
    viewer: u64,
}

impl FeedControl {
    /// The viewer lost the picture (PLI/FIR): a keyframe, shared with other requests.
    pub fn request_keyframe(&self) {
        if let Some(feed) = self.feed.upgrade() {
            feed.request_keyframe(self.codec);
        }
    }

    /// The viewer's receiver estimates it can take `bps` bits per second (REMB).
    pub fn report_estimate(&self, bps: u64) {
        if let Some(feed) = self.feed.upgrade() {
            feed.estimate(self.viewer, Some(bps));
        }
    }
}
