//! `peercam call` against the real daemon on loopback: it reports the video it watched
//! (pictures, keyframes, the device's events), and a decline with its reason.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Daemon;

/// `peercam call CALLEE` on the daemon's phonebook, on loopback, with `extra` arguments.
fn call_command(daemon: &Daemon, callee: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peercam"));
    command
        .args(["call", callee, "--phonebook", &daemon.ws, "--json"])
        .args([
            "--set",
            "ice.loopback=true",
            "--set",
            "ice.interfaces=[\"lo\"]",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn peercam_call(daemon: &Daemon, callee: &str, extra: &[&str]) -> std::process::Child {
    call_command(daemon, callee, extra)
        .spawn()
        .expect("peercam call starts")
}

fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "no JSON report ({err}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_watched_call_reports_pictures_keyframes_and_the_devices_events() {
    let daemon = Daemon::start("porch", &["--answer", "auto"]);
    let out = peercam_call(&daemon, "porch", &["--seconds", "2", "--name", "Ray"])
        .wait_with_output()
        .unwrap();
    let report = report(&out);
    println!("{report:#}");
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["outcome"], "watched");
    let video = &report["video"];
    assert_eq!(video["codec"], "h264");
    assert!(video["pictures"].as_u64().unwrap() > 10, "{video}");
    assert!(video["keyframes"].as_u64().unwrap() >= 1, "{video}");
    assert!(
        report["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("\"accepted\""))),
        "{report:#}"
    );
    assert!(report["ringing_ms"].as_u64().unwrap() <= report["video_ms"].as_u64().unwrap());
    daemon.wait_until(Duration::from_secs(10), |s| {
        s["calls"] == serde_json::json!([])
    });
}

#[test]
fn a_declined_call_reports_the_reason_and_fails() {
    let daemon = Daemon::start("gate", &[]);
    let child = peercam_call(&daemon, "gate", &["--answer-timeout", "20"]);
    daemon.wait_until(Duration::from_secs(10), |s| {
        s["calls"][0]["state"] == "RINGING"
    });
    daemon.control("decline Not today").unwrap();
    let out = child.wait_with_output().unwrap();
    let report = report(&out);
    assert!(!out.status.success());
    assert_eq!(report["outcome"], "declined");
    assert_eq!(report["reason"], "Not today");
    assert!(report["video"].is_null());
}

/// `peercam call` with the log filter a user gets (no `RUST_LOG`): its report is all it
/// prints, with nothing above info in its log, whether it hangs up itself after watching
/// or the device hangs up first.
#[test]
fn a_call_ended_by_either_end_logs_nothing_above_info() {
    let daemon = Daemon::start("stoop", &["--answer", "auto"]);
    // The default log filter, as a user runs it.
    let quiet = |extra: &[&str]| {
        call_command(&daemon, "stoop", extra)
            .env_remove("RUST_LOG")
            .spawn()
            .expect("peercam call starts")
    };
    let check = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warnings = common::warnings(&stderr);
        assert!(warnings.is_empty(), "{}", warnings.join("\n"));
    };

    let out = quiet(&["--seconds", "2"]).wait_with_output().unwrap();
    assert_eq!(report(&out)["outcome"], "watched");
    check(&out);
    daemon.wait_until(Duration::from_secs(10), |s| {
        s["calls"] == serde_json::json!([])
    });

    let mut child = quiet(&["--seconds", "30"]);
    daemon.wait_until(Duration::from_secs(10), |s| s["viewers"] == 1);
    // Watched for a moment: the media flows both ways when the device closes.
    std::thread::sleep(Duration::from_millis(500));
    let hung_up = std::time::Instant::now();
    daemon.control("hangup").unwrap();
    while child.try_wait().unwrap().is_none() {
        assert!(
            hung_up.elapsed() < Duration::from_secs(10),
            "peercam call went on after the device hung up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let report = report(&out);
    assert_eq!(report["outcome"], "ended", "{report:#}");
    assert_eq!(report["reason"], "hung up at the device", "{report:#}");
    assert!(
        report["video"]["pictures"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    check(&out);
}
