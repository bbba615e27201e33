//! Buttons without pins: a Unix control socket (one line in, one line out), and the
//! terminal's keys when the daemon runs in one.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::control::{self, Control, ControlError, MAX_LINE, Reply, Request};

/// Where the control socket goes when the settings do not say.
pub fn default_control_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("peercam.sock"),
        None if nix::unistd::geteuid().is_root() => PathBuf::from("/run/peercam.sock"),
        None => std::env::temp_dir().join(format!("peercam-{}.sock", nix::unistd::geteuid())),
    }
}

/// Listens on the control socket at `path` until `shutdown`, passing each line on as a
/// [`Request`]. Refuses to start if another daemon answers there.
pub async fn serve_control_socket(
    path: &Path,
    commands: mpsc::Sender<Request>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another peercam is running with the control socket {}; stop it or give --control another path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    info!(path = %path.display(), "control socket ready (peercam press accept|decline|hangup)");
    let path = path.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { tokio::spawn(control_client(stream, commands.clone())); }
                    Err(err) => { warn!(%err, "control socket failed"); break; }
                },
                _ = shutdown.cancelled() => break,
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn control_client(stream: UnixStream, commands: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 16));
    let mut line = String::new();
    loop {
        line.clear();
        match tokio::time::timeout(Duration::from_secs(60), lines.read_line(&mut line)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                debug!(%err, "control client failed");
                return;
            }
        }
        let reply = match Control::parse(&line) {
            Ok(control) => ask(&commands, control).await,
            Err(err) => Err(err),
        };
        if write
            .write_all(control::reply_line(&reply).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn ask(commands: &mpsc::Sender<Request>, control: Control) -> Reply {
    let (request, reply) = Request::answered(control);
    commands
        .send(request)
        .await
        .map_err(|_| ControlError::ShuttingDown)?;
    reply.await.unwrap_or(Err(ControlError::ShuttingDown))
}

/// Sends one request line to the daemon's control socket and returns its reply: the text
/// after `ok`, or the daemon's error text.
pub async fn send_control(path: &Path, line: &str) -> anyhow::Result<Result<String, String>> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no peercam daemon answers on {} (is it running? is --control right?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", line.trim()).as_bytes())
        .await?;
    let mut reply = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    .context("the daemon did not reply within 10 s")??;
    Ok(control::parse_reply(&reply))
}

/// Reads single keys from the terminal (`a` accept, `d` decline, `h` hang up, `n` do
/// not disturb on/off) when
/// standard input is one. Returns `None` otherwise (under systemd, in tests).
pub fn terminal_keys(commands: mpsc::Sender<Request>) -> Option<TerminalGuard> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok()?;
    let mut raw = saved.clone();
    // Keys without Enter and without echo; Ctrl-C still stops the daemon.
    raw.local_flags
        .remove(nix::sys::termios::LocalFlags::ICANON | nix::sys::termios::LocalFlags::ECHO);
    nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
    std::thread::Builder::new()
        .name("terminal-keys".into())
        .spawn(move || {
            use std::io::Read;
            let mut byte = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut byte) {
                let Some(control) = Control::from_key(byte[0]) else {
                    continue;
                };
                let (request, reply) = Request::answered(control);
                if commands.blocking_send(request).is_err() {
                    break;
                }
                match reply.blocking_recv() {
                    Ok(Ok(text)) => eprintln!("  {text}"),
                    Ok(Err(err)) => eprintln!("  {err}"),
                    Err(_) => break,
                }
            }
        })
        .ok()?;
    Some(TerminalGuard { saved })
}

/// Puts the terminal back as it was when dropped.
pub struct TerminalGuard {
    saved: nix::sys::termios::Termios,
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Outputs of a board without pins: changes are logged, the door's at info level (it
/// lets people in), the lights' and buzzer's at debug level.
#[derive(Debug, Default)]
pub struct LoggedIndicators {
    levels: std::collections::HashMap<super::Output, bool>,
}

impl super::Indicators for LoggedIndicators {
    fn set(&mut self, output: super::Output, on: bool) -> anyhow::Result<()> {
        let was = self.levels.insert(output, on);
        if was != Some(on) {
            if output == super::Output::Door && (on || was.is_some()) {
                info!(on, "door output (simulated)");
            } else {
                debug!(?output, on, "indicator");
            }
        }
        Ok(())
    }
}
