//! An in-memory [`EncodedSource`]: it replays a list of access units at a fixed frame rate
//! on tokio time, and records what the feed asked of it (keyframes, bitrates, the VP8
//! branch). With `tokio::time::pause` the fan-out's lag, keyframe, bitrate and restart
//! logic then runs on virtual time, with no camera and no wall-clock bounds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::Codec;
use super::source::{EncodedSource, KeyframeTrigger, RunningSource, Sink, SourceError};

/// One encoded picture to replay.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    /// Its bytes, delivered as they are.
    pub data: Bytes,
    /// Whether a decoder can start from it.
    pub keyframe: bool,
}

/// A source that replays access units; clones share one source, so a test can keep one
/// to steer and inspect the one a feed runs.
#[derive(Clone)]
pub struct ReplaySource {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    interval: Duration,
    codecs: Vec<Codec>,
    units: Arc<[AccessUnit]>,
    start_offset: usize,
    refuse: u32,
    deaf: bool,
    next_run: u64,
    run: Option<Run>,
    attempts: Vec<Instant>,
    starts: u64,
    keyframe_requests: HashMap<Codec, u64>,
    emitted: HashMap<Codec, u64>,
    bitrates: Vec<u32>,
    vp8_open: bool,
}

/// The run in progress: where it is in the list for each codec, and what is forced.
struct Run {
    id: u64,
    sink: Sink,
    position: HashMap<Codec, usize>,
    forced: HashSet<Codec>,
    ticks: u64,
}

impl ReplaySource {
    /// An H.264 source at `fps` frames a second with a keyframe every `keyframe_every`
    /// frames (the first one of each run is one). The units are tiny Annex B NAL units
    /// (IDR or not), 8 bytes each.
    pub fn new(fps: u32, keyframe_every: u32) -> Self {
        let every = keyframe_every.max(1) as usize;
        let units = (0..every)
            .map(|i| {
                let (keyframe, nal) = if i == 0 { (true, 0x65) } else { (false, 0x41) };
                AccessUnit {
                    data: Bytes::copy_from_slice(&[0, 0, 0, 1, nal, 0x88, 0x84, i as u8]),
                    keyframe,
                }
            })
            .collect();
        ReplaySource::with_units(fps, units)
    }

    /// A source that replays `units` in a loop at `fps` frames a second, the same list
    /// for every codec it offers (H.264 alone unless [`ReplaySource::codecs`] says more).
    pub fn with_units(fps: u32, units: Vec<AccessUnit>) -> Self {
        ReplaySource {
            shared: Arc::new(Mutex::new(Shared {
                interval: Duration::from_secs(1) / fps.max(1),
                codecs: vec![Codec::H264],
                units: units.into(),
                start_offset: 0,
                refuse: 0,
                deaf: false,
                next_run: 1,
                run: None,
                attempts: Vec::new(),
                starts: 0,
                keyframe_requests: HashMap::new(),
                emitted: HashMap::new(),
                bitrates: Vec::new(),
                vp8_open: false,
            })),
        }
    }

    /// Offers these streams. VP8 frames flow only while the feed has its branch open.
    pub fn codecs(self, codecs: &[Codec]) -> Self {
        self.lock().codecs = codecs.to_vec();
        self
    }

    /// Starts each run `offset` units into the list, e.g. in the middle of a group of
    /// pictures, as a camera that was already running would.
    pub fn start_offset(self, offset: usize) -> Self {
        self.lock().start_offset = offset;
        self
    }

    /// The time between two frames.
    pub fn frame_interval(&self) -> Duration {
        self.lock().interval
    }

    /// Refuses the next `n` starts, as a camera that is gone would.
    pub fn refuse_starts(&self, n: u32) {
        self.lock().refuse = n;
    }

    /// While `deaf`, keyframe requests are counted but not answered (an encoder that
    /// lost the event).
    pub fn ignore_keyframe_requests(&self, deaf: bool) {
        self.lock().deaf = deaf;
    }

    /// Makes the current run fail with `why`. False when nothing runs.
    pub fn fail(&self, why: &str) -> bool {
        let sink = self.lock().run.as_ref().map(|run| run.sink.clone());
        match sink {
            Some(sink) => {
                sink.fail(why);
                true
            }
            None => false,
        }
    }

    /// When each start was attempted, refused ones included.
    pub fn attempts(&self) -> Vec<Instant> {
        self.lock().attempts.clone()
    }

    /// Runs started so far.
    pub fn starts(&self) -> u64 {
        self.lock().starts
    }

    /// Whether a run is in progress.
    pub fn is_running(&self) -> bool {
        self.lock().run.is_some()
    }

