//! The doorbell, end to end: the daemon binary, webrtc-rs callers, the phonebook, and the
//! control socket standing in for the buttons. The call policy itself (busy, the
//! allow-list, early candidates, lost sides, …) is unit-tested on simulated time in
//! `src/device/tests.rs`; these check that the real parts carry it: `peercam press`,
//! the control socket's replies, the timers of the shell, presence in the phonebook, the
//! data channel, and the shutdown.

mod common;

use std::time::Duration;

use common::{Daemon, caller_engine};
use peercam::rtc::{Caller, CallerEvent, RtcEngine};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

async fn call(engine: &RtcEngine, daemon: &Daemon, callee: &str, caller: &str) -> Caller {
    Caller::call(engine, &daemon.ws, callee, json!({"callerName": caller}))
        .await
        .expect("call placed")
}

async fn wait_ringing(call: &mut Caller) {
    call.wait_for(WAIT, |e| matches!(e, CallerEvent::Ringing).then_some(()))
        .await
        .expect("it rings");
}

/// Waits for the call to be declined and returns the reason.
async fn declined(call: &mut Caller) -> String {
    loop {
        match call.next(WAIT).await {
            Some(CallerEvent::Declined(reason)) => return reason,
            Some(CallerEvent::Ringing) => continue,
            other => panic!("expected a decline, got {other:?}"),
        }
    }
}

async fn wait_connected(call: &mut Caller, daemon: &Daemon) {
    call.wait_for(WAIT, |e| matches!(e, CallerEvent::Connected).then_some(()))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
}

/// Waits for a data-channel event from the camera matching `pick`.
async fn device_event(call: &mut Caller, pick: impl Fn(&Value) -> bool) -> Value {
    call.wait_for(WAIT, |e| match e {
        CallerEvent::Data(text) => serde_json::from_str::<Value>(text).ok().filter(&pick),
        _ => None,
    })
    .await
    .expect("device event")
}

fn press(daemon: &Daemon, line: &str) -> Result<String, String> {
    tokio::task::block_in_place(|| daemon.control(line))
}

