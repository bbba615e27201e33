//! Shared by the integration tests: start the real daemon binary, press its buttons, and
//! decode received video with GStreamer.

#![allow(dead_code)]

pub mod port;
pub mod stats;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use peercam::config::IceSettings;
use peercam::media::Codec;
use peercam::rtc::RtcEngine;
use webrtc::track::track_remote::TrackRemote;

/// ICE restricted to loopback, for both ends of every test call.
pub fn loopback_ice() -> IceSettings {
    IceSettings {
        servers: Vec::new(),
        interfaces: vec!["lo".into()],
        loopback: true,
    }
}

/// A caller-side WebRTC engine on loopback that offers H.264, VP8 and Opus like a
/// browser.
pub fn caller_engine() -> RtcEngine {
    RtcEngine::caller(&loopback_ice(), &[Codec::H264, Codec::Vp8, Codec::Opus]).expect("engine")
}

/// The daemon binary running with the dev board on loopback.
pub struct Daemon {
    child: Child,
    pub page: String,
    pub ws: String,
    pub control: PathBuf,
    _dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `peercam run` with an embedded phonebook on 127.0.0.1:0 and `extra` args.
    pub fn start(name: &str, extra: &[&str]) -> Daemon {
        let daemon = Daemon::spawn(name, extra);
        daemon.wait_until(Duration::from_secs(10), |s| s["registered"] == true);
        daemon
    }

    /// Starts `peercam run` without waiting for it to register.
    pub fn spawn(name: &str, extra: &[&str]) -> Daemon {
        Daemon::spawn_via(&[], "127.0.0.1:0", name, extra)
    }

    /// Like [`Daemon::spawn`], with the embedded phonebook on `listen`, started through
    /// `launcher` if not empty: a command that execs the daemon (`ip netns exec NS`, `env
    /// VAR=value`), so that [`Daemon::pid`] is still the daemon's own.
    pub fn spawn_via(launcher: &[&str], listen: &str, name: &str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = dir.path().join("control.sock");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_peercam"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_peercam")),
        };
        let mut child = command
            .args(["run", "--board", "dev", "--listen", listen, "--name", name])
            .arg("--control")
            .arg(&control)
            .args([
                "--no-terminal",
                "--set",
                "ice.loopback=true",
                "--set",
                "ice.interfaces=[\"lo\"]",
            ])
            .args(extra)
            .env("RUST_LOG", "info,peercam=debug,webrtc=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the peercam binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the daemon prints its URL");
        let Some(url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("ws://"))
            .map(str::to_owned)
        else {
            // No `Daemon` yet whose drop would stop it: a failed start must not leave a
            // daemon running after the tests.
            let _ = child.kill();
            let _ = child.wait();
            let log = stderr.lock().unwrap().clone();
            panic!("no URL in {line:?}; stderr: {log}");
        };
        let (page, ws) = match url.strip_prefix("ws://") {
            Some(rest) => (
                format!("http://{}/", rest.trim_end_matches("/ws")),
                url.clone(),
            ),
            None => (
                url.clone(),
                format!("{}ws", url.replacen("http://", "ws://", 1)),
            ),
        };
        std::thread::spawn(move || for _ in out.lines() {});
        Daemon {
            child,
            page,
            ws,
            control,
            _dir: dir,
            stderr,
        }
    }

    /// Sends one control line; `Ok(reply)` or `Err(error text)`.
    pub fn control(&self, line: &str) -> Result<String, String> {
        send_control(&self.control, line).expect("control socket reachable")
    }

    /// The daemon's status.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.control("status").expect("status")).expect("status is JSON")
    }

    /// Polls the status until `ok` holds, panicking after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Ok(reply) = self.control_quiet("status") {
                let status: serde_json::Value = serde_json::from_str(&reply).unwrap();
                if ok(&status) {
                    return status;
                }
                if start.elapsed() > timeout {
                    panic!(
                        "condition not met within {timeout:?}; status {status}\nstderr:\n{}",
                        self.stderr()
                    );
                }
            } else if start.elapsed() > timeout {
                panic!(
                    "the control socket never answered\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn control_quiet(&self, line: &str) -> Result<String, String> {
        send_control(&self.control, line).unwrap_or_else(|err| Err(err.to_string()))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits up to 10 s for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not stop within 10 s of SIGTERM\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A standalone `peercam phonebook` on a loopback port the test holds (see [`port`]), so
/// it can be killed and started again where the cameras expect it.
pub struct StandalonePhonebook {
    child: Child,
    held: port::HeldPort,
    pub port: u16,
}

impl StandalonePhonebook {
    /// Starts on a port of its own; returns once it prints its URL.
    pub fn start() -> StandalonePhonebook {
        let held = port::HeldPort::bind();
        let child = Self::spawn(&held);
        let port = held.port;
        StandalonePhonebook { child, held, port }
    }

    fn spawn(held: &port::HeldPort) -> Child {
        let mut child = held
            .command(env!("CARGO_BIN_EXE_peercam"))
            // The address is the held socket's; --listen only fills the argument.
            .args(["phonebook", "--listen", &format!("127.0.0.1:{}", held.port)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the phonebook starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("http://"), "phonebook said {line:?}");
        std::thread::spawn(move || for _ in out.lines() {});
        child
    }

    /// The WebSocket URL cameras and pages use.
    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Kills it at once, as a crash or power cut would. Connections made until
    /// [`StandalonePhonebook::restart`] wait in the held socket's queue.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.held);
    }
}

impl Drop for StandalonePhonebook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Talks to the control socket from any context, async test or not, on a thread of its
/// own with its own small runtime.
fn send_control(path: &std::path::Path, line: &str) -> anyhow::Result<Result<String, String>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(peercam::gpio::simulated::send_control(path, line))
            })
            .join()
            .expect("control thread")
    })
}

