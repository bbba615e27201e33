//! One encoder, many viewers.
//!
//! A [`Feed`] starts its [`EncodedSource`] when the first viewer subscribes and stops it
//! a little after the last one leaves. Each encoded stream the source offers (H.264, the
//! on-demand VP8 branch, Opus) goes into a broadcast ring of its own; a viewer that falls
//! more than the ring behind loses the frames it missed, is counted, and resumes at the
//! next keyframe: the camera and the other viewers never wait for it. Keyframe requests
//! (a viewer joining, a PLI) are coalesced across viewers by [`KeyframeGate`]; the
//! viewers' bandwidth estimates are folded into one encoder bitrate by
//! [`BitrateController`]; a source that fails is restarted after a growing pause.
//!
//! Time is tokio's, so `tokio::time::pause` drives all of it in tests (with
//! [`super::replay::ReplaySource`]); outside a runtime it is the system's monotonic clock.

mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

pub use super::bitrate::BitrateController;
pub use super::keyframe::{KEYFRAME_MIN_INTERVAL, KeyframeGate};
use super::running::GstSource;
use super::source::{EncodedSource, KeyframeTrigger, RunningSource, Sink, SourceError};
use super::{Codec, Frame};
pub use subscription::{FeedControl, Subscription};

/// Frames kept for viewers that read late; one second at 30 fps.
pub const RING_FRAMES: usize = 30;

/// Pause before the first restart of a failed source; it doubles up to the maximum.
pub const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between two restarts.
pub const RESTART_PAUSE_MAX: Duration = Duration::from_secs(30);

/// A source that ran this long before failing starts the pauses from the beginning.
pub const STABLE_RUN: Duration = Duration::from_secs(30);

/// Why a viewer could not join a feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The source did not start.
    #[error("{feed} unavailable")]
    Unavailable {
        /// The feed's name.
        feed: &'static str,
        /// Why its source did not start.
        #[source]
        source: SourceError,
    },
    /// The source runs, but without the stream asked for.
    #[error("this board's {feed} pipeline has no {codec:?} encoder")]
    NoStream {
        /// The feed's name.
        feed: &'static str,
        /// The stream asked for.
        codec: Codec,
    },
}

/// Counters of a feed, for logs, `status` and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FeedStats {
    /// Encoded frames the source produced (every stream).
    pub frames: u64,
    /// Of those, keyframes.
    pub keyframes: u64,
    /// Keyframes peercam asked the encoder for.
    pub forced_keyframes: u64,
    /// Frames viewers missed because they lagged, or skipped waiting for a keyframe.
    pub skipped: u64,
    /// Times the source was started.
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

struct Stream {
    frames: broadcast::Sender<Frame>,
    gate: KeyframeGate,
    keyframe: Option<KeyframeTrigger>,
    viewers: usize,
}

struct State {
    streams: HashMap<Codec, Stream>,
    running: Option<Box<dyn RunningSource>>,
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

    fn stream(&mut self, codec: Codec) -> &mut Stream {
        self.streams
            .get_mut(&codec)
            .expect("every codec has a stream")
    }
}

struct Inner {
    name: &'static str,
    source: Box<dyn EncodedSource>,
    idle_stop: Option<Duration>,
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
#[derive(Debug, Clone, Copy)]
pub struct BitrateSettings {
    /// Start here, and come back here when no viewer reports an estimate.
    pub configured_kbps: u32,
    /// Never below.
    pub min_kbps: u32,
    /// Never above.
    pub max_kbps: u32,
}

impl Feed {
    /// A feed named `name` (for logs) on the GStreamer pipeline `description`, whose
    /// bitrate is left as the description sets it; see [`Feed::from_source`].
    pub fn new(
        name: &'static str,
        description: String,
        idle_stop: Option<Duration>,
        bitrate: Option<BitrateSettings>,
    ) -> Self {
        Feed::from_source(name, GstSource::new(description), idle_stop, bitrate)
    }

    /// A feed named `name` (for logs) on `source`. It stops the source `idle_stop` after
    /// the last viewer left, or never if `None`, and with `bitrate` sets the source's
    /// bitrate from the viewers' estimates. Must be called inside a tokio runtime: it
    /// starts the supervising task.
    pub fn from_source(
        name: &'static str,
        source: impl EncodedSource + 'static,
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
        let inner = Arc::new(Inner {
            name,
            source: Box::new(source),
            idle_stop,
            state: Mutex::new(State {
                streams,
                running: None,
                epoch: 0,
                restart_pause: RESTART_PAUSE,
                started_at: Instant::now(),
                estimates: HashMap::new(),
                bitrate: bitrate
                    .map(|b| BitrateController::new(b.configured_kbps, b.min_kbps, b.max_kbps)),
            }),
            failures,
            counters: Counters::default(),
            next_viewer: AtomicU64::new(1),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), failure_rx));
        Feed { inner }
    }

