//! The service's contract with systemd, for real: the daemon talks the notify protocol to
//! a socket this test reads, and the unit files pass `systemd-analyze`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// Messages the daemon sent to the notify socket, in order, until `until` matches one or
/// `timeout` passes.
fn collect(socket: &UnixDatagram, until: &str, timeout: Duration, into: &mut Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == until);
                into.push(message);
                if done {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no {until} within {timeout:?}; got {into:?}");
}

#[test]
fn the_daemon_says_ready_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // SAFETY: set before any thread of this test binary reads the environment; the
    // daemon is a child process that inherits it.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "400000");
    }
    let daemon = common::Daemon::spawn("svc", &[]);
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
    }
    let mut messages = Vec::new();
    collect(&socket, "READY=1", Duration::from_secs(20), &mut messages);
    assert!(
        messages
            .last()
            .unwrap()
            .contains("STATUS=registered as \"svc\", 0 viewers"),
        "{messages:?}"
    );
    let before_pings = messages.len();
    collect(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut messages);
    collect(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut messages);
    assert!(messages.len() >= before_pings + 2);
    assert!(daemon.stop().success());
    collect(&socket, "STOPPING=1", Duration::from_secs(2), &mut messages);

    let first = |wanted: &str| {
        messages
            .iter()
            .position(|m| m.lines().any(|l| l == wanted))
            .unwrap_or_else(|| panic!("no {wanted} in {messages:?}"))
    };
    assert!(first("READY=1") < first("WATCHDOG=1"), "{messages:?}");
    assert!(first("WATCHDOG=1") < first("STOPPING=1"), "{messages:?}");
    println!("notify messages in order: {messages:?}");
}

/// The units, with ExecStart pointed at the binary under test, as `systemd-analyze` sees
/// them.
fn units_for_analysis(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let bin = env!("CARGO_BIN_EXE_peercam");
    ["peercam.service", "peercam-phonebook.service"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("systemd")
                    .join(name),
            )
            .unwrap();
            let path = dir.join(name);
            std::fs::write(&path, text.replace("/usr/bin/peercam", bin)).unwrap();
            path
        })
        .collect()
}

#[test]
fn unit_files_verify_and_their_exposure_is_low() {
    let analyze = which("systemd-analyze")
        .expect("systemd-analyze is missing: install the systemd package (tools/test does)");
    let dir = tempfile::tempdir().unwrap();
    for unit in units_for_analysis(dir.path()) {
        let verify = Command::new(&analyze)
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&verify.stderr);
        // Users, groups and network-online.target exist only on a real system.
        let serious: Vec<&str> = complaints
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("network-online.target") && !l.contains("sound.target"))
            .collect();
        assert!(
            verify.status.success() && serious.is_empty(),
            "{} does not verify:\n{complaints}",
            unit.display()
        );

        let security = Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&security.stdout);
        let score: f64 = report
            .lines()
            .find_map(|l| l.split("exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure score in:\n{report}\n{}",
                    String::from_utf8_lossy(&security.stderr)
                )
            });
        println!(
            "{}: exposure {score}",
            unit.file_name().unwrap().to_string_lossy()
        );
        assert!(
            score <= 3.0,
            "{} is too exposed ({score}):\n{report}",
            unit.display()
        );
    }
}

#[test]
fn units_leave_file_descriptors_for_every_connection_the_phonebook_accepts() {
    let needed = 2 * peercam::signalling::limits::Limits::default().tcp_connections;
    for name in ["peercam.service", "peercam-phonebook.service"] {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("systemd")
                .join(name),
        )
        .unwrap();
        let limit: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap_or_else(|| panic!("{name} sets no LimitNOFILE"))
            .trim()
            .parse()
            .unwrap_or_else(|err| panic!("{name}: LimitNOFILE is not a number: {err}"));
        assert!(
            limit >= needed,
            "{name}: LimitNOFILE={limit}, below twice the phonebook's connection cap"
        );
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}
