//! Wires the real parts together: the embedded phonebook (unless a remote one is
//! configured), the camera feed, the buttons and the device, until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;
use crate::control::{Control, Request};
use crate::device;
use crate::gpio::{self, simulated};
use crate::media::fanout::{BitrateSettings, Feed};
use crate::media::running::GstSource;
use crate::media::{self, audio, encode, pipeline};
use crate::rtc::{Feeds, MediaCaps};
use crate::signalling::server::PhonebookServer;
use crate::systemd::Notifier;

/// Options of `peercam run` that are not settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Read single keys from the terminal when there is one.
    pub terminal: bool,
}

/// Runs the camera daemon until `shutdown`.
pub async fn run(
    settings: Settings,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    media::init()?;
    let plan = pipeline::plan(&settings.video)?;
    plan.check_elements(&settings.video)?;
    for why in &plan.skipped {
        warn!("encoder skipped: {why}");
    }
    info!(
        board = %settings.board,
        encoder = plan.encoder_name(),
        input = %plan.input_note,
        "camera"
    );
    tracing::debug!(pipeline = %plan.description, "camera pipeline");

    let mut tasks = Vec::new();
    // The embedded phonebook outlives the device, so the hang-ups of a shutdown reach
    // the callers before it closes their sockets.
    let phonebook_stop = CancellationToken::new();
    let (phonebook_url, phonebook_tls) = match &settings.device.phonebook {
        Some(url) => {
            println!(
                "peercam: registering as {:?} on the phonebook at {url}",
                settings.name()
            );
            let pinned = match &settings.device.phonebook_cert {
                Some(path) => Some(crate::tls::read_pinned(path)?),
                None => None,
            };
            (url.clone(), Some(crate::tls::client_config(pinned)?))
        }
        None => {
            let (addr, task, tls) = start_phonebook(
                settings.device.listen,
                &settings,
                embedded_access(&settings),
                phonebook_stop.clone(),
            )
            .await?;
            tasks.push(task);
            let page = page_url(addr, tls.is_some());
            println!(
                "peercam: open {page} in a browser to call {:?}",
                settings.name()
            );
            match tls {
                // The device reaches its own phonebook by trusting exactly its certificate.
                Some(tls) => (
                    format!("wss://{}/ws", local_address(addr)),
                    Some(crate::tls::client_config(Some(tls.certificate))?),
                ),
                None => (format!("ws://{}/ws", local_address(addr)), None),
            }
        }
    };

    let (command_tx, command_rx) = mpsc::channel(16);
    let control = settings
        .device
        .control
        .clone()
        .unwrap_or_else(simulated::default_control_path);
    tasks.push(
        simulated::serve_control_socket(&control, command_tx.clone(), shutdown.clone()).await?,
    );
    let _terminal = options
        .terminal
        .then(|| simulated::terminal_keys(command_tx.clone()))
        .flatten();
    let interactive = _terminal.is_some();

    let (edge_tx, edge_rx) = mpsc::unbounded_channel();
    let indicators = gpio::open(&settings.gpio, edge_tx)?;
    tasks.push(tokio::spawn(decode_presses(
        edge_rx,
        Duration::from_millis(settings.gpio.debounce_ms),
        Duration::from_millis(settings.gpio.long_press_ms),
        command_tx.clone(),
    )));
    drop(command_tx);

    let feeds = Feeds {
        video: Feed::from_source(
            "camera",
            GstSource::from_plan(&plan),
            settings.idle_stop(),
            Some(BitrateSettings {
                configured_kbps: settings.video.bitrate_kbps,
                min_kbps: settings.video.min_bitrate_kbps,
                max_kbps: settings.video.max_bitrate_kbps,
            }),
        ),
        audio: audio::describe_microphone(&settings.audio)
            .map(|d| Feed::new("microphone", d, settings.idle_stop(), None)),
    };
    let caps = MediaCaps {
        vp8: plan.vp8,
        h264_profile_level_id: encode::profile_level_id(
            settings.video.width,
            settings.video.height,
            settings.video.fps,
        ),
    };
    let result = device::run(
        device::DeviceParts {
            settings,
            phonebook_url,
            phonebook_tls,
            feeds,
            caps,
            indicators,
            interactive,
            notifier: Notifier::from_env(),
        },
        command_rx,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    phonebook_stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    result
}

/// Turns the buttons' edges into presses for the device.
async fn decode_presses(
    mut edges: mpsc::UnboundedReceiver<gpio::Edge>,
    debounce: Duration,
    long_press: Duration,
    commands: mpsc::Sender<Request>,
) {
    let mut decoders: HashMap<&'static str, gpio::PressDecoder> = HashMap::new();
    while let Some(edge) = edges.recv().await {
        let decoder = decoders
            .entry(edge.pin)
            .or_insert_with(|| gpio::PressDecoder::new(debounce, long_press));
        if let Some(press) = decoder
            .edge(edge.pressed, edge.at)
            .and_then(|kind| gpio::press_for(edge.pin, kind))
        {
            info!(button = edge.pin, press = %Control::Press(press.clone()), "button pressed");
            let request = Request::unanswered(Control::Press(press));
            if commands.send(request).await.is_err() {
                return;
            }
        }
    }
}

/// Runs a standalone phonebook until `shutdown`.
pub async fn run_phonebook(
    listen: SocketAddr,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut notifier = Notifier::from_env();
    let stopping = shutdown.clone();
    let (addr, task, tls) =
        start_phonebook(listen, settings, settings.access.clone(), shutdown).await?;
    println!(
        "peercam phonebook: open {} in a browser",
        page_url(addr, tls.is_some())
    );
    notifier.ready(&format!("phonebook listening on {addr}"));
    stopping.cancelled().await;
    notifier.stopping("closing connections");
    task.await.context("the phonebook server stopped")?;
    Ok(())
}

/// The access rules of the phonebook a daemon embeds: its configured ones, and its own
/// bell may ring the names it rings.
fn embedded_access(settings: &Settings) -> crate::signalling::access::AccessSettings {
    let mut access = settings.access.clone();
    let name = settings.name();
    if !settings.bell.ring.is_empty() {
        if access.callers == crate::signalling::access::CallerMode::Users {
            for callee in &settings.bell.ring {
                if !access.users.keys().any(|u| u.eq_ignore_ascii_case(callee)) {
                    warn!(
                        name = %callee,
                        "bell.ring names someone who is not in [access.users]: they cannot go online on this phonebook to be rung"
                    );
                }
            }
        }
        access
            .rings
            .entry(name)
            .or_default()
            .extend(settings.bell.ring.iter().cloned());
    }
    access
}

async fn start_phonebook(
    listen: SocketAddr,
    settings: &Settings,
    access: crate::signalling::access::AccessSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    tokio::task::JoinHandle<()>,
    Option<crate::tls::ServerTls>,
)> {
    let listener = match crate::systemd::inherited_listener()? {
        Some(socket) => {
            let listener = TcpListener::from_std(socket)?;
            info!(
                addr = %listener.local_addr()?,
                "listening on the socket passed by socket activation (--listen is not used)"
            );
            listener
        }
        None => TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen} (in use? try --listen 127.0.0.1:8081)")
        })?,
    };
    let addr = listener.local_addr()?;
    let tls = settings.tls.server(addr)?;
    if let Some(tls) = &tls {
        println!(
            "peercam: HTTPS with {} certificate {} (SHA-256 {})",
            if tls.self_signed {
                "the self-signed"
            } else {
                "the configured"
            },
            tls.cert_path.display(),
            tls.fingerprint
        );
        if tls.self_signed {
            println!(
                "peercam: browsers ask once whether to trust it; compare the fingerprint they show"
            );
        }
    }
    let configured = settings.ice.servers.clone();
    let server = PhonebookServer::new(Vec::new())
        .with_ice_source(Box::new(move || {
            crate::signalling::protocol::ice_for_client(&configured, "peercam")
        }))
        .with_access(access)
        .with_limits(settings.limits);
    let until = async move { shutdown.cancelled().await };
    let task = match &tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls.acceptor.clone())?;
            tokio::spawn(async move {
                if let Err(err) = server.serve_on(listener, until).await {
                    tracing::error!("phonebook server failed: {err:#}");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(err) = server.serve(listener, until).await {
                tracing::error!("phonebook server failed: {err:#}");
            }
        }),
    };
    Ok((addr, task, tls))
}

/// The address to connect to for a server bound to `addr` (a wildcard becomes loopback).
fn local_address(addr: SocketAddr) -> SocketAddr {
    let mut local = addr;
    if addr.ip().is_unspecified() {
        local.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    local
}

fn page_url(addr: SocketAddr, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{}/", local_address(addr))
}

/// Where `peercam press` finds the daemon when `--control` is not given.
pub fn control_path(settings_control: Option<PathBuf>) -> PathBuf {
    settings_control.unwrap_or_else(simulated::default_control_path)
}