    /// Joins the `codec` stream, starting the source if it is not running. Fails when
    /// the source cannot start or does not offer `codec`.
    pub fn subscribe(&self, codec: Codec) -> Result<Subscription, FeedError> {
        let mut guard = self.inner.lock();
        if guard.running.is_none() {
            self.inner
                .start(&mut guard)
                .map_err(|source| FeedError::Unavailable {
                    feed: self.inner.name,
                    source,
                })?;
        }
        let state = &mut *guard;
        let running = state.running.as_ref().expect("started above");
        if !running.has(codec) {
            return Err(FeedError::NoStream {
                feed: self.inner.name,
                codec,
            });
        }
        let stream = state
            .streams
            .get_mut(&codec)
            .expect("every codec has a stream");
        stream.viewers += 1;
        let rx = stream.frames.subscribe();
        if codec == Codec::Vp8 && stream.viewers == 1 {
            running.set_vp8(true);
        }
        let id = self.inner.next_viewer.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription::new(self.inner.clone(), codec, id, rx))
    }

    /// Number of current subscriptions, all streams together.
    pub fn viewers(&self) -> usize {
        self.inner.lock().viewers()
    }

    /// Whether the source runs now.
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

    /// Makes the running source fail as a camera error would (the control socket's
    /// `fault camera`, for tests and for checking supervision on a real board): the
    /// supervisor restarts it.
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

    fn start(self: &Arc<Self>, state: &mut State) -> Result<(), SourceError> {
        // Taken even when the start fails, so that whatever a failed run still reports
        // cannot be mistaken for the next run's.
        state.epoch += 1;
        let epoch = state.epoch;
        let feed = Arc::downgrade(self);
        let failures = self.failures.clone();
        let sink = Sink::new(
            epoch,
            move |codec, frame| {
                if let Some(feed) = feed.upgrade() {
                    feed.deliver(codec, frame);
                }
            },
            move |epoch, why| {
                let _ = failures.send((epoch, why));
            },
        );
        let running = self.source.start(sink)?;
        info!(feed = self.name, epoch, "source started");
        for (codec, stream) in state.streams.iter_mut() {
            stream.keyframe = running.keyframe_trigger(*codec);
            stream.gate = KeyframeGate::default();
        }
        running.set_vp8(state.streams[&Codec::Vp8].viewers > 0);
        if let Some(bitrate) = &state.bitrate {
            running.set_bitrate(bitrate.current_kbps());
        }
        state.running = Some(running);
        state.started_at = Instant::now();
        self.counters.starts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn deliver(&self, codec: Codec, frame: Frame) {
        let keyframe = frame.keyframe;
        let force = {
            let mut state = self.lock();
            if frame.epoch != state.epoch {
                return;
            }
            let stream = state.stream(codec);
            let force = stream
                .gate
                .on_frame(keyframe, Instant::now())
                .then(|| stream.keyframe.clone())
                .flatten();
            // No receiver is not an error: the source lingers after the last viewer.
            let _ = stream.frames.send(frame);
            force
        };
        if let Some(trigger) = force {
            self.forced(trigger);
        }
        self.counters.frames.fetch_add(1, Ordering::Relaxed);
        if keyframe {
            self.counters.keyframes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forces a keyframe outside the state's lock: the source may deliver the frame
    /// that answers it on this very thread.
    fn forced(&self, trigger: KeyframeTrigger) {
        self.counters
            .forced_keyframes
            .fetch_add(1, Ordering::Relaxed);
        trigger.force();
    }

    fn request_keyframe(&self, codec: Codec) {
        let trigger = {
            let mut state = self.lock();
            let stream = state.stream(codec);
            stream
                .gate
                .request(Instant::now())
                .then(|| stream.keyframe.clone())
                .flatten()
        };
        if let Some(trigger) = trigger {
            self.forced(trigger);
        }
    }

    /// Records a viewer's bandwidth estimate (`None`: it left) and retunes the encoder
    /// when the controller says so.
    fn estimate(&self, viewer: u64, bps: Option<u64>) {
        let mut state = self.lock();
        match bps {
            Some(bps) => {
                self.counters.estimates.fetch_add(1, Ordering::Relaxed);
                state.estimates.insert(viewer, bps);
            }
            None => {
                state.estimates.remove(&viewer);
            }
        }
        let state = &mut *state;
        let Some(kbps) = state
            .bitrate
            .as_mut()
            .and_then(|b| b.update(state.estimates.values().copied(), Instant::now()))
        else {
            return;
        };
        if let Some(running) = &state.running {
            info!(
                feed = self.name,
                kbps, "encoder bitrate follows the slowest viewer"
            );
            running.set_bitrate(kbps);
            self.counters
                .bitrate_changes
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave(self: &Arc<Self>, codec: Codec, viewer: u64) {
        self.estimate(viewer, None);
        let epoch = {
            let mut state = self.lock();
            let stream = state.stream(codec);
            stream.viewers = stream.viewers.saturating_sub(1);
            if codec == Codec::Vp8
                && stream.viewers == 0
                && let Some(running) = &state.running
            {
                running.set_vp8(false);
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
                    // Stopping may block until the source's threads have joined.
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
            info!(feed = self.name, "nobody watches: source stopped");
        }
    }
}

/// Restarts the feed's source after each failure it reports, after a pause that doubles
/// while restarts keep failing (or runs keep failing soon after starting).
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
        warn!(feed = name, %why, "source failed; restarting it");
        loop {
            info!(
                feed = name,
                pause_ms = pause.as_millis() as u64,
                "waiting before the restart"
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
                Err(err) => warn!(feed = name, "cannot restart: {:#}", anyhow::Error::new(err)),
            }
        }
    }
}
