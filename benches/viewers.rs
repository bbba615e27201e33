//! How the daemon's cost grows with viewers, and how fast a call shows a picture.
//!
//! Runs the real `peercam` binary (dev board: 1280x720 at 30 fps, x264, 2 Mbit/s) with
//! lightweight webrtc-rs viewers that only count RTP (so the viewers' own decoding does
//! not hide the daemon's cost), and prints one table:
//!
//! * idle: the daemon's CPU (share of one core) and resident memory, registered and
//!   waiting;
//! * for 1, 2, 4, 8 viewers (`PEERCAM_BENCH_VIEWERS=1,2,4,8,16,32` to change): the
//!   daemon's CPU and memory, and each viewer's received frame rate;
//! * measured over `PEERCAM_BENCH_MEASURE_SECS` seconds each (default 5);
//! * call set-up: from placing a call to the first decoded frame, over a series of calls
//!   (`PEERCAM_BENCH_CALLS`, default 10), p50 and p95.
//!
//! `PEERCAM_BENCH_LAUNCHER` is a command that execs the daemon (`env LD_PRELOAD=…`), for
//! profiling it under the same load.
//!
//! Run with `cargo bench --bench viewers` (or `tools/bench`). Figures on a shared machine
//! vary from run to run; compare them within one run.

#[path = "../tests/common/mod.rs"]
mod common;

use common::stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, caller_engine, decode};
use peercam::rtc::{Caller, CallerEvent};
use serde_json::json;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