fn status(daemon: &Daemon) -> Value {
    tokio::task::block_in_place(|| daemon.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peercam_press_declines_with_the_reason_verbatim_and_the_ring_times_out() {
    let daemon = Daemon::start("bell", &["--set", "call.ring_timeout_secs=1"]);
    let engine = caller_engine();

    let mut first = call(&engine, &daemon, "bell", "Ray").await;
    wait_ringing(&mut first).await;
    // Through the command a person types: `peercam press` writes the control line.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_peercam"))
            .args([
                "press",
                "decline",
                "--reason",
                "Pas maintenant ☕ — plus tard",
            ])
            .arg("--control")
            .arg(&daemon.control)
            .output()
            .expect("peercam press runs")
    });
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && reply.contains("Ray"), "{reply}");
    assert_eq!(declined(&mut first).await, "Pas maintenant ☕ — plus tard");

    // Refusals and bad lines get `error` replies, and the daemon goes on.
    assert_eq!(press(&daemon, "accept"), Err("no call is ringing".into()));
    let unknown = press(&daemon, "launch").unwrap_err();
    assert!(
        unknown.starts_with("unknown command \"launch\""),
        "{unknown}"
    );

    let mut second = call(&engine, &daemon, "bell", "Egon").await;
    wait_ringing(&mut second).await;
    let started = std::time::Instant::now();
    assert_eq!(declined(&mut second).await, "no answer");
    println!("ring timeout of 1 s declined after {:?}", started.elapsed());
    assert_eq!(status(&daemon)["calls"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_callers_one_is_accepted_one_declined_then_the_device_hangs_up() {
    let daemon = Daemon::start("gate", &[]);
    let engine = caller_engine();
    let mut ray = call(&engine, &daemon, "gate", "Ray").await;
    wait_ringing(&mut ray).await;
    let mut egon = call(&engine, &daemon, "gate", "Egon").await;
    wait_ringing(&mut egon).await;

    // Presses go to the call that rang first.
    assert!(press(&daemon, "accept").unwrap().contains("Ray"));
    assert!(press(&daemon, "decline").unwrap().contains("Egon"));
    assert_eq!(declined(&mut egon).await, "Not now");
    wait_connected(&mut ray, &daemon).await;
    device_event(&mut ray, |v| v["event"] == "viewers").await;

    // A third caller rings again while Ray watches: a second family member can join.
    let mut peter = call(&engine, &daemon, "gate", "Peter").await;
    wait_ringing(&mut peter).await;
    let ringing = device_event(&mut ray, |v| v["event"] == "ringing").await;
    assert_eq!(ringing["caller"], "Peter");
    press(&daemon, "accept").unwrap();
    wait_connected(&mut peter, &daemon).await;
    tokio::task::block_in_place(|| daemon.wait_until(WAIT, |s| s["viewers"] == 2));

    let reply = press(&daemon, "hangup").unwrap();
    assert_eq!(reply, "ended 2 call(s)");
    for viewer in [&mut ray, &mut peter] {
        let reason = viewer
            .wait_for(WAIT, |e| match e {
                CallerEvent::Hangup(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(reason, "hung up at the device");
    }
    tokio::task::block_in_place(|| daemon.wait_until(WAIT, |s| s["calls"] == json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disturb_declines_and_shows_in_the_phonebook_until_pressed_again() {
    let daemon = Daemon::start("quiet", &[]);
    let engine = caller_engine();
    let mut ringing = call(&engine, &daemon, "quiet", "Early").await;
    wait_ringing(&mut ringing).await;

    let reply = press(&daemon, "dnd").unwrap();
    assert!(reply.contains("on"), "{reply}");
    // The call that was ringing is declined with the do-not-disturb reason too.
    assert_eq!(declined(&mut ringing).await, "Do not disturb");
    wait_presence(&daemon, "dnd").await;

    let mut later = call(&engine, &daemon, "quiet", "Later").await;
    assert_eq!(declined(&mut later).await, "Do not disturb");

    assert!(press(&daemon, "dnd").unwrap().contains("off"));
    wait_presence(&daemon, "available").await;
    let mut again = call(&engine, &daemon, "quiet", "Again").await;
    wait_ringing(&mut again).await;
    again.hang_up("bye").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channel_carries_text_and_device_events_and_the_lights_follow() {
    let daemon = Daemon::start("porch", &[]);
    let engine = caller_engine();
    let mut ray = call(&engine, &daemon, "porch", "Ray").await;
    wait_ringing(&mut ray).await;

    // While it rings the ring LED blinks: both levels show up within a second.
    let mut seen = std::collections::HashSet::new();
    let started = std::time::Instant::now();
    while seen.len() < 2 && started.elapsed() < Duration::from_secs(3) {
        seen.insert(status(&daemon)["indicators"]["ring_led"].as_bool().unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(seen.len(), 2, "the ring LED did not blink");

    press(&daemon, "accept").unwrap();
    let count = device_event(&mut ray, |v| v["event"] == "viewers").await;
    assert_eq!(count["count"], 1);
    ray.send_text("hello camera").await.unwrap();
    tokio::task::block_in_place(|| {
        let s = daemon.wait_until(WAIT, |s| s["indicators"]["on_air_led"] == true);
        assert_eq!(s["indicators"]["ring_led"], false, "{s}");
        let deadline = std::time::Instant::now() + WAIT;
        while !daemon.stderr().contains("hello camera") {
            assert!(
                std::time::Instant::now() < deadline,
                "the text never reached the device"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    // Shutting down tells the viewer on the data channel and in the signalling.
    let exit = tokio::task::block_in_place(|| daemon.stop());
    assert!(exit.success());
    // The event and the hang-up travel on different paths, in either order.
    let (mut got_event, mut reason) = (false, None);
    while !(got_event && reason.is_some()) {
        match ray.next(WAIT).await {
            Some(CallerEvent::Data(text)) if text.contains("shutting_down") => got_event = true,
            Some(CallerEvent::Hangup(r)) => reason = Some(r),
            Some(_) => continue,
            None => panic!("after SIGTERM: event {got_event}, hang-up {reason:?}"),
        }
    }
    assert_eq!(reason.as_deref(), Some("camera shutting down"));
}

/// Polls the phonebook until the only callee shows `presence`.
async fn wait_presence(daemon: &Daemon, presence: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let callees = http_json(&daemon.page, "/api/callees").await;
        if callees[0]["presence"] == presence {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never became {presence}: {callees}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` from the daemon's web server and parse JSON.
async fn http_json(page: &str, path: &str) -> Value {
    let url = format!("{}{}", page.trim_end_matches('/'), path);
    common::http("GET", &url, None, b"", WAIT)
        .await
        .and_then(|response| response.json())
        .unwrap_or_else(|err| panic!("GET {url}: {err:#}"))
}
