//! A standalone phonebook over HTTPS/WSS with its self-signed certificate, and devices
//! registering on it: with the certificate pinned they get in (with the right device
//! token); without the pin, with another certificate pinned, or with a wrong token they
//! are refused with a reason in their log, and keep trying.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use port::HeldPort;

// Only the port helper: the rest of tests/common brings WebRTC and GStreamer in.
#[path = "common/port.rs"]
mod port;

const WAIT: Duration = Duration::from_secs(15);

/// A peercam process whose stderr is collected and which is killed when dropped.
struct Process {
    child: Child,
    stderr: Arc<Mutex<String>>,
    first_line: String,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        Process::spawn(Command::new(env!("CARGO_BIN_EXE_peercam")), args)
    }

    /// Starts it listening on `held`, the test's own socket.
    fn start_on(held: &HeldPort, args: &[&str]) -> Process {
        Process::spawn(held.command(env!("CARGO_BIN_EXE_peercam")), args)
    }

    fn spawn(mut command: Command, args: &[&str]) -> Process {
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info,peercam=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("peercam starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first_line = String::new();
        out.read_line(&mut first_line)
            .expect("peercam prints a first line");
        std::thread::spawn(move || for _ in out.lines() {});
        Process {
            child,
            stderr,
            first_line,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log contains `text`.
    fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {text:?} in the log within {WAIT:?}:\n{}", self.log());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn device(name: &str, url: &str, dir: &Path, extra: &[&str]) -> (Process, PathBuf) {
    let control = dir.join(format!("{name}.sock"));
    let mut args = vec![
        "run",
        "--board",
        "dev",
        "--name",
        name,
        "--phonebook",
        url,
        "--no-terminal",
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Process::start(&args), control)
}

fn registered(control: &Path) -> bool {
    Command::new(env!("CARGO_BIN_EXE_peercam"))
        .args(["status", "--control"])
        .arg(control)
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .is_some_and(|status| status["registered"] == true)
}

#[test]
fn devices_reach_a_self_signed_phonebook_only_with_its_certificate_pinned_and_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("phonebook");
    let held = HeldPort::bind();
    let port = held.port;
    let phonebook = Process::start_on(
        &held,
        &[
            "phonebook",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--set",
            "tls.mode=\"on\"",
            "--set",
            &format!("tls.dir=\"{}\"", certs.display()),
            "--set",
            "access.devices.guarded=\"guarded-token-1\"",
        ],
    );
    assert!(
        phonebook.first_line.contains("SHA-256"),
        "the phonebook prints its certificate's fingerprint first: {:?}",
        phonebook.first_line
    );
    let cert = certs.join("phonebook-cert.pem");
    let pin = format!("device.phonebook_cert=\"{}\"", cert.display());
    let url = format!("wss://127.0.0.1:{port}/ws");

    let (pinned, pinned_control) = device("pinned", &url, dir.path(), &["--set", &pin]);
    let deadline = Instant::now() + WAIT;
    while !registered(&pinned_control) {
        assert!(
            Instant::now() < deadline,
            "the pinned device did not register:\n{}",
            pinned.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Without the pin only public CAs are trusted.
    let (unpinned, unpinned_control) = device("unpinned", &url, dir.path(), &[]);
    unpinned.wait_for_log("UnknownIssuer");
    assert!(!registered(&unpinned_control));

    // Another certificate pinned: refused, naming both fingerprints.
    let other = tempfile::tempdir().unwrap();
    let settings = peercam::tls::TlsSettings {
        mode: peercam::tls::TlsMode::On,
        dir: Some(other.path().to_owned()),
        ..Default::default()
    };
    settings
        .server("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .unwrap();
    let wrong = format!(
        "device.phonebook_cert=\"{}\"",
        other.path().join("phonebook-cert.pem").display()
    );
    let (mispinned, mispinned_control) = device("mispinned", &url, dir.path(), &["--set", &wrong]);
    mispinned.wait_for_log("is not the pinned one");
    assert!(!registered(&mispinned_control));

    // A name that belongs to a device needs that device's token.
    let (impostor, impostor_control) = device(
        "guarded",
        &url,
        dir.path(),
        &["--set", &pin, "--set", "device.token=\"not-the-token\""],
    );
    impostor.wait_for_log("check device.token");
    assert!(!registered(&impostor_control));
    assert!(
        !impostor.log().contains("not-the-token"),
        "the token must not appear in the log"
    );
    drop(impostor);
    let (owner, owner_control) = device(
        "guarded",
        &url,
        dir.path(),
        &["--set", &pin, "--set", "device.token=\"guarded-token-1\""],
    );
    let deadline = Instant::now() + WAIT;
    while !registered(&owner_control) {
        assert!(
            Instant::now() < deadline,
            "the device with its token did not register:\n{}",
            owner.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        registered(&pinned_control),
        "the first device stayed registered"
    );
}
