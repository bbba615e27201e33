//! peercam against the usual alternatives, on this machine, in one run.
//!
//! Every system serves the same picture with the same encoder settings (peercam's dev
//! board: its test pattern with the clock, 1280x720 at 30 fps, x264 ultrafast
//! zerolatency, 2000 kbit/s, a keyframe every 60 frames, constrained baseline; the
//! GStreamer description is taken from peercam's own pipeline code), and the same
//! lightweight webrtc-rs viewer watches each one on loopback:
//!
//! * `peercam`: the daemon with the dev board, auto-answer, through its WHEP endpoint;
//! * `janus`: Janus's streaming plugin, an RTP mountpoint fed by `gst-launch-1.0` with
//!   the same source and encoder, viewers through Janus's HTTP API (Janus offers);
//! * `webrtcbin`: one GStreamer webrtcbin with its own encoder per viewer
//!   (`tools/compare.d/webrtcbin_server.py`, WHEP-like);
//! * `aiortc`: aiortc with one shared GStreamer source and aiortc's own x264 encoder per
//!   viewer, given the same x264 settings (`tools/compare.d/aiortc_server.py`);
//!   `aiortc-stock` leaves aiortc's encoder defaults.
//!
//! For each: CPU (share of one core, all the serving processes) and resident memory idle
//! and with 1, 2, 4, … viewers until frames drop, the frame rate each viewer receives,
//! call set-up (viewer starts → first RTP packet and → first decoded picture, with one
//! viewer already watching), and glass-to-glass latency: each system restarted with
//! every frame stamped with its capture time (src/media/stamp.rs; peercam draws it
//! itself, Janus and aiortc get their frames from a feeder process, this binary with
//! `--feed`, and the webrtcbin server draws the same layout in Python), one viewer
//! decoding with avdec_h264 and reading it back. One table at the end with peercam's
//! ratio to each.
//!
//! Run with `tools/compare` (installs Janus, the GStreamer WebRTC plugins and aiortc when
//! missing). Environment: `PEERCAM_COMPARE_SYSTEMS` (default
//! `peercam,janus,webrtcbin,aiortc`), `PEERCAM_COMPARE_VIEWERS` (`1,2,4,8,16,32`),
//! `PEERCAM_COMPARE_CALLS` (20), `PEERCAM_COMPARE_MEASURE_SECS` (5),
//! `PEERCAM_COMPARE_LATENCY_FRAMES` (300),
//! `PEERCAM_COMPARE_PYTHON` (the Python with aiortc), `PEERCAM_COMPARE_SYSTEM_PYTHON` (Debian's
//! Python with GStreamer's bindings, for webrtcbin).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{Daemon, decode, decode_latencies, http};
use serde_json::{Value, json};
use webrtc::api::media_engine::{MIME_TYPE_H264, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::{RTCPFeedback, RTCRtpTransceiverInit};
use webrtc::track::track_remote::TrackRemote;

const WAIT: Duration = Duration::from_secs(15);
/// A viewer below this many pictures a second is losing frames (90 % of 30 fps).
const DROP_FPS: f64 = 27.0;
/// The payload type the viewers offer for constrained baseline H.264, and Janus sends.
const H264_PT: u8 = 102;
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

// ---------------------------------------------------------------------------------------
// The shared source and encoder

/// peercam's dev-board pipeline up to the encoded stream, and its parts.
struct Encoding {
    /// The source alone (test pattern and clock), before peercam's encoder branch.
    source: String,
    /// The same source with an element whose pictures get the capture time drawn in
    /// (src/media/stamp.rs), for the latency run.
    stamped_source: String,
    /// What follows the source in `encoded`: the encoder branch up to h264parse.
    encoder: String,
    width: u32,
    height: u32,
    fps: u32,
    bitrate_kbps: u32,
    keyframe_interval: u32,
    summary: String,
}

/// The dev board's video settings with the capture-time stamp on or off.
fn dev_video(stamp: bool) -> anyhow::Result<peercam::media::settings::VideoSettings> {
    let mut video = peercam::config::Settings::load("dev", None, toml::Table::new())?.video;
    video.stamp = stamp;
    // The VP8 branch is idle behind a closed valve in peercam; the others have none.
    video.vp8_fallback = false;
    Ok(video)
}

/// The part of peercam's description for `video` before ` ! {until}`.
fn description_until(
    video: &peercam::media::settings::VideoSettings,
    until: &str,
) -> anyhow::Result<String> {
    let x264 = peercam::media::encode::h264_quirks("x264enc").context("x264enc quirks")?;
    let description = peercam::media::pipeline::compose(
        video,
        peercam::media::settings::InputFormat::Raw,
        Some(x264),
    )?;
    Ok(description
        .split(&format!(" ! {until}"))
        .next()
        .with_context(|| format!("no {until} in peercam's pipeline"))?
        .trim()
        .to_owned())
}

fn dev_encoding() -> anyhow::Result<Encoding> {
    let video = dev_video(false)?;
    let x264 = peercam::media::encode::h264_quirks("x264enc").context("x264enc quirks")?;
    let encoded = description_until(&video, "appsink")?;
    let source = description_until(&video, "tee")?;
    let encoder = encoded
        .strip_prefix(&source)
        .and_then(|rest| rest.trim_start().strip_prefix('!'))
        .context("the encoder branch does not follow the source")?
        .trim()
        .to_owned();
    let stamped_source = description_until(&dev_video(true)?, "tee")?;
    Ok(Encoding {
        summary: format!(
            "{}x{} {} fps, {}",
            video.width,
            video.height,
            video.fps,
            x264.launch(video.bitrate_kbps, video.keyframe_interval)
        ),
        source,
        stamped_source,
        encoder,
        width: video.width,
        height: video.height,
        fps: video.fps,
        bitrate_kbps: video.bitrate_kbps,
        keyframe_interval: video.keyframe_interval,
    })
}

impl Encoding {
    /// Caps for raw pictures read back from shared memory (shmsrc carries none).
    fn raw_caps(&self) -> String {
        format!(
            "video/x-raw,format=I420,width={},height={},framerate={}/1",
            self.width, self.height, self.fps
        )
    }
}

/// `base`'s scheme and authority joined with the absolute `path`.
fn origin_join(base: &str, path: &str) -> String {
    if path.starts_with("http://") {
        return path.to_owned();
    }
    let rest = base.trim_start_matches("http://");
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    format!("http://{authority}{path}")
}

// ---------------------------------------------------------------------------------------
// The viewer: webrtc-rs receiving H.264 only, on loopback

/// The viewers' WebRTC stack: H.264 only, NACK and RTCP reports (as a browser), and no
/// congestion-control feedback, so every server keeps the configured bitrate. ICE on
/// loopback, and on `interface` too where a server cannot use loopback.
fn viewer_api(interface: Option<String>) -> anyhow::Result<API> {
    let mut media = MediaEngine::default();
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    media.register_codec(
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: MIME_TYPE_H264.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: H264_FMTP.into(),
                rtcp_feedback: vec![
                    feedback("ccm", "fir"),
                    feedback("nack", ""),
                    feedback("nack", "pli"),
                ],
            },
            payload_type: H264_PT,
            ..Default::default()
        },
        RTPCodecType::Video,
    )?;
    let mut registry = Registry::new();
    registry = webrtc::api::interceptor_registry::configure_nack(registry, &mut media);
    registry = webrtc::api::interceptor_registry::configure_rtcp_reports(registry);
    let mut setting = SettingEngine::default();
    setting.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    setting.set_include_loopback_candidate(true);
    setting.set_interface_filter(Box::new(move |name: &str| {
        name == "lo" || interface.as_deref() == Some(name)
    }));
    // Peer-reflexive candidates from the server's checks may be used at once.
    setting.set_host_acceptance_min_wait(Some(Duration::ZERO));
    setting.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting)
        .build())
}