/// What a decoder made of a received track.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoded {
    /// Pictures (or audio buffers) decoded.
    pub frames: u64,
    pub width: i32,
    pub height: i32,
    /// Time from the start of decoding to the first decoded picture.
    pub first_frame: Option<Duration>,
    /// When the first picture came out of the decoder.
    pub first_frame_at: Option<Instant>,
}

/// Decodes `track` (H.264 with `avdec_h264`, VP8 with `vp8dec`, Opus with `opusdec`)
/// until `want_frames` pictures or audio buffers came out or `timeout` passed.
pub async fn decode(track: Arc<TrackRemote>, want_frames: u64, timeout: Duration) -> Decoded {
    gst::init().unwrap();
    let mime = track.codec().capability.mime_type.to_ascii_lowercase();
    let (media, encoding, clock, chain) = match mime.as_str() {
        "video/vp8" => (
            "video",
            "VP8",
            90_000,
            "rtpvp8depay ! vp8dec ! videoconvert ! video/x-raw,format=I420",
        ),
        "audio/opus" => (
            "audio",
            "OPUS",
            48_000,
            "rtpopusdepay ! opusdec ! audioconvert",
        ),
        _ => (
            "video",
            "H264",
            90_000,
            "rtph264depay ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420",
        ),
    };
    let caps = format!(
        "application/x-rtp,media={media},clock-rate={clock},encoding-name={encoding},payload={}",
        track.payload_type()
    );
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=rtp is-live=true format=time caps=\"{caps}\" ! {chain} ! appsink name=pictures sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("rtp")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("pictures")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let frames = Arc::new(AtomicU64::new(0));
    let size = Arc::new(Mutex::new((0, 0)));
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    {
        let frames = frames.clone();
        let size = size.clone();
        let first = first.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(s) = sample
                        .caps()
                        .and_then(|c| c.structure(0).map(|s| s.to_owned()))
                    {
                        *size.lock().unwrap() = (
                            s.get::<i32>("width").unwrap_or(0),
                            s.get::<i32>("height").unwrap_or(0),
                        );
                    }
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                    frames.fetch_add(1, Ordering::Relaxed);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    while frames.load(Ordering::Relaxed) < want_frames {
        let packet = match tokio::time::timeout_at(deadline, track.read_rtp()).await {
            Ok(Ok((packet, _))) => packet,
            _ => break,
        };
        use webrtc::util::Marshal;
        let bytes = packet.marshal().unwrap();
        let _ = src.push_buffer(gst::Buffer::from_slice(bytes));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let (width, height) = *size.lock().unwrap();
    let first_frame_at = *first.lock().unwrap();
    Decoded {
        frames: frames.load(Ordering::Relaxed),
        width,
        height,
        first_frame: first_frame_at.map(|t| t.duration_since(start)),
        first_frame_at,
    }
}

/// Decodes `track` (H.264) and sends, for every picture as it leaves the decoder, its
/// age in milliseconds if it carries a stamp (src/media/stamp.rs), else `None`. The
/// pipeline runs until dropped.
pub fn decode_latencies(
    track: Arc<TrackRemote>,
    latencies: tokio::sync::mpsc::UnboundedSender<Option<u64>>,
) -> gst::Pipeline {
    gst::init().expect("GStreamer");
    let caps = format!(
        "application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload={}",
        track.payload_type()
    );
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=rtp is-live=true format=time caps=\"{caps}\" ! rtph264depay ! h264parse ! \
         avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! appsink name=pictures sync=false"
    ))
    .expect("decoder pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline
        .by_name("pictures")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let now = peercam::media::stamp::now_ms();
                let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(info) = gstreamer_video::VideoInfo::from_caps(caps) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let mut age = None;
                if let Ok(frame) =
                    gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                    && let Ok(luma) = frame.plane_data(0)
                    && let Some(stamped) = peercam::media::stamp::read_luma(
                        luma,
                        info.stride()[0] as usize,
                        info.width() as usize,
                        info.height() as usize,
                    )
                {
                    age = Some(peercam::media::stamp::age_ms(stamped, now));
                }
                let _ = latencies.send(age);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let src = pipeline
        .by_name("rtp")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .expect("appsrc");
    pipeline
        .set_state(gst::State::Playing)
        .expect("decoder plays");
    tokio::spawn(async move {
        while let Ok((packet, _)) = track.read_rtp().await {
            if let Ok(bytes) = webrtc::util::Marshal::marshal(&packet) {
                let _ = src.push_buffer(gst::Buffer::from_slice(bytes));
            }
        }
    });
    pipeline
}

/// An HTTP response, read whole.
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value, if it is there and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        use anyhow::Context;
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

/// One HTTP/1.1 request to `url` (`http://host:port/path`) on a connection of its own,
/// answered within `timeout`.
pub async fn http(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    use anyhow::Context;
    let exchange = async {
        use http_body_util::BodyExt;
        let uri: hyper::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url}"))?
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        // Headers and body may go out as two writes; without this the second waits for
        // the first one's (delayed) acknowledgement.
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, &authority);
        if let Some(content_type) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        driver.abort();
        anyhow::Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{method} {url}: no answer within {timeout:?}"))?
}

/// The lines of a peercam log (its default text format) at WARN or ERROR.
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect()
}
