//! One encoder, many viewers.
//!
//! [`VideoFeed`] starts the camera pipeline when the first viewer subscribes and stops it
//! a little after the last one leaves. Every frame goes into a broadcast ring; a viewer
//! that falls more than the ring behind loses the frames it missed, is counted, and
//! resumes at the next keyframe: the camera and the other viewers never wait for it.
//! Keyframe requests (a viewer joining, a PLI) are coalesced across viewers by
//! [`KeyframeGate`], and a pipeline that fails is rebuilt after a growing pause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::Frame;
use super::pipeline::{KeyframeHandle, RunningPipeline};

/// Frames kept for viewers that read late; one second at 30 fps.
const RING_FRAMES: usize = 30;

/// Shortest gap between two forced keyframes.
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// A forced keyframe not seen after this long is requested again.
const KEYFRAME_GIVE_UP: Duration = Duration::from_secs(1);

/// Pause before the first rebuild of a failed pipeline; it doubles up to the maximum.
const RESTART_PAUSE: Duration = Duration::from_millis(500);
const RESTART_PAUSE_MAX: Duration = Duration::from_secs(30);

/// A pipeline that ran this long before failing starts the pauses from the beginning.
const STABLE_RUN: Duration = Duration::from_secs(30);

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

/// Counters of a feed, for logs, `status` and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FeedStats {
    /// Access units the encoder produced.
    pub frames: u64,
    /// Of those, keyframes.
    pub keyframes: u64,
    /// Keyframes peercam asked the encoder for.
    pub forced_keyframes: u64,
    /// Frames viewers missed because they lagged, or skipped waiting for a keyframe.
    pub skipped: u64,
    /// Times the pipeline was started.
    pub starts: u64,
    /// Times it failed.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    keyframes: AtomicU64,
    forced_keyframes: AtomicU64,
    skipped: AtomicU64,
    starts: AtomicU64,
    failures: AtomicU64,
}

struct State {
    viewers: usize,
    running: Option<RunningPipeline>,
    keyframe: Option<KeyframeHandle>,
    epoch: u64,
    gate: KeyframeGate,
    restart_pause: Duration,
    started_at: Instant,
}

struct Inner {
    description: String,
    idle_stop: Option<Duration>,
    frames: broadcast::Sender<Frame>,
    state: Mutex<State>,
    failures: mpsc::UnboundedSender<(u64, String)>,
    counters: Counters,
}

/// The shared camera feed. Cheap to clone.
#[derive(Clone)]
pub struct VideoFeed {
    inner: Arc<Inner>,
}