/// How a viewer reaches a system.
#[derive(Clone)]
enum Endpoint {
    /// POST an SDP offer, get `201` with the answer and a `Location` to DELETE.
    Whep(String),
    /// Janus's HTTP API (`…/janus`) and the streaming mountpoint's id: Janus offers.
    Janus { api: String, mountpoint: u64 },
}

/// How a viewer leaves.
enum Leave {
    Delete(String),
    JanusDestroy(String),
}

struct Viewer {
    pc: Arc<RTCPeerConnection>,
    track: Arc<TrackRemote>,
    leave: Leave,
    /// From the start of signalling to the first RTP packet of the video.
    first_rtp: Duration,
    started: Instant,
}

impl Viewer {
    async fn connect(api: &API, endpoint: &Endpoint) -> anyhow::Result<Viewer> {
        let started = Instant::now();
        let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);
        let (track_tx, mut track_rx) = tokio::sync::mpsc::unbounded_channel();
        // webrtc-rs reports the track when its first packet has arrived.
        pc.on_track(Box::new(move |track, _, _| {
            let _ = track_tx.send((track, Instant::now()));
            Box::pin(async {})
        }));
        let negotiated = match endpoint {
            Endpoint::Whep(url) => whep(&pc, url).await,
            Endpoint::Janus { api, mountpoint } => janus(&pc, api, *mountpoint).await,
        };
        let leave = match negotiated {
            Ok(leave) => leave,
            Err(err) => {
                let _ = pc.close().await;
                return Err(err);
            }
        };
        let track = tokio::time::timeout(WAIT, track_rx.recv()).await;
        let (track, at) = match track {
            Ok(Some(found)) => found,
            _ => {
                leave_now(&leave).await;
                let _ = pc.close().await;
                bail!("no video within {WAIT:?}");
            }
        };
        Ok(Viewer {
            pc,
            track,
            leave,
            first_rtp: at.duration_since(started),
            started,
        })
    }

    async fn hang_up(self) {
        leave_now(&self.leave).await;
        let _ = self.pc.close().await;
    }
}

async fn leave_now(leave: &Leave) {
    // Leaving is best effort: the system is stopped after the run anyway.
    match leave {
        Leave::Delete(url) => {
            let _ = http("DELETE", url, None, b"", WAIT).await;
        }
        Leave::JanusDestroy(session) => {
            let _ = janus_post(session, json!({"janus": "destroy"})).await;
        }
    }
}

