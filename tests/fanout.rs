//! The fan-out on virtual time (`tokio::time::pause`) with the in-memory replay source:
//! lag and skip-to-keyframe, keyframe coalescing, bitrate, restarts, idle stop and the
//! on-demand VP8 branch, each asserted to the frame or the millisecond. And once with the
//! real camera pipeline (test pattern, x264), counting keyframes and skips, not timing.

use std::time::Duration;

use peercam::config::Settings;
use peercam::media::fanout::{
    BitrateSettings, Feed, FeedError, KEYFRAME_MIN_INTERVAL, RESTART_PAUSE, Subscription,
};
use peercam::media::replay::ReplaySource;
use peercam::media::running::GstSource;
use peercam::media::{self, Codec, Frame, pipeline};
use tokio::time::{Instant, sleep, timeout};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The next frame; virtual time makes the bound free, it only stops a broken feed.
async fn next(sub: &mut Subscription) -> Frame {
    timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("a frame within a minute")
        .expect("the feed is alive")
}

/// The first frame of a run after `epoch`, reading past the rest of `epoch`.
async fn next_run(sub: &mut Subscription, epoch: u64) -> Frame {
    for _ in 0..10_000 {
        let frame = next(sub).await;
        if frame.epoch != epoch {
            return frame;
        }
    }
    panic!("no frame of a new run");
}

/// The frame's place in its run, from its timestamp.
fn index(frame: &Frame, replay: &ReplaySource) -> u64 {
    (frame.pts.as_nanos() / replay.frame_interval().as_nanos()) as u64
}

