//! The fan-out with the real camera pipeline (test pattern, x264): a viewer that stalls
//! loses frames and resumes at a keyframe, while the others keep their frame rate.

use std::time::{Duration, Instant};

use peercam::config::Settings;
use peercam::media::fanout::Feed;
use peercam::media::{self, Codec, pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_is_skipped_to_a_keyframe_and_slows_nobody() {
    media::init().unwrap();
    let settings = Settings::load("dev", None, toml::Table::new()).unwrap();
    let plan = pipeline::plan(&settings.video).unwrap();
    let feed = Feed::new("camera", plan.description, None, None);

    let mut steady = feed.subscribe(Codec::H264).unwrap();
    let mut stalled = feed.subscribe(Codec::H264).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stalled.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.keyframe, "a new viewer starts at a keyframe");

    // The steady viewer reads for 3 s while the other one does not read at all.
    let counting = tokio::spawn(async move {
        let start = Instant::now();
        let mut frames = 0u32;
        while start.elapsed() < Duration::from_secs(3) {
            if tokio::time::timeout(Duration::from_secs(1), steady.next())
                .await
                .ok()
                .flatten()
                .is_some()
            {
                frames += 1;
            }
        }
        (
            frames as f64 / start.elapsed().as_secs_f64(),
            steady.skipped(),
        )
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (steady_fps, steady_skipped) = counting.await.unwrap();

    let resumed = tokio::time::timeout(Duration::from_secs(5), stalled.next())
        .await
        .unwrap()
        .unwrap();
    println!(
        "steady viewer: {steady_fps:.1} fps, {steady_skipped} skipped; stalled viewer skipped {} and resumed at a keyframe: {}",
        stalled.skipped(),
        resumed.keyframe
    );
    assert!(
        (27.0..=33.0).contains(&steady_fps),
        "the steady viewer's rate moved more than 10 %: {steady_fps:.1} fps"
    );
    assert_eq!(steady_skipped, 0);
    assert!(stalled.skipped() > 0, "the stalled viewer lost frames");
    assert!(resumed.keyframe, "the stalled viewer resumes at a keyframe");
    assert!(feed.stats().forced_keyframes >= 1, "{:?}", feed.stats());
}