impl VideoFeed {
    /// A feed for the pipeline `description` (see [`super::pipeline::describe`]). It
    /// stops the pipeline `idle_stop` after the last viewer left, or never if `None`.
    /// Must be called inside a tokio runtime: it starts the supervising task.
    pub fn new(description: String, idle_stop: Option<Duration>) -> Self {
        let (failures, failure_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            description,
            idle_stop,
            frames: broadcast::channel(RING_FRAMES).0,
            state: Mutex::new(State {
                viewers: 0,
                running: None,
                keyframe: None,
                epoch: 0,
                gate: KeyframeGate::default(),
                restart_pause: RESTART_PAUSE,
                started_at: Instant::now(),
            }),
            failures,
            counters: Counters::default(),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), failure_rx));
        VideoFeed { inner }
    }

    /// Joins the feed, starting the pipeline if it is not running. The subscription asks
    /// for a keyframe when its viewer is ready ([`Subscription::want_keyframe`]).
    pub fn subscribe(&self) -> anyhow::Result<Subscription> {
        let rx = self.inner.frames.subscribe();
        {
            let mut state = self.inner.lock();
            if state.running.is_none() {
                self.inner.start(&mut state)?;
            }
            state.viewers += 1;
        }
        Ok(Subscription {
            feed: self.inner.clone(),
            rx,
            need_keyframe: true,
            epoch: None,
            skipped: 0,
        })
    }

    /// Asks for a keyframe soon, shared with every other request around the same time.
    pub fn request_keyframe(&self) {
        self.inner.request_keyframe();
    }

    /// Number of current subscriptions.
    pub fn viewers(&self) -> usize {
        self.inner.lock().viewers
    }

    /// Whether the camera pipeline is running now.
    pub fn is_running(&self) -> bool {
        self.inner.lock().running.is_some()
    }

    /// The counters so far.
    pub fn stats(&self) -> FeedStats {
        let c = &self.inner.counters;
        FeedStats {
            frames: c.frames.load(Ordering::Relaxed),
            keyframes: c.keyframes.load(Ordering::Relaxed),
            forced_keyframes: c.forced_keyframes.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            starts: c.starts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Makes the running pipeline fail as a camera error would (for tests and
    /// `peercam check`): the supervisor rebuilds it.
    pub fn inject_failure(&self, why: &str) {
        let epoch = self.inner.lock().epoch;
        let _ = self.inner.failures.send((epoch, why.to_owned()));
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(self: &Arc<Self>, state: &mut State) -> anyhow::Result<()> {
        let epoch = state.epoch + 1;
        let on_frame = {
            let feed = Arc::downgrade(self);
            move |frame: Frame| {
                if let Some(feed) = feed.upgrade() {
                    feed.deliver(frame);
                }
            }
        };
        let on_error = {
            let failures = self.failures.clone();
            move |why: String| {
                let _ = failures.send((epoch, why));
            }
        };
        let running = RunningPipeline::start(&self.description, epoch, on_frame, on_error)
            .context("camera unavailable")?;
        info!(epoch, "camera pipeline started");
        state.epoch = epoch;
        state.keyframe = Some(running.keyframe_handle());
        state.running = Some(running);
        state.gate = KeyframeGate::default();
        state.started_at = Instant::now();
        self.counters.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn deliver(&self, frame: Frame) {
        let force = {
            let mut state = self.lock();
            if frame.epoch != state.epoch {
                return;
            }
            state
                .gate
                .on_frame(frame.keyframe, Instant::now())
                .then(|| state.keyframe.clone())
                .flatten()
        };
        if let Some(handle) = force {
            self.counters
                .forced_keyframes
                .fetch_add(1, Ordering::Relaxed);
            handle.force();
        }
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        if frame.keyframe {
            self.counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        // No receiver is not an error: the pipeline lingers after the last viewer.
        let _ = self.frames.send(frame);
    }

    fn request_keyframe(&self) {
        let handle = {
            let mut state = self.lock();
            state
                .gate
                .request(Instant::now())
                .then(|| state.keyframe.clone())
                .flatten()
        };
        if let Some(handle) = handle {
            self.counters
                .forced_keyframes
                .fetch_add(1, Ordering::Relaxed);
            handle.force();
        }
    }

    fn leave(self: &Arc<Self>) {
        let epoch = {
            let mut state = self.lock();
            state.viewers = state.viewers.saturating_sub(1);
            if state.viewers > 0 {
                return;
            }
            state.epoch
        };
        let Some(linger) = self.idle_stop else {
            return;
        };
        let feed = Arc::downgrade(self);
        let stop = move || {
            if let Some(feed) = feed.upgrade() {
                feed.stop_if_idle(epoch);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !linger.is_zero() => {
                runtime.spawn(async move {
                    tokio::time::sleep(linger).await;
                    // Stopping blocks until GStreamer's threads have joined.
                    let _ = tokio::task::spawn_blocking(stop).await;
                });
            }
            _ => stop(),
        }
    }

    fn stop_if_idle(&self, epoch: u64) {
        let stopped = {
            let mut state = self.lock();
            if state.viewers > 0 || state.epoch != epoch {
                return;
            }
            state.keyframe = None;
            state.running.take()
        };
        if stopped.is_some() {
            drop(stopped);
            info!("nobody watches: camera pipeline stopped");
        }
    }
}

async fn supervise(feed: Weak<Inner>, mut failures: mpsc::UnboundedReceiver<(u64, String)>) {
    while let Some((epoch, why)) = failures.recv().await {
        let Some(inner) = feed.upgrade() else {
            return;
        };
        let (failed, mut pause) = {
            let mut state = inner.lock();
            if state.epoch != epoch || state.running.is_none() {
                continue;
            }
            if state.started_at.elapsed() > STABLE_RUN {
                state.restart_pause = RESTART_PAUSE;
            }
            state.keyframe = None;
            (state.running.take(), state.restart_pause)
        };
        inner.counters.failures.fetch_add(1, Ordering::Relaxed);
        drop(inner);
        let _ = tokio::task::spawn_blocking(move || drop(failed)).await;
        warn!(%why, "camera pipeline failed; rebuilding it");
        loop {
            info!(
                pause_ms = pause.as_millis() as u64,
                "waiting before the rebuild"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RESTART_PAUSE_MAX);
            let Some(inner) = feed.upgrade() else {
                return;
            };
            let mut state = inner.lock();
            state.restart_pause = pause;
            if state.viewers == 0 || state.running.is_some() {
                break;
            }
            match inner.start(&mut state) {
                Ok(()) => break,
                Err(err) => warn!("{err:#}"),
            }
        }
    }
}

/// One viewer's view of the feed. Dropping it leaves the feed.
pub struct Subscription {
    feed: Arc<Inner>,
    rx: broadcast::Receiver<Frame>,
    need_keyframe: bool,
    epoch: Option<u64>,
    skipped: u64,
}

impl Subscription {
    /// The next frame this viewer can decode: after joining, lagging or a pipeline
    /// restart that is the next keyframe. `None` once the feed is gone.
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
                    self.feed.request_keyframe();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Drops what is queued and asks for a keyframe: the viewer is ready to start, or
    /// reported a lost picture.
    pub fn want_keyframe(&mut self) {
        self.rx = self.rx.resubscribe();
        self.need_keyframe = true;
        self.feed.request_keyframe();
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
        self.feed.leave();
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
}