    /// Keyframes of `codec` the feed forced, answered or not.
    pub fn keyframe_requests(&self, codec: Codec) -> u64 {
        self.lock()
            .keyframe_requests
            .get(&codec)
            .copied()
            .unwrap_or(0)
    }

    /// Frames of `codec` delivered so far, every run together.
    pub fn emitted(&self, codec: Codec) -> u64 {
        self.lock().emitted.get(&codec).copied().unwrap_or(0)
    }

    /// Every bitrate the feed set, in kbit/s, in order.
    pub fn bitrates(&self) -> Vec<u32> {
        self.lock().bitrates.clone()
    }

    /// Whether the VP8 branch of the current run is open.
    pub fn vp8_open(&self) -> bool {
        self.lock().vp8_open
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl EncodedSource for ReplaySource {
    fn start(&self, sink: Sink) -> Result<Box<dyn RunningSource>, SourceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SourceError::NoRuntime)?;
        let mut shared = self.lock();
        shared.attempts.push(Instant::now());
        if shared.refuse > 0 {
            shared.refuse -= 1;
            return Err(SourceError::Refused("the replay was told to refuse".into()));
        }
        let id = shared.next_run;
        shared.next_run += 1;
        shared.starts += 1;
        let offset = shared.start_offset;
        shared.run = Some(Run {
            id,
            sink,
            position: shared.codecs.iter().map(|&c| (c, offset)).collect(),
            forced: HashSet::new(),
            ticks: 0,
        });
        let codecs = shared.codecs.clone();
        let interval = shared.interval;
        drop(shared);
        let task = runtime.spawn(replay(self.shared.clone(), id, interval));
        Ok(Box::new(RunningReplay {
            shared: self.shared.clone(),
            id,
            codecs,
            task,
        }))
    }
}

/// Delivers one frame of each stream per tick until the run ends.
async fn replay(shared: Arc<Mutex<Shared>>, id: u64, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut due = Vec::new();
    loop {
        ticks.tick().await;
        let sink = {
            let mut guard = lock(&shared);
            let state = &mut *guard;
            let Some(run) = state.run.as_mut().filter(|run| run.id == id) else {
                return;
            };
            let pts = interval * run.ticks as u32;
            run.ticks += 1;
            let len = state.units.len();
            for &codec in &state.codecs {
                if len == 0 || (codec == Codec::Vp8 && !state.vp8_open) {
                    continue;
                }
                let position = run.position.entry(codec).or_default();
                if run.forced.remove(&codec) {
                    // As an encoder does: the group of pictures starts again now.
                    let skip = (0..len)
                        .find(|i| state.units[(*position + i) % len].keyframe)
                        .unwrap_or(0);
                    *position += skip;
                }
                let unit = &state.units[*position % len];
                *position += 1;
                *state.emitted.entry(codec).or_default() += 1;
                due.push((codec, unit.data.clone(), pts, unit.keyframe));
            }
            run.sink.clone()
        };
        // Outside the lock: delivering may force a keyframe, which takes it.
        for (codec, data, pts, keyframe) in due.drain(..) {
            sink.frame(codec, data, pts, keyframe);
        }
    }
}

/// One run of a [`ReplaySource`]; dropping it ends the run.
struct RunningReplay {
    shared: Arc<Mutex<Shared>>,
    id: u64,
    codecs: Vec<Codec>,
    task: JoinHandle<()>,
}

impl RunningSource for RunningReplay {
    fn has(&self, codec: Codec) -> bool {
        self.codecs.contains(&codec)
    }

    fn keyframe_trigger(&self, codec: Codec) -> Option<KeyframeTrigger> {
        if !self.has(codec) {
            return None;
        }
        let shared = self.shared.clone();
        let id = self.id;
        Some(KeyframeTrigger::new(move || {
            let mut guard = lock(&shared);
            let state = &mut *guard;
            *state.keyframe_requests.entry(codec).or_default() += 1;
            if let Some(run) = state.run.as_mut().filter(|run| run.id == id)
                && !state.deaf
            {
                run.forced.insert(codec);
            }
        }))
    }

    fn set_vp8(&self, open: bool) {
        lock(&self.shared).vp8_open = open;
    }

    fn set_bitrate(&self, kbps: u32) {
        lock(&self.shared).bitrates.push(kbps);
    }
}

impl Drop for RunningReplay {
    fn drop(&mut self) {
        self.task.abort();
        let mut shared = lock(&self.shared);
        if shared.run.as_ref().is_some_and(|run| run.id == self.id) {
            shared.run = None;
            // A new pipeline starts with the valve closed, so the feed must open it again.
            shared.vp8_open = false;
        }
    }
}