/// Offers to receive video and POSTs the offer, candidates included.
async fn whep(pc: &Arc<RTCPeerConnection>, url: &str) -> anyhow::Result<Leave> {
    pc.add_transceiver_from_kind(
        RTPCodecType::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: Vec::new(),
        }),
    )
    .await?;
    let offer = pc.create_offer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await?;
    let _ = gathered.recv().await;
    let offer = pc.local_description().await.context("no local offer")?;
    let response = http(
        "POST",
        url,
        Some("application/sdp"),
        offer.sdp.as_bytes(),
        WAIT,
    )
    .await?;
    if response.status != 201 {
        bail!("POST {url}: {} {}", response.status, response.text());
    }
    let location = response
        .header("location")
        .map(|l| origin_join(url, l))
        .context("no Location in the answer")?;
    let leave = Leave::Delete(location);
    if let Err(err) = pc
        .set_remote_description(RTCSessionDescription::answer(response.text())?)
        .await
    {
        leave_now(&leave).await;
        return Err(err.into());
    }
    Ok(leave)
}

async fn janus_post(url: &str, mut message: Value) -> anyhow::Result<Value> {
    message["transaction"] = json!(format!("{:016x}", rand::random::<u64>()));
    let response = http(
        "POST",
        url,
        Some("application/json"),
        message.to_string().as_bytes(),
        WAIT,
    )
    .await?;
    let reply = response.json()?;
    if reply["janus"] == "error" {
        bail!("Janus: {}", reply["error"]);
    }
    Ok(reply)
}

/// Janus streaming: session, handle, `watch` → Janus's offer → our answer with `start`.
async fn janus(pc: &Arc<RTCPeerConnection>, api: &str, mountpoint: u64) -> anyhow::Result<Leave> {
    let created = janus_post(api, json!({"janus": "create"})).await?;
    let session = format!(
        "{api}/{}",
        created["data"]["id"].as_u64().context("no session id")?
    );
    let leave = Leave::JanusDestroy(session.clone());
    match janus_watch(pc, &session, mountpoint).await {
        Ok(()) => Ok(leave),
        Err(err) => {
            leave_now(&leave).await;
            Err(err)
        }
    }
}

async fn janus_watch(
    pc: &Arc<RTCPeerConnection>,
    session: &str,
    mountpoint: u64,
) -> anyhow::Result<()> {
    let attached = janus_post(
        session,
        json!({"janus": "attach", "plugin": "janus.plugin.streaming"}),
    )
    .await?;
    let handle = format!(
        "{session}/{}",
        attached["data"]["id"].as_u64().context("no handle id")?
    );
    janus_post(
        &handle,
        json!({"janus": "message", "body": {"request": "watch", "id": mountpoint}}),
    )
    .await?;
    let deadline = Instant::now() + WAIT;
    let offer = loop {
        if Instant::now() > deadline {
            bail!("Janus sent no offer");
        }
        let polled = http("GET", &format!("{session}?maxev=1"), None, b"", WAIT)
            .await?
            .json()?;
        let events = match polled {
            Value::Array(events) => events,
            event => vec![event],
        };
        if let Some(sdp) = events
            .iter()
            .find_map(|e| e["jsep"]["sdp"].as_str().map(str::to_owned))
        {
            break sdp;
        }
        if let Some(error) = events
            .iter()
            .find_map(|e| e["plugindata"]["data"].get("error"))
        {
            bail!("Janus streaming: {error}");
        }
    };
    if std::env::var_os("PEERCAM_COMPARE_DEBUG").is_some() {
        eprintln!("Janus offer:\n{offer}");
    }
    pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let answer = pc.create_answer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await?;
    let _ = gathered.recv().await;
    let answer = pc.local_description().await.context("no local answer")?;
    janus_post(
        &handle,
        json!({
            "janus": "message",
            "body": {"request": "start"},
            "jsep": {"type": "answer", "sdp": answer.sdp},
        }),
    )
    .await?;
    // The candidates are in the answer; without this Janus waits for more to trickle.
    janus_post(
        &handle,
        json!({"janus": "trickle", "candidate": {"completed": true}}),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The serving processes' cost, from /proc

/// (parent pid, CPU seconds) of a process, from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(u32, f64)> {
    common::stats::proc_sample(pid).map(|s| (s.parent, s.cpu_seconds))
}

fn rss_kb(pid: u32) -> u64 {
    common::stats::rss_kib(pid)
}

/// CPU seconds of `roots` and all their descendants, by pid.
fn tree_cpu(roots: &[u32]) -> HashMap<u32, f64> {
    let mut all = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok())
                && let Some(found) = stat(pid)
            {
                all.insert(pid, found);
            }
        }
    }
    let mut inside: HashSet<u32> = roots.iter().copied().collect();
    loop {
        let before = inside.len();
        for (pid, (ppid, _)) in &all {
            if inside.contains(ppid) {
                inside.insert(*pid);
            }
        }
        if inside.len() == before {
            break;
        }
    }
    inside
        .into_iter()
        .filter_map(|pid| all.get(&pid).map(|(_, cpu)| (pid, *cpu)))
        .collect()
}

/// Share of one core and resident memory (KiB, summed) of `roots`' process trees.
async fn measure(roots: &[u32], window: Duration) -> (f64, u64) {
    let before = tree_cpu(roots);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let after = tree_cpu(roots);
    let seconds = start.elapsed().as_secs_f64();
    let cpu: f64 = after
        .iter()
        .map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0))
        .sum();
    let rss = after.keys().map(|&pid| rss_kb(pid)).sum();
    (cpu / seconds, rss)
}