const WAIT: Duration = Duration::from_secs(15);
/// How long each viewer count is measured; `PEERCAM_BENCH_MEASURE_SECS` changes it (a
/// long window shows what per-connection buffers grow to over a call).
fn measure_window() -> Duration {
    Duration::from_secs(
        std::env::var("PEERCAM_BENCH_MEASURE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    )
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
fn sample(pid: u32) -> (f64, u64) {
    let cpu = stats::proc_sample(pid).map_or(0.0, |s| s.cpu_seconds);
    (cpu, stats::rss_kib(pid))
}

/// The daemon's share of one core and its resident memory over `window`.
async fn measure(pid: u32, window: Duration) -> (f64, u64) {
    let (cpu0, _) = sample(pid);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (cpu1, rss) = sample(pid);
    ((cpu1 - cpu0) / start.elapsed().as_secs_f64(), rss)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    stats::percentile(sorted, p).unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without
    // it, where only building it is wanted.
    if !std::env::args().any(|a| a == "--bench") {
        println!("viewers benchmark: run it with `cargo bench --bench viewers` (tools/bench)");
        return;
    }
    let counts: Vec<usize> = std::env::var("PEERCAM_BENCH_VIEWERS")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let calls: usize = std::env::var("PEERCAM_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let max = counts.iter().copied().max().unwrap_or(1);
    // A profiler that execs the daemon (heaptrack's preload library through `env`, see
    // tools/heap) sees the same calls as the figures.
    let launcher = std::env::var("PEERCAM_BENCH_LAUNCHER").unwrap_or_default();
    let launcher: Vec<&str> = launcher.split_whitespace().collect();
    let daemon = Daemon::spawn_via(
        &launcher,
        "127.0.0.1:0",
        "bench",
        &[
            "--answer",
            "auto",
            "--set",
            &format!("call.max_viewers={}", max + 2),
            "--set",
            "call.idle_stop_secs=0",
        ],
    );
    daemon.wait_until(WAIT, |s| s["registered"] == true);
    let pid = daemon.pid();
    let engine = caller_engine();

    println!("peercam viewers benchmark: dev board, 1280x720 30 fps x264 2000 kbit/s, loopback");
    let (idle_cpu, idle_rss) = measure(pid, Duration::from_secs(3)).await;
    println!();
    println!(
        "| viewers | daemon CPU (% of one core) | per extra viewer | daemon RSS (MiB) | viewer fps (min / mean) |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| idle | {:.1} | | {:.1} | |",
        idle_cpu * 100.0,
        idle_rss as f64 / 1024.0
    );

    let mut first_cpu = None;
    // Viewers join and stay, so each step's memory is that of its viewers, not also what
    // glibc kept from viewers that came and went in the steps before.
    let mut viewers = Vec::new();
    let mut frame_counters = Vec::new();
    for &n in &counts {
        for i in viewers.len()..n {
            let mut call = Caller::call(
                &engine,
                &daemon.ws,
                "bench",
                json!({"callerName": format!("v{i}")}),
            )
            .await
            .expect("call");
            let track = call
                .track(RTPCodecType::Video, WAIT)
                .await
                .unwrap_or_else(|err| panic!("viewer {i}: {err}\n{}", daemon.stderr()));
            let frames = Arc::new(AtomicU64::new(0));
            let counter = frames.clone();
            // Count pictures by their RTP marker bit; no decoding on the viewer side.
            let reader = tokio::spawn(async move {
                while let Ok((packet, _)) = track.read_rtp().await {
                    if packet.header.marker {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            frame_counters.push(frames);
            viewers.push((call, reader));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before: Vec<u64> = frame_counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let started = Instant::now();
        let (cpu, rss) = measure(pid, measure_window()).await;
        let seconds = started.elapsed().as_secs_f64();
        let fps: Vec<f64> = frame_counters
            .iter()
            .zip(before)
            .map(|(c, b)| (c.load(Ordering::Relaxed) - b) as f64 / seconds)
            .collect();
        let min_fps = fps.iter().copied().fold(f64::INFINITY, f64::min);
        let mean_fps = fps.iter().sum::<f64>() / fps.len() as f64;
        let (one_cpu, one_n) = *first_cpu.get_or_insert((cpu, n));
        let marginal = if n > one_n {
            format!("{:.2}", (cpu - one_cpu) / (n - one_n) as f64 * 100.0)
        } else {
            String::new()
        };
        println!(
            "| {n} | {:.1} | {marginal} | {:.1} | {min_fps:.1} / {mean_fps:.1} |",
            cpu * 100.0,
            rss as f64 / 1024.0
        );
    }
    for (call, reader) in viewers {
        reader.abort();
        call.hang_up("done").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Call set-up: the camera keeps running between calls (a viewer stays), so each call
    // measures signalling, ICE, DTLS and the forced keyframe, not the camera start.
    let (keeper, _) = {
        let mut call = Caller::call(
            &engine,
            &daemon.ws,
            "bench",
            json!({"callerName": "keeper"}),
        )
        .await
        .unwrap();
        let track = call.track(RTPCodecType::Video, WAIT).await.unwrap();
        (
            call,
            tokio::spawn(async move { while track.read_rtp().await.is_ok() {} }),
        )
    };
    let mut setups = Vec::new();
    let mut keyframe_waits = Vec::new();
    for i in 0..calls {
        let placed = Instant::now();
        let mut call = Caller::call(
            &engine,
            &daemon.ws,
            "bench",
            json!({"callerName": format!("c{i}")}),
        )
        .await
        .unwrap();
        let mut connected = None;
        let track = call
            .wait_for(WAIT, |e| match e {
                CallerEvent::Connected => {
                    connected = Some(Instant::now());
                    None
                }
                CallerEvent::Track(t) if t.kind() == RTPCodecType::Video => Some(t.clone()),
                _ => None,
            })
            .await
            .unwrap();
        let decoded = decode(track, 1, WAIT).await;
        if let Some(at) = decoded.first_frame_at {
            setups.push(at.duration_since(placed));
            if let Some(connected) = connected {
                keyframe_waits.push(at.saturating_duration_since(connected));
            }
        }
        call.hang_up("done").await;
    }
    keeper.hang_up("done").await;
    setups.sort();
    keyframe_waits.sort();
    println!();
    println!("| call set-up over {} calls | p50 | p95 |", setups.len());
    println!("|---|---|---|");
    println!(
        "| call placed → first decoded frame | {:.0} ms | {:.0} ms |",
        percentile(&setups, 0.5).as_secs_f64() * 1000.0,
        percentile(&setups, 0.95).as_secs_f64() * 1000.0
    );
    println!(
        "| connected → first decoded frame (waiting for the keyframe) | {:.0} ms | {:.0} ms |",
        percentile(&keyframe_waits, 0.5).as_secs_f64() * 1000.0,
        percentile(&keyframe_waits, 0.95).as_secs_f64() * 1000.0
    );
    drop(daemon);
}
