//! One encoder, many viewers.
//!
//! A [`Feed`] starts its pipeline when the first viewer subscribes and stops it a little
//! after the last one leaves. Each encoded stream the pipeline offers (H.264, the
//! on-demand VP8 branch, Opus) goes into a broadcast ring of its own; a viewer that falls
//! more than the ring behind loses the frames it missed, is counted, and resumes at the
//! next keyframe: the camera and the other viewers never wait for it. Keyframe requests
//! (a viewer joining, a PLI) are coalesced across viewers by [`KeyframeGate`]; the
//! viewers' bandwidth estimates are folded into one encoder bitrate by
//! [`BitrateController`]; a pipeline that fails is rebuilt after a growing pause.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::running::{KeyframeHandle, RunningPipeline};
use super::{Codec, Frame};

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

/// The valve in front of the on-demand VP8 encoder.
const VP8_VALVE: &str = "vp8valve";

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

/// Share of the slowest estimate the encoder aims at, leaving room for RTP overhead.
/// Browsers' REMB tracks the rate they receive (and grows above it while the path is
/// clear), so a larger margin would drag the bitrate down step after step.
const HEADROOM: f64 = 0.95;
/// Relative change below which the encoder is left alone.
const HYSTERESIS: f64 = 1.0 / 6.0;
/// Wait after a change before lowering again, and before raising.
const DOWN_HOLD: Duration = Duration::from_millis(500);
const UP_HOLD: Duration = Duration::from_secs(3);

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

/// Counters of a feed, for logs, `status` and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FeedStats {
    /// Encoded frames the pipeline produced (every stream).
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
    /// The encoder's bitrate now, in kbit/s.
    pub bitrate_kbps: u64,
    /// Times the bitrate was changed to follow the viewers.
    pub bitrate_changes: u64,
    /// Bandwidth estimates (REMB) received from viewers.
    pub estimates: u64,
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    keyframes: AtomicU64,
    forced_keyframes: AtomicU64,
    skipped: AtomicU64,
    starts: AtomicU64,
    failures: AtomicU64,
    bitrate_changes: AtomicU64,
    estimates: AtomicU64,
}

/// Retunes the running encoder to a bitrate in kbit/s.
pub type Retune = Arc<dyn Fn(&RunningPipeline, u32) + Send + Sync>;

struct Stream {
    frames: broadcast::Sender<Frame>,
    gate: KeyframeGate,
    keyframe: Option<KeyframeHandle>,
    viewers: usize,
}

struct State {
    streams: HashMap<Codec, Stream>,
    running: Option<RunningPipeline>,
    epoch: u64,
    restart_pause: Duration,
    started_at: Instant,
    estimates: HashMap<u64, u64>,
    bitrate: Option<BitrateController>,
}

impl State {
    fn viewers(&self) -> usize {
        self.streams.values().map(|s| s.viewers).sum()
    }
}

struct Inner {
    name: &'static str,
    description: String,
    idle_stop: Option<Duration>,
    retune: Option<Retune>,
    state: Mutex<State>,
    failures: mpsc::UnboundedSender<(u64, String)>,
    counters: Counters,
    next_viewer: AtomicU64,
}

/// A shared encoded feed (the camera, or the microphone). Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

/// How a feed adapts its encoder's bitrate.
pub struct BitrateSettings {
    /// Start here, and come back here when no viewer reports an estimate.
    pub configured_kbps: u32,
    /// Never below.
    pub min_kbps: u32,
    /// Never above.
    pub max_kbps: u32,
    /// Applies a new bitrate to the running encoder.
    pub retune: Retune,
}