// ---------------------------------------------------------------------------------------
// The systems

#[derive(Debug, Clone, Copy, PartialEq)]
enum System {
    Peercam,
    Janus,
    Webrtcbin,
    Aiortc,
    AiortcStock,
}

impl System {
    fn parse(name: &str) -> Option<System> {
        Some(match name.trim() {
            "peercam" => System::Peercam,
            "janus" => System::Janus,
            "webrtcbin" => System::Webrtcbin,
            "aiortc" => System::Aiortc,
            "aiortc-stock" => System::AiortcStock,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            System::Peercam => "peercam",
            System::Janus => "Janus",
            System::Webrtcbin => "webrtcbin per viewer",
            System::Aiortc => "aiortc",
            System::AiortcStock => "aiortc (stock encoder)",
        }
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(command: &mut Command, log: PathBuf) -> anyhow::Result<Process> {
        let out = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Process { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A system up and waiting for viewers, with what keeps it running.
struct Running {
    endpoint: Endpoint,
    /// A network interface besides loopback the viewers must use to reach it.
    interface: Option<String>,
    pids: Vec<u32>,
    _daemon: Option<Daemon>,
    processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// The end of each serving process's output, for a failure's report.
    fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {}:\n{}", p.log.display(), p.tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `url` answers 200, or the process gives up.
async fn wait_ready(url: &str, process: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = http("GET", url, None, b"", Duration::from_secs(2)).await
            && response.status == 200
        {
            return Ok(());
        }
        if !process.alive() {
            bail!("it exited:\n{}", process.tail());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer:\n{}", process.tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts `system` serving `encoding`'s picture. With `stamped`, every frame carries its
/// capture time: peercam draws it itself; for the others a feeder process (this binary,
/// `--feed`) draws it with the same code and hands the frames over (Janus: as RTP from
/// the feeder's encoder; webrtcbin and aiortc: raw, through shared memory).
async fn start(
    system: System,
    encoding: &Encoding,
    max_viewers: usize,
    stamped: bool,
) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    // With stamps, aiortc reads raw pictures from a feeder through shared memory.
    let mut feeder = None;
    let mut source = encoding.source.clone();
    if stamped && matches!(system, System::Aiortc | System::AiortcStock) {
        let socket = dir.path().join("pictures");
        feeder = Some(Process::spawn(
            Command::new(std::env::current_exe()?)
                .arg("--feed")
                .arg(format!(
                    "{} ! video/x-raw,format=I420 ! shmsink socket-path={} shm-size=20000000 \
                 wait-for-connection=false sync=false",
                    encoding.stamped_source,
                    socket.display()
                )),
            dir.path().join("feeder.log"),
        )?);
        let deadline = Instant::now() + WAIT;
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("the feeder made no socket");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        source = format!(
            "shmsrc socket-path={} is-live=true do-timestamp=true ! {}",
            socket.display(),
            encoding.raw_caps()
        );
    }
    // webrtcbin's server draws the stamp itself, with the same layout, on the same source.
    if stamped && system == System::Webrtcbin {
        source = encoding.stamped_source.clone();
    }
    let mut running = match system {
        System::Peercam => {
            let max = format!("call.max_viewers={}", max_viewers + 2);
            let stamp = format!("video.stamp={stamped}");
            let args = [
                "--answer",
                "auto",
                "--set",
                &max,
                "--set",
                "call.idle_stop_secs=0",
                "--set",
                &stamp,
            ];
            let daemon = Daemon::start("bench", &args);
            Running {
                endpoint: Endpoint::Whep(format!("{}whep/bench", daemon.page)),
                pids: vec![daemon.pid()],
                interface: None,
                _daemon: Some(daemon),
                processes: Vec::new(),
                _dir: dir,
            }
        }
        System::Janus => start_janus(dir, encoding, stamped).await?,
        System::Webrtcbin => {
            let port = free_port()?;
            let server = Process::spawn(
                Command::new(
                    std::env::var("PEERCAM_COMPARE_SYSTEM_PYTHON")
                        .unwrap_or_else(|_| "/usr/bin/python3".into()),
                )
                .arg(repo().join("tools/compare.d/webrtcbin_server.py"))
                .args([
                    "--port",
                    &port.to_string(),
                    "--pipeline",
                    &format!("{source} ! {}", encoding.encoder),
                ])
                .args(stamped.then_some("--stamp")),
                dir.path().join("webrtcbin.log"),
            )?;
            whep_server(server, port, dir).await?
        }
        System::Aiortc | System::AiortcStock => {
            let port = free_port()?;
            let python = std::env::var("PEERCAM_COMPARE_PYTHON").unwrap_or_else(|_| {
                repo()
                    .join("target/compare/venv/bin/python")
                    .display()
                    .to_string()
            });
            let encoder = if system == System::Aiortc {
                "matched"
            } else {
                "stock"
            };
            let server = Process::spawn(
                Command::new(python)
                    .arg(repo().join("tools/compare.d/aiortc_server.py"))
                    .args(["--port", &port.to_string(), "--source", &source])
                    .args(["--encoder", encoder])
                    .args(["--bitrate-kbps", &encoding.bitrate_kbps.to_string()])
                    .args([
                        "--keyframe-interval",
                        &encoding.keyframe_interval.to_string(),
                    ]),
                dir.path().join("aiortc.log"),
            )?;
            whep_server(server, port, dir).await?
        }
    };
    if let Some(feeder) = feeder {
        running.pids.push(feeder.pid());
        running.processes.push(feeder);
    }
    Ok(running)
}

/// One of the WHEP-like Python servers (`tools/compare.d`), once it answers on `port`.
async fn whep_server(
    mut server: Process,
    port: u16,
    dir: tempfile::TempDir,
) -> anyhow::Result<Running> {
    wait_ready(&format!("http://127.0.0.1:{port}/health"), &mut server).await?;
    Ok(Running {
        endpoint: Endpoint::Whep(format!("http://127.0.0.1:{port}/whep")),
        pids: vec![server.pid()],
        interface: None,
        _daemon: None,
        processes: vec![server],
        _dir: dir,
    })
}

/// The feeder: runs `description` with peercam's stamp probe until stopped (SIGTERM).
fn feed(description: &str) -> anyhow::Result<()> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init()?;
    let pipeline = gst::parse::launch(description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    peercam::media::stamp::attach(&pipeline);
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().context("a pipeline's bus")?;
    for message in bus.iter_timed(gst::ClockTime::NONE) {
        match message.view() {
            gst::MessageView::Error(err) => bail!("{} ({:?})", err.error(), err.debug()),
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    Ok(())
}

/// Where Debian keeps Janus's plugins and transports (`/usr/lib/<triplet>/janus`).
fn janus_lib() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PEERCAM_COMPARE_JANUS_LIB") {
        return Ok(dir.into());
    }
    std::fs::read_dir("/usr/lib")?
        .flatten()
        .map(|e| e.path().join("janus"))
        .find(|p| p.join("plugins/libjanus_streaming.so").exists())
        .context("Janus's streaming plugin is not installed (apt-get install janus)")
}

/// The `.so` files in `dir` other than `keep`, as Janus's `disable` list.
fn all_but(dir: &Path, keep: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.ends_with(".so") && n != keep)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

/// The first interface with an IPv4 address other than loopback (`ip -o -4 addr`).
fn own_interface() -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .find(|name| *name != "lo")
        .map(str::to_owned)
        .context("no network interface with an IPv4 address besides loopback")
}

async fn start_janus(
    dir: tempfile::TempDir,
    encoding: &Encoding,
    stamped: bool,
) -> anyhow::Result<Running> {
    let lib = janus_lib()?;
    // Janus skips loopback interfaces when it gathers, so it and its viewers use this
    // machine's own address, which Linux delivers through the loopback device as well.
    let interface = own_interface()?;
    let http_port = free_port()?;
    let rtp_port = free_udp_port()?;
    let conf = dir.path();
    std::fs::write(
        conf.join("janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{conf}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 4
	# The viewers do not send keep-alives.
	session_timeout = 0
}}
certificates: {{
}}
media: {{
}}
nat: {{
	nice_debug = false
	ignore_mdns = true
	ice_enforce_list = "{interface}"
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
loggers: {{
	disable = "{loggers}"
}}
events: {{
	broadcast = false
}}
"#,
            conf = conf.display(),
            lib = lib.display(),
            interface = interface,
            plugins = all_but(&lib.join("plugins"), "libjanus_streaming.so"),
            transports = all_but(&lib.join("transports"), "libjanus_http.so"),
            loggers = all_but(&lib.join("loggers"), ""),
        ),
    )?;
    std::fs::write(
        conf.join("janus.transport.http.jcfg"),
        format!(
            r#"general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {http_port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"#
        ),
    )?;
    std::fs::write(
        conf.join("janus.plugin.streaming.jcfg"),
        format!(
            r#"general: {{
}}
bench: {{
	type = "rtp"
	id = 1
	description = "peercam compare: dev-board pattern"
	audio = false
	video = true
	videoport = {rtp_port}
	videoiface = "127.0.0.1"
	videopt = {H264_PT}
	videocodec = "h264"
	videofmtp = "profile-level-id=42e01f;packetization-mode=1"
}}
"#
        ),
    )?;
    let mut janus = Process::spawn(
        Command::new("janus")
            .arg("-C")
            .arg(conf.join("janus.jcfg"))
            .arg("-F")
            .arg(conf)
            .arg("-o"),
        conf.join("janus.log"),
    )?;
    let api = format!("http://127.0.0.1:{http_port}/janus");
    wait_ready(&format!("{api}/info"), &mut janus).await?;
    // The same source and encoder as peercam's, run by this binary (`--feed`), which also
    // draws the stamp when asked.
    let source = if stamped {
        &encoding.stamped_source
    } else {
        &encoding.source
    };
    let feeder = Process::spawn(
        Command::new(std::env::current_exe()?)
            .arg("--feed")
            .arg(format!(
                "{source} ! {} ! rtph264pay pt={H264_PT} config-interval=-1 \
             aggregate-mode=zero-latency ! udpsink host=127.0.0.1 port={rtp_port} sync=false",
                encoding.encoder
            )),
        conf.join("feeder.log"),
    )?;
    Ok(Running {
        endpoint: Endpoint::Janus { api, mountpoint: 1 },
        interface: Some(interface),
        pids: vec![janus.pid(), feeder.pid()],
        _daemon: None,
        processes: vec![janus, feeder],
        _dir: dir,
    })
}

// ---------------------------------------------------------------------------------------
// Measuring one system

#[derive(Debug, Clone, Default)]
struct Step {
    viewers: usize,
    cpu: f64,
    rss_kb: u64,
    min_fps: f64,
    mean_fps: f64,
    /// Viewers that could not connect.
    failed: usize,
}

impl Step {
    fn drops(&self) -> bool {
        self.failed > 0 || self.min_fps < DROP_FPS
    }
}

#[derive(Debug, Clone, Default)]
struct Figures {
    idle_cpu: f64,
    idle_rss_kb: u64,
    steps: Vec<Step>,
    setup_rtp: Vec<Duration>,
    setup_frame: Vec<Duration>,
    setup_failed: usize,
    /// Glass-to-glass: capture → decoded at the viewer, in ms, sorted.
    latency_ms: Vec<u64>,
}

impl Figures {
    fn step(&self, n: usize) -> Option<&Step> {
        self.steps.iter().find(|s| s.viewers == n)
    }

    /// The most viewers that all got the full frame rate.
    fn most_viewers(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| !s.drops())
    }

    /// CPU per viewer added, from one viewer to the most without drops.
    fn marginal_cpu(&self) -> Option<f64> {
        let one = self.step(1)?;
        let most = self.most_viewers()?;
        (most.viewers > 1).then(|| (most.cpu - one.cpu) / (most.viewers - 1) as f64)
    }

    fn marginal_rss_kb(&self) -> Option<f64> {
        let one = self.step(1)?;
        let most = self.most_viewers()?;
        (most.viewers > 1)
            .then(|| (most.rss_kb as f64 - one.rss_kb as f64) / (most.viewers - 1) as f64)
    }
}

struct Settings {
    counts: Vec<usize>,
    calls: usize,
    window: Duration,
    latency_frames: usize,
}

async fn run(system: System, encoding: &Encoding, settings: &Settings) -> anyhow::Result<Figures> {
    let max = settings.counts.iter().copied().max().unwrap_or(1);
    let mut running = start(system, encoding, max, false).await?;
    let api = viewer_api(running.interface.clone())?;
    let mut figures = Figures::default();
    // Janus gets its feeder's first pictures and generates its certificate; the Python
    // servers finish importing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (figures.idle_cpu, figures.idle_rss_kb) = measure(&running.pids, settings.window).await;
    println!(
        "  idle: {:.1} % of one core, {:.1} MiB",
        figures.idle_cpu * 100.0,
        figures.idle_rss_kb as f64 / 1024.0
    );

    // Viewers join and stay, as they would at a camera: each step adds viewers up to its
    // count. Starting every step afresh made the 32-viewer figure carry the freed but
    // retained memory of the 31 viewers before it (peercam: about 40 MiB more).
    let mut viewers = Vec::new();
    let mut counters = Vec::new();
    let mut failed = 0;
    for &n in &settings.counts {
        for _ in (viewers.len() + failed)..n {
            match Viewer::connect(&api, &running.endpoint).await {
                Ok(viewer) => {
                    let frames = Arc::new(AtomicU64::new(0));
                    let counter = frames.clone();
                    let track = viewer.track.clone();
                    // Pictures by their RTP marker bit: no decoding on the viewer's side.
                    let reader = tokio::spawn(async move {
                        while let Ok((packet, _)) = track.read_rtp().await {
                            if packet.header.marker {
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                    counters.push(frames);
                    viewers.push((viewer, reader));
                }
                Err(err) => {
                    failed += 1;
                    eprintln!("  {}: a viewer failed: {err:#}", system.name());
                    if failed == 1 {
                        eprintln!("{}", running.logs());
                    }
                }
            }
        }
        // Per-viewer encoders start with the viewer; let every stream settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let started = Instant::now();
        let (cpu, rss_kb) = measure(&running.pids, settings.window).await;
        let seconds = started.elapsed().as_secs_f64();
        let fps: Vec<f64> = counters
            .iter()
            .zip(before)
            .map(|(c, b)| (c.load(Ordering::Relaxed) - b) as f64 / seconds)
            .collect();
        let step = Step {
            viewers: n,
            cpu,
            rss_kb,
            min_fps: if fps.is_empty() {
                0.0
            } else {
                fps.iter().copied().fold(f64::INFINITY, f64::min)
            },
            mean_fps: fps.iter().sum::<f64>() / fps.len().max(1) as f64,
            failed,
        };
        println!(
            "  {n} viewers: {:.1} % of one core, {:.1} MiB, fps min {:.1} / mean {:.1}{}",
            step.cpu * 100.0,
            step.rss_kb as f64 / 1024.0,
            step.min_fps,
            step.mean_fps,
            if failed > 0 {
                format!(", {failed} failed to connect")
            } else {
                String::new()
            }
        );
        let drops = step.drops();
        figures.steps.push(step);
        if drops {
            println!("  frames drop: the series stops here");
            break;
        }
        check_alive(&mut running)?;
    }
    for (viewer, reader) in viewers {
        reader.abort();
        viewer.hang_up().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    check_alive(&mut running)?;

    // Call set-up with the camera already running (one viewer stays), as for a second
    // viewer of a doorbell: signalling, ICE, DTLS and the first keyframe.
    let keeper = Viewer::connect(&api, &running.endpoint).await?;
    let keeper_track = keeper.track.clone();
    let keeper_reader = tokio::spawn(async move { while keeper_track.read_rtp().await.is_ok() {} });
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..settings.calls {
        match Viewer::connect(&api, &running.endpoint).await {
            Ok(viewer) => {
                figures.setup_rtp.push(viewer.first_rtp);
                let decoded = decode(viewer.track.clone(), 1, WAIT).await;
                match decoded.first_frame_at {
                    Some(at) => figures.setup_frame.push(at.duration_since(viewer.started)),
                    None => figures.setup_failed += 1,
                }
                viewer.hang_up().await;
            }
            Err(err) => {
                figures.setup_failed += 1;
                eprintln!("  {}: a call failed: {err:#}", system.name());
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    keeper_reader.abort();
    keeper.hang_up().await;
    figures.setup_rtp.sort();
    figures.setup_frame.sort();
    println!(
        "  set-up over {} calls: first RTP p50 {} p95 {}, first picture p50 {} p95 {}",
        figures.setup_frame.len(),
        ms(percentile(&figures.setup_rtp, 0.5)),
        ms(percentile(&figures.setup_rtp, 0.95)),
        ms(percentile(&figures.setup_frame, 0.5)),
        ms(percentile(&figures.setup_frame, 0.95)),
    );
    drop(running);

    // A system that serves but cannot be measured for latency keeps its other figures.
    match latency(system, encoding, settings.latency_frames).await {
        Ok(samples) => figures.latency_ms = samples,
        Err(err) => println!("  glass-to-glass not measured: {err:#}"),
    }
    let at = |p: f64| {
        figures
            .latency_ms
            .get(((figures.latency_ms.len().saturating_sub(1)) as f64 * p).round() as usize)
            .map_or("—".into(), |v| format!("{v} ms"))
    };
    println!(
        "  glass-to-glass over {} frames: p50 {} p95 {} max {}",
        figures.latency_ms.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    );
    Ok(figures)
}

/// Capture-to-decoded latency of `frames` stamped pictures for one viewer, after its
/// first second (the decoder's start), sorted.
async fn latency(system: System, encoding: &Encoding, frames: usize) -> anyhow::Result<Vec<u64>> {
    let mut running = start(system, encoding, 1, true).await?;
    let api = viewer_api(running.interface.clone())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let viewer = Viewer::connect(&api, &running.endpoint).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pipeline = decode_latencies(viewer.track.clone(), tx);
    let deadline = tokio::time::Instant::now()
        + WAIT
        + Duration::from_secs_f64(frames as f64 / f64::from(encoding.fps.max(1)) * 2.0);
    let mut samples = Vec::with_capacity(frames);
    let (mut skipped, mut decoded) = (0, 0);
    while samples.len() < frames {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) if skipped < encoding.fps => skipped += 1,
            Ok(Some(age)) => {
                decoded += 1;
                samples.extend(age);
            }
            _ => break,
        }
    }
    {
        use gstreamer::prelude::*;
        let _ = pipeline.set_state(gstreamer::State::Null);
    }
    viewer.hang_up().await;
    check_alive(&mut running)?;
    if samples.is_empty() {
        bail!(
            "{} pictures decoded after the first {skipped}, none stamped\n{}",
            decoded,
            running.logs()
        );
    }
    samples.sort_unstable();
    Ok(samples)
}

fn check_alive(running: &mut Running) -> anyhow::Result<()> {
    for process in &mut running.processes {
        if !process.alive() {
            bail!("a serving process exited:\n{}", process.tail());
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    common::stats::percentile(sorted, p)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

// ---------------------------------------------------------------------------------------
// The table

/// One row: a figure's text and number (for ratios) for each system.
struct Row {
    label: String,
    cells: Vec<Option<(String, f64)>>,
}

fn rows(results: &[(System, Result<Figures, String>)], settings: &Settings) -> Vec<Row> {
    let figures: Vec<Option<&Figures>> = results.iter().map(|(_, r)| r.as_ref().ok()).collect();
    let row = |label: String, get: &dyn Fn(&Figures) -> Option<(String, f64)>| Row {
        label,
        cells: figures.iter().map(|f| f.and_then(get)).collect(),
    };
    let pct = |v: f64| (format!("{:.1}", v * 100.0), v);
    let mib = |kb: f64| (format!("{:.1}", kb / 1024.0), kb);
    let mut out = vec![
        row("idle CPU (% of one core)".into(), &|f| {
            Some(pct(f.idle_cpu))
        }),
        row("idle RSS (MiB)".into(), &|f| {
            Some(mib(f.idle_rss_kb as f64))
        }),
    ];
    for &n in &settings.counts {
        out.push(row(format!("CPU, {n} viewers (%)"), &|f| {
            f.step(n).map(|s| pct(s.cpu))
        }));
    }
    for &n in &settings.counts {
        out.push(row(format!("RSS, {n} viewers (MiB)"), &|f| {
            f.step(n).map(|s| mib(s.rss_kb as f64))
        }));
    }
    out.push(row("most viewers at full frame rate".into(), &|f| {
        Some(f.most_viewers().map_or(("0".into(), 0.0), |s| {
            (s.viewers.to_string(), s.viewers as f64)
        }))
    }));
    out.push(row(
        "fps per viewer at the most viewers tried (min / mean)".into(),
        &|f| {
            f.steps.last().map(|s| {
                (
                    format!("{:.1} / {:.1} ({})", s.min_fps, s.mean_fps, s.viewers),
                    s.min_fps,
                )
            })
        },
    ));
    out.push(row(
        "marginal CPU per viewer (% of one core)".into(),
        &|f| f.marginal_cpu().map(|v| (format!("{:.2}", v * 100.0), v)),
    ));
    out.push(row("marginal RSS per viewer (MiB)".into(), &|f| {
        f.marginal_rss_kb()
            .map(|v| (format!("{:.2}", v / 1024.0), v))
    }));
    for (what, p) in [("p50", 0.5), ("p95", 0.95)] {
        out.push(row(format!("set-up → first RTP, {what} (ms)"), &|f| {
            percentile(&f.setup_rtp, p).map(|d| {
                let v = d.as_secs_f64() * 1000.0;
                (format!("{v:.0}"), v)
            })
        }));
    }
    for (what, p) in [("p50", 0.5), ("p95", 0.95)] {
        out.push(row(
            format!("set-up → first picture, {what} (ms)"),
            &|f| {
                percentile(&f.setup_frame, p).map(|d| {
                    let v = d.as_secs_f64() * 1000.0;
                    (format!("{v:.0}"), v)
                })
            },
        ));
    }
    for (what, p) in [("p50", 0.5), ("p95", 0.95), ("max", 1.0)] {
        out.push(row(format!("glass-to-glass, {what} (ms)"), &|f| {
            f.latency_ms
                .get(((f.latency_ms.len().saturating_sub(1)) as f64 * p).round() as usize)
                .map(|&v| (v.to_string(), v as f64))
        }));
    }
    out
}

fn print_table(results: &[(System, Result<Figures, String>)], settings: &Settings) {
    let peercam = results.iter().position(|(s, _)| *s == System::Peercam);
    let mut header = String::from("| figure |");
    let mut rule = String::from("|---|");
    for (i, (system, _)) in results.iter().enumerate() {
        header.push_str(&format!(" {} |", system.name()));
        rule.push_str("---|");
        if peercam.is_some() && Some(i) != peercam {
            header.push_str(&format!(" peercam ÷ {} |", system.name()));
            rule.push_str("---|");
        }
    }
    println!("{header}");
    println!("{rule}");
    for row in rows(results, settings) {
        let mut line = format!("| {} |", row.label);
        let ours = peercam.and_then(|p| row.cells[p].as_ref().map(|(_, v)| *v));
        for (i, cell) in row.cells.iter().enumerate() {
            line.push_str(&format!(
                " {} |",
                cell.as_ref().map_or("—", |(text, _)| text.as_str())
            ));
            if peercam.is_some() && Some(i) != peercam {
                let ratio = match (ours, cell) {
                    (Some(a), Some((_, b))) if *b > 0.0 => format!("{:.2}", a / b),
                    _ => "—".into(),
                };
                line.push_str(&format!(" {ratio} |"));
            }
        }
        println!("{line}");
    }
    for (system, result) in results {
        if let Err(why) = result {
            println!();
            println!("{} did not run: {why}", system.name());
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The feeder of stamped pictures for the other systems (see `start`).
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--feed") {
        let Some(description) = args.get(at + 1) else {
            eprintln!("--feed needs a GStreamer description");
            std::process::exit(2);
        };
        if let Err(err) = feed(description) {
            eprintln!("feeder: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without
    // it, where only building it is wanted.
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare benchmark: run it with `tools/compare`");
        return;
    }
    let systems: Vec<System> = std::env::var("PEERCAM_COMPARE_SYSTEMS")
        .unwrap_or_else(|_| "peercam,janus,webrtcbin,aiortc".into())
        .split(',')
        .filter_map(|name| {
            let found = System::parse(name);
            if found.is_none() {
                eprintln!(
                    "unknown system {name:?} (peercam, janus, webrtcbin, aiortc, aiortc-stock)"
                );
            }
            found
        })
        .collect();
    let settings = Settings {
        counts: std::env::var("PEERCAM_COMPARE_VIEWERS")
            .unwrap_or_else(|_| "1,2,4,8,16,32".into())
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        calls: env_or("PEERCAM_COMPARE_CALLS", 20),
        window: Duration::from_secs(env_or("PEERCAM_COMPARE_MEASURE_SECS", 5)),
        latency_frames: env_or("PEERCAM_COMPARE_LATENCY_FRAMES", 300),
    };
    let encoding = dev_encoding().expect("peercam's dev-board pipeline");
    println!("peercam compare: every system encodes {}", encoding.summary);
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map_or("", |m| m.trim_start_matches([' ', '\t', ':']))
    );
    let mut results = Vec::new();
    for system in systems {
        println!();
        println!("{}:", system.name());
        let result = run(system, &encoding, &settings)
            .await
            .map_err(|err| format!("{err:#}"));
        if let Err(why) = &result {
            println!("  failed: {why}");
        }
        results.push((system, result));
    }
    println!();
    print_table(&results, &settings);
}