#[tokio::test(start_paused = true)]
async fn a_lagging_viewer_skips_to_a_forced_keyframe_while_another_keeps_every_frame() {
    // A keyframe every 5 s: the ring (about a second) holds none when the viewer is back.
    let replay = ReplaySource::new(30, 150);
    let feed = Feed::from_source("camera", replay.clone(), None, None);
    let mut steady = feed.subscribe(Codec::H264).unwrap();
    let mut stalled = feed.subscribe(Codec::H264).unwrap();
    let first = next(&mut stalled).await;
    assert!(first.keyframe && index(&first, &replay) == 0);

    // The steady viewer reads for 3 s while the other one does not read at all.
    let until = Instant::now() + Duration::from_secs(3);
    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        while Instant::now() < until {
            frames.push(next(&mut steady).await);
        }
        (frames, steady)
    });
    sleep(Duration::from_secs(3)).await;
    let (frames, steady) = reader.await.unwrap();
    assert!(
        frames.len() >= 90,
        "{} frames in 3 s at 30 fps",
        frames.len()
    );
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(
            index(frame, &replay),
            i as u64,
            "the steady viewer lost none"
        );
    }
    assert_eq!(steady.skipped(), 0);

    let resumed = next(&mut stalled).await;
    let at = index(&resumed, &replay);
    assert!(resumed.keyframe, "the stalled viewer resumes at a keyframe");
    // The GOP's own next keyframe is frame 150: this one was forced for the lag.
    assert!((90..150).contains(&at), "resumed at frame {at}");
    assert_eq!(replay.keyframe_requests(Codec::H264), 1);
    // Every frame between the two was counted once, missed in the ring or skipped after.
    assert_eq!(stalled.skipped(), at - 1);
    let stats = feed.stats();
    assert_eq!(stats.skipped, at - 1);
    assert_eq!(stats.forced_keyframes, 1);
    assert_eq!(stats.keyframes, 2, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn keyframe_requests_are_coalesced_and_a_lost_one_is_retried() {
    // A keyframe every 10 s: every other keyframe here is a forced one.
    let replay = ReplaySource::new(30, 300);
    let feed = Feed::from_source("camera", replay.clone(), None, None);
    let mut viewers: Vec<Subscription> = (0..4)
        .map(|_| feed.subscribe(Codec::H264).unwrap())
        .collect();
    for viewer in &mut viewers {
        assert!(next(viewer).await.keyframe);
    }
    sleep(ms(100)).await;

    // Four viewers ready to start, and PLIs on top: one forced keyframe.
    let forced_at = Instant::now();
    for viewer in &mut viewers {
        viewer.want_keyframe();
        viewer.control().request_keyframe();
    }
    assert_eq!(replay.keyframe_requests(Codec::H264), 1);
    let mut keyframe_at = None;
    for viewer in &mut viewers {
        let frame = next(viewer).await;
        assert!(frame.keyframe);
        assert_eq!(*keyframe_at.get_or_insert(frame.pts), frame.pts);
    }

    // A PLI right after it gets the second keyframe of a burst at once; a third request
    // is deferred to the end of the interval, not dropped.
    viewers[0].control().request_keyframe();
    assert_eq!(replay.keyframe_requests(Codec::H264), 2);
    loop {
        if next(&mut viewers[0]).await.keyframe {
            break;
        }
    }
    viewers[0].control().request_keyframe();
    assert_eq!(replay.keyframe_requests(Codec::H264), 2);
    let mut frames = 0;
    let deferred = loop {
        let frame = next(&mut viewers[0]).await;
        frames += 1;
        assert!(frames < 30, "no deferred keyframe");
        if frame.keyframe {
            break Instant::now();
        }
    };
    assert_eq!(replay.keyframe_requests(Codec::H264), 3);
    let gap = deferred - forced_at;
    assert!(
        gap >= KEYFRAME_MIN_INTERVAL && gap <= KEYFRAME_MIN_INTERVAL + 2 * replay.frame_interval(),
        "{gap:?}"
    );

    // An encoder that loses the request: asked again after a second, not before.
    replay.ignore_keyframe_requests(true);
    sleep(ms(300)).await;
    let control = viewers[0].control();
    control.request_keyframe();
    assert_eq!(replay.keyframe_requests(Codec::H264), 4);
    sleep(ms(999)).await;
    control.request_keyframe();
    assert_eq!(replay.keyframe_requests(Codec::H264), 4, "still pending");
    sleep(ms(1)).await;
    control.request_keyframe();
    assert_eq!(
        replay.keyframe_requests(Codec::H264),
        5,
        "given up: retried"
    );
    assert_eq!(feed.stats().forced_keyframes, 5);
}

#[tokio::test(start_paused = true)]
async fn the_bitrate_follows_the_slowest_viewer_with_hysteresis_and_bounds() {
    let replay = ReplaySource::new(30, 60);
    let bitrate = BitrateSettings {
        configured_kbps: 2000,
        min_kbps: 300,
        max_kbps: 4000,
    };
    let feed = Feed::from_source("camera", replay.clone(), None, Some(bitrate));
    let fast = feed.subscribe(Codec::H264).unwrap();
    let slow = feed.subscribe(Codec::H264).unwrap();
    assert_eq!(
        replay.bitrates(),
        [2000],
        "a run starts at the current bitrate"
    );
    let (fast, slow) = (fast.control(), slow.control());
    let t0 = Instant::now();

    slow.report_estimate(1_000_000);
    fast.report_estimate(5_000_000);
    assert_eq!(replay.bitrates(), [2000, 950], "the slowest, with headroom");

    // Down again: held for half a second after a change.
    sleep(ms(499)).await;
    slow.report_estimate(500_000);
    assert_eq!(replay.bitrates(), [2000, 950]);
    sleep(ms(1)).await;
    slow.report_estimate(500_000);
    assert_eq!(replay.bitrates(), [2000, 950, 475]);
    // Never below the minimum.
    sleep(ms(500)).await;
    slow.report_estimate(10_000);
    assert_eq!(replay.bitrates(), [2000, 950, 475, 300]);

    // Up: held for three seconds, and never above the maximum.
    let changed = Instant::now();
    slow.report_estimate(50_000_000);
    sleep(changed + ms(2999) - Instant::now()).await;
    slow.report_estimate(50_000_000);
    assert_eq!(replay.bitrates(), [2000, 950, 475, 300]);
    sleep(ms(1)).await;
    slow.report_estimate(50_000_000);
    assert_eq!(
        replay.bitrates(),
        [2000, 950, 475, 300, 4000],
        "the fast viewer's 5 Mbit/s, capped"
    );

    // A sixth or less either way is not worth retuning the encoder.
    sleep(Duration::from_secs(5)).await;
    fast.report_estimate(3_600_000);
    assert_eq!(replay.bitrates().len(), 5);
    assert_eq!(feed.stats().bitrate_kbps, 4000);
    assert_eq!(feed.stats().bitrate_changes, 4);
    assert_eq!(feed.stats().estimates, 9);

    // A restarted source starts at the bitrate the viewers got to.
    assert!(replay.fail("camera unplugged"));
    sleep(RESTART_PAUSE + ms(1)).await;
    assert_eq!(replay.starts(), 2);
    assert_eq!(replay.bitrates().last(), Some(&4000));
    assert!(Instant::now() - t0 < Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_failed_source_is_restarted_after_a_doubling_pause_and_viewers_resume_at_a_keyframe() {
    // Each run starts ten frames before a keyframe, as a camera caught mid-GOP would.
    let replay = ReplaySource::new(30, 60).start_offset(50);
    let feed = Feed::from_source("camera", replay.clone(), None, None);
    let mut viewer = feed.subscribe(Codec::H264).unwrap();
    let first = next(&mut viewer).await;
    assert!(first.keyframe);
    assert_eq!(
        viewer.skipped(),
        10,
        "joined mid-GOP: waited for the keyframe"
    );

    // The first failure: restarted after half a second.
    let failed = Instant::now();
    assert!(replay.fail("camera unplugged"));
    let resumed = next_run(&mut viewer, first.epoch).await;
    assert!(resumed.keyframe, "the new run's first keyframe");
    assert_eq!(viewer.skipped(), 20, "the new run's ten frames before it");
    assert_eq!(replay.attempts()[1] - failed, ms(500));

    // Failing again soon, with the camera gone for three more attempts: the pauses
    // double (1, 2, 4, 8 s) until a start succeeds.
    replay.refuse_starts(3);
    let failed = Instant::now();
    assert!(replay.fail("camera unplugged again"));
    sleep(Duration::from_secs(16)).await;
    let attempts = replay.attempts();
    let gaps: Vec<Duration> = std::iter::once(failed)
        .chain(attempts[2..].iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    let secs = Duration::from_secs;
    assert_eq!(gaps, [secs(1), secs(2), secs(4), secs(8)]);
    assert!(replay.is_running());

    // The pause stops doubling at 30 s.
    replay.refuse_starts(2);
    let failed = Instant::now();
    assert!(replay.fail("and again"));
    sleep(secs(77)).await;
    let attempts = replay.attempts();
    let gaps: Vec<Duration> = std::iter::once(failed)
        .chain(attempts[6..].iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert_eq!(gaps, [secs(16), secs(30), secs(30)]);

    // A run that lasted starts the pauses from the beginning.
    sleep(secs(31)).await;
    let failed = Instant::now();
    let epoch = next(&mut viewer).await.epoch;
    assert!(replay.fail("after a long run"));
    let resumed = next_run(&mut viewer, epoch).await;
    assert!(resumed.keyframe);
    assert_eq!(*replay.attempts().last().unwrap() - failed, ms(500));
    let stats = feed.stats();
    assert_eq!((stats.failures, stats.starts), (4, replay.starts()));
    assert_eq!(replay.starts(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_source_failing_with_nobody_watching_waits_for_the_next_viewer() {
    let replay = ReplaySource::new(30, 60);
    let feed = Feed::from_source("camera", replay.clone(), None, None);
    let viewer = feed.subscribe(Codec::H264).unwrap();
    drop(viewer);
    assert!(feed.is_running(), "no idle stop configured");
    assert!(replay.fail("camera unplugged"));
    sleep(Duration::from_secs(5)).await;
    assert!(!feed.is_running());
    assert_eq!(replay.attempts().len(), 1);

    // The next viewer starts it; a source that will not start is an error for it.
    replay.refuse_starts(1);
    let err = feed.subscribe(Codec::H264).err().expect("refused");
    assert!(matches!(err, FeedError::Unavailable { .. }), "{err}");
    let mut viewer = feed.subscribe(Codec::H264).unwrap();
    assert!(next(&mut viewer).await.keyframe);
    assert_eq!(replay.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_source_stops_after_idle_stop_and_restarts_on_subscribe() {
    let replay = ReplaySource::new(30, 60);
    let idle = Duration::from_secs(5);
    let feed = Feed::from_source("camera", replay.clone(), Some(idle), None);
    let viewer = feed.subscribe(Codec::H264).unwrap();
    drop(viewer);
    sleep(idle - ms(1)).await;
    assert!(replay.is_running(), "lingers for a viewer who comes back");

    // One does: the pending stop is off.
    let viewer = feed.subscribe(Codec::H264).unwrap();
    sleep(ms(2)).await;
    assert!(replay.is_running());
    assert_eq!(replay.starts(), 1);

    drop(viewer);
    let left = Instant::now();
    sleep(idle - ms(1)).await;
    assert!(feed.is_running());
    sleep(ms(2)).await;
    assert!(!feed.is_running() && !replay.is_running());
    assert!(Instant::now() - left > idle);

    let mut viewer = feed.subscribe(Codec::H264).unwrap();
    let frame = next(&mut viewer).await;
    assert!(frame.keyframe && index(&frame, &replay) == 0, "a fresh run");
    assert_eq!(replay.starts(), 2);
    assert_eq!(feed.stats().starts, 2);
}

#[tokio::test(start_paused = true)]
async fn the_vp8_branch_is_open_only_while_a_vp8_viewer_watches() {
    let replay = ReplaySource::new(30, 60).codecs(&[Codec::H264, Codec::Vp8]);
    let feed = Feed::from_source("camera", replay.clone(), None, None);
    let mut h264 = feed.subscribe(Codec::H264).unwrap();
    for _ in 0..30 {
        next(&mut h264).await;
    }
    assert!(!replay.vp8_open());
    assert_eq!(replay.emitted(Codec::Vp8), 0, "nothing encoded for nobody");

    let mut first = feed.subscribe(Codec::Vp8).unwrap();
    let second = feed.subscribe(Codec::Vp8).unwrap();
    assert!(replay.vp8_open());
    assert!(next(&mut first).await.keyframe);
    drop(second);
    assert!(replay.vp8_open(), "one VP8 viewer is left");

    // A restart reopens it for the VP8 viewer still there.
    let epoch = next(&mut first).await.epoch;
    assert!(replay.fail("camera unplugged"));
    let resumed = next_run(&mut first, epoch).await;
    assert!(resumed.keyframe && replay.vp8_open());

    drop(first);
    assert!(!replay.vp8_open());
    let emitted = replay.emitted(Codec::Vp8);
    for _ in 0..30 {
        next(&mut h264).await;
    }
    assert_eq!(replay.emitted(Codec::Vp8), emitted);

    let err = feed.subscribe(Codec::Opus).err().expect("no Opus here");
    assert!(
        matches!(
            err,
            FeedError::NoStream {
                codec: Codec::Opus,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(feed.viewers(), 1);
}

/// The GStreamer source end to end: x264 behind the feed, a stalled viewer skipped to a
/// forced keyframe while a steady one loses nothing. Counts, not frame rates: the machine
/// may be busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gstreamer_source_feeds_viewers_and_forces_keyframes() {
    media::init().unwrap();
    let settings = Settings::load("dev", None, toml::Table::new()).unwrap();
    let plan = pipeline::plan(&settings.video).unwrap();
    let bitrate = BitrateSettings {
        configured_kbps: settings.video.bitrate_kbps,
        min_kbps: settings.video.min_bitrate_kbps,
        max_kbps: settings.video.max_bitrate_kbps,
    };
    let feed = Feed::from_source("camera", GstSource::from_plan(&plan), None, Some(bitrate));

    let mut steady = feed.subscribe(Codec::H264).unwrap();
    let mut stalled = feed.subscribe(Codec::H264).unwrap();
    let first = timeout(Duration::from_secs(20), stalled.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.keyframe, "a new viewer starts at a keyframe");
    assert!(first.data.starts_with(&[0, 0, 0, 1]), "Annex B");

    // The steady viewer reads 120 frames (4 s at 30 fps) while the other reads none:
    // more than the ring, so the stalled one must lag.
    let counting = tokio::spawn(async move {
        let mut last = None;
        for _ in 0..120 {
            let frame = timeout(Duration::from_secs(20), steady.next())
                .await
                .expect("a frame")
                .expect("the feed is alive");
            assert!(last < Some(frame.pts), "in order");
            last = Some(frame.pts);
        }
        steady.skipped()
    });
    let steady_skipped = counting.await.unwrap();
    let resumed = timeout(Duration::from_secs(20), stalled.next())
        .await
        .unwrap()
        .unwrap();
    let stats = feed.stats();
    println!(
        "steady viewer skipped {steady_skipped}; stalled viewer skipped {}; {stats:?}",
        stalled.skipped()
    );
    assert_eq!(steady_skipped, 0);
    assert!(stalled.skipped() > 0, "the stalled viewer lost frames");
    assert!(resumed.keyframe, "the stalled viewer resumes at a keyframe");
    assert!(stats.forced_keyframes >= 1, "{stats:?}");
    assert!(stats.keyframes >= 2, "{stats:?}");
    assert_eq!((stats.starts, stats.failures), (1, 0));
}