impl Feed {
    /// A feed named `name` (for logs) for the pipeline `description`. It stops the
    /// pipeline `idle_stop` after the last viewer left, or never if `None`. Must be called
    /// inside a tokio runtime: it starts the supervising task.
    pub fn new(
        name: &'static str,
        description: String,
        idle_stop: Option<Duration>,
        bitrate: Option<BitrateSettings>,
    ) -> Self {
        let (failures, failure_rx) = mpsc::unbounded_channel();
        let streams = Codec::ALL
            .into_iter()
            .map(|codec| {
                (
                    codec,
                    Stream {
                        frames: broadcast::channel(RING_FRAMES).0,
                        gate: KeyframeGate::default(),
                        keyframe: None,
                        viewers: 0,
                    },
                )
            })
            .collect();
        let (controller, retune) = match bitrate {
            Some(b) => (
                Some(BitrateController::new(
                    b.configured_kbps,
                    b.min_kbps,
                    b.max_kbps,
                )),
                Some(b.retune),
            ),
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            name,
            description,
            idle_stop,
            retune,
            state: Mutex::new(State {
                streams,
                running: None,
                epoch: 0,
                restart_pause: RESTART_PAUSE,
                started_at: Instant::now(),
                estimates: HashMap::new(),
                bitrate: controller,
            }),
            failures,
            counters: Counters::default(),
            next_viewer: AtomicU64::new(1),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), failure_rx));
        Feed { inner }
    }

    /// Joins the `codec` stream, starting the pipeline if it is not running. Fails when
    /// the pipeline cannot start or does not offer `codec`.
    pub fn subscribe(&self, codec: Codec) -> anyhow::Result<Subscription> {
        let mut guard = self.inner.lock();
        if guard.running.is_none() {
            self.inner.start(&mut guard)?;
        }
        let state = &mut *guard;
        let running = state.running.as_ref().expect("started above");
        if !running.has(codec) {
            bail!(
                "this board's {} pipeline has no {codec:?} encoder",
                self.inner.name
            );
        }
        let stream = state
            .streams
            .get_mut(&codec)
            .expect("every codec has a stream");
        stream.viewers += 1;
        let rx = stream.frames.subscribe();
        if codec == Codec::Vp8 && stream.viewers == 1 {
            running.set_valve(VP8_VALVE, true);
        }
        Ok(Subscription {
            feed: self.inner.clone(),
            codec,
            id: self.inner.next_viewer.fetch_add(1, Ordering::Relaxed),
            rx,
            need_keyframe: true,
            epoch: None,
            skipped: 0,
        })
    }

    /// Number of current subscriptions, all streams together.
    pub fn viewers(&self) -> usize {
        self.inner.lock().viewers()
    }

    /// Whether the pipeline runs now.
    pub fn is_running(&self) -> bool {
        self.inner.lock().running.is_some()
    }

    /// The counters so far.
    pub fn stats(&self) -> FeedStats {
        let c = &self.inner.counters;
        let bitrate = self
            .inner
            .lock()
            .bitrate
            .as_ref()
            .map_or(0, |b| b.current_kbps() as u64);
        FeedStats {
            frames: c.frames.load(Ordering::Relaxed),
            keyframes: c.keyframes.load(Ordering::Relaxed),
            forced_keyframes: c.forced_keyframes.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            starts: c.starts.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            bitrate_kbps: bitrate,
            bitrate_changes: c.bitrate_changes.load(Ordering::Relaxed),
            estimates: c.estimates.load(Ordering::Relaxed),
        }
    }

    /// Makes the running pipeline fail as a camera error would (the control socket's
    /// `fault camera`, for tests and for checking supervision on a real board): the
    /// supervisor rebuilds it.
    pub fn inject_failure(&self, why: &str) -> bool {
        let state = self.inner.lock();
        if state.running.is_none() {
            return false;
        }
        let _ = self.inner.failures.send((state.epoch, why.to_owned()));
        true
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
            move |codec: Codec, frame: Frame| {
                if let Some(feed) = feed.upgrade() {
                    feed.deliver(codec, frame);
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
            .with_context(|| format!("{} unavailable", self.name))?;
        info!(feed = self.name, epoch, "pipeline started");
        state.epoch = epoch;
        for (codec, stream) in state.streams.iter_mut() {
            stream.keyframe = running.keyframe_handle(*codec);
            stream.gate = KeyframeGate::default();
        }
        running.set_valve(VP8_VALVE, state.streams[&Codec::Vp8].viewers > 0);
        if let (Some(retune), Some(bitrate)) = (&self.retune, &state.bitrate) {
            retune(&running, bitrate.current_kbps());
        }
        state.running = Some(running);
        state.started_at = Instant::now();
        self.counters.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn deliver(&self, codec: Codec, frame: Frame) {
        let force = {
            let mut state = self.lock();
            if frame.epoch != state.epoch {
                return;
            }
            let stream = state
                .streams
                .get_mut(&codec)
                .expect("every codec has a stream");
            let force = stream
                .gate
                .on_frame(frame.keyframe, Instant::now())
                .then(|| stream.keyframe.clone())
                .flatten();
            // No receiver is not an error: the pipeline lingers after the last viewer.
            let _ = stream.frames.send(frame.clone());
            force
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
    }

    fn request_keyframe(&self, codec: Codec) {
        let handle = {
            let mut state = self.lock();
            let stream = state
                .streams
                .get_mut(&codec)
                .expect("every codec has a stream");
            stream
                .gate
                .request(Instant::now())
                .then(|| stream.keyframe.clone())
                .flatten()
        };
        if let Some(handle) = handle {
            self.counters
                .forced_keyframes
                .fetch_add(1, Ordering::Relaxed);
            handle.force();
        }
    }

    /// Records a viewer's bandwidth estimate (`None`: it left) and retunes the encoder
    /// when the controller says so.
    fn estimate(&self, viewer: u64, bps: Option<u64>) {
        let mut state = self.lock();
        if bps.is_some() {
            self.counters.estimates.fetch_add(1, Ordering::Relaxed);
        }
        match bps {
            Some(bps) => state.estimates.insert(viewer, bps),
            None => state.estimates.remove(&viewer),
        };
        let estimates: Vec<u64> = state.estimates.values().copied().collect();
        let Some(kbps) = state
            .bitrate
            .as_mut()
            .and_then(|b| b.update(estimates, Instant::now()))
        else {
            return;
        };
        if let (Some(retune), Some(running)) = (&self.retune, &state.running) {
            info!(
                feed = self.name,
                kbps, "encoder bitrate follows the slowest viewer"
            );
            retune(running, kbps);
            self.counters
                .bitrate_changes
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave(self: &Arc<Self>, codec: Codec, viewer: u64) {
        self.estimate(viewer, None);
        let epoch = {
            let mut state = self.lock();
            let stream = state
                .streams
                .get_mut(&codec)
                .expect("every codec has a stream");
            stream.viewers = stream.viewers.saturating_sub(1);
            if codec == Codec::Vp8
                && stream.viewers == 0
                && let Some(running) = &state.running
            {
                running.set_valve(VP8_VALVE, false);
            }
            if state.viewers() > 0 {
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
            if state.viewers() > 0 || state.epoch != epoch {
                return;
            }
            for stream in state.streams.values_mut() {
                stream.keyframe = None;
            }
            state.running.take()
        };
        if stopped.is_some() {
            drop(stopped);
            info!(feed = self.name, "nobody watches: pipeline stopped");
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
            for stream in state.streams.values_mut() {
                stream.keyframe = None;
            }
            (state.running.take(), state.restart_pause)
        };
        inner.counters.failures.fetch_add(1, Ordering::Relaxed);
        let name = inner.name;
        drop(inner);
        let _ = tokio::task::spawn_blocking(move || drop(failed)).await;
        warn!(feed = name, %why, "pipeline failed; rebuilding it");
        loop {
            info!(
                feed = name,
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
            if state.viewers() == 0 || state.running.is_some() {
                break;
            }
            match inner.start(&mut state) {
                Ok(()) => break,
                Err(err) => warn!("{err:#}"),
            }
        }
    }
}

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
}
