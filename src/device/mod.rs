//! The camera device: registered in the phonebook (and on a PeerJS server, if one is
//! configured), it rings for incoming calls, answers them with the camera's video once
//! someone presses accept (or the policy does), and keeps them going until either side
//! hangs up.
//!
//! It also rings out: a press of the visitor's bell calls the household's phones through
//! the phonebook, with the camera's picture showing while they ring.
//!
//! Three parts:
//! * [`core`]: every call on the device and its policy, without IO ([`Doorbell`]): inputs
//!   with the current time in, actions and the next deadline out;
//! * [`sides`]: the other end's side of a call behind one interface ([`CallerSide`]), for
//!   the phonebook and for PeerJS;
//! * the shell ([`run`]): one task that owns the peers, the sides, the indicators and the
//!   service manager, moves messages between them and the core, and sleeps until the
//!   core's next deadline. Peer connections are made on tasks of their own and come back
//!   as inputs; no call state is shared between threads.

#[cfg(test)]
mod bell_tests;
pub mod core;
pub mod messages;
pub mod peers;
mod shell;
#[cfg(test)]
mod shell_tests;
pub mod sides;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use self::core::{Action, BellConfig, Config, Doorbell, Input, SHUTTING_DOWN};
pub use self::sides::CallerSide;
use crate::call::AnswerRules;
use crate::config::{AnswerPolicy, Settings};
use crate::control::Request;
use crate::gpio::Indicators;
use crate::rtc::{Feeds, MediaCaps, RtcEngine};
use crate::signalling::client::{self, ClientEvent, Registration};
use crate::signalling::peerjs::{self, PeerJsEvent, PeerJsTarget};
use crate::systemd::Notifier;
use shell::{PeerNews, Shell};
use sides::{PeerJsSide, PhonebookSide};

/// The metadata the device registers with (the bell's state is added as it changes).
pub fn registration_meta(settings: &Settings) -> Value {
    let mut meta = json!({
        "kind": "camera",
        "board": settings.board,
        "description": settings.description,
        "width": settings.video.width,
        "height": settings.video.height,
        "fps": settings.video.fps,
        "audio": settings.audio.has_microphone(),
        "speaker": settings.audio.has_speaker(),
        "door": has_door(settings),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if !settings.bell.ring.is_empty() {
        meta["bell"] = json!({"state": "idle"});
    }
    meta
}

/// Whether the board has a door output.
fn has_door(settings: &Settings) -> bool {
    settings.gpio.pin("door").is_some()
}

/// The real parts a device runs with.
pub struct DeviceParts {
    /// The merged settings.
    pub settings: Settings,
    /// The phonebook's WebSocket URL.
    pub phonebook_url: String,
    /// How to check a `wss://` phonebook's certificate.
    pub phonebook_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The camera (and microphone) feeds.
    pub feeds: Feeds,
    /// What the feeds' encoders can do, for the answers.
    pub caps: MediaCaps,
    /// The ring LED, on-air LED and buzzer.
    pub indicators: Box<dyn Indicators>,
    /// Whether a person watches the terminal (messages are printed there).
    pub interactive: bool,
    /// The service manager, told about readiness, status and health.
    pub notifier: Notifier,
}

/// Why the loop woke up.
enum Wake {
    Phonebook(ClientEvent),
    PeerJs(PeerJsEvent),
    Peer(PeerNews),
    Request(Request),
    Deadline,
}

/// How the core is set up from the settings.
pub fn core_config(settings: &Settings) -> Config {
    Config {
        name: settings.name(),
        rules: AnswerRules {
            auto: settings.call.answer == AnswerPolicy::Auto,
            allow: settings.call.allow.clone(),
            max_viewers: settings.call.max_viewers,
            dnd_reason: settings.call.dnd_reason.clone(),
        },
        ring_timeout: settings.call.ring_timeout(),
        decline_reason: settings.call.decline_reason.clone(),
        peerjs: settings.peerjs.server.is_some(),
        bell: BellConfig {
            ring: settings.bell.ring.clone(),
            ring_timeout: Duration::from_secs(settings.bell.ring_timeout_secs),
            door_open: Duration::from_secs(settings.bell.door_open_secs),
            door: has_door(settings),
            meta: json!({
                "audio": settings.audio.has_microphone(),
                "speaker": settings.audio.has_speaker(),
            }),
            // Call ids are the caller's to choose and unique on the phonebook: a random
            // part keeps a restarted daemon's from meeting its predecessor's.
            call_prefix: format!("b-{:08x}", rand::random::<u32>()),
        },
    }
}

/// Runs the device until `shutdown`: registers on the phonebook, answers calls with the
/// feeds, takes presses from `requests`, drives the indicators, and hangs every call up
/// with a reason on the way out (the indicators go dark).
pub async fn run(
    parts: DeviceParts,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let DeviceParts {
        settings,
        phonebook_url,
        phonebook_tls,
        feeds,
        caps,
        indicators,
        interactive,
        notifier,
    } = parts;
    if settings.call.answer == AnswerPolicy::Auto {
        warn!(
            "answer = auto accepts every call: anyone who reaches the phonebook can watch this camera"
        );
    }
    let engine = std::sync::Arc::new(RtcEngine::new(&settings.ice, caps)?);
    let config = core_config(&settings);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let (peer_tx, mut peer_rx) = mpsc::unbounded_channel();
    let (peerjs_event_tx, mut peerjs_rx) = mpsc::unbounded_channel();
    let mut peerjs_client = None;
    let mut peerjs_side = None;
    if let Some(server) = &settings.peerjs.server {
        let target = PeerJsTarget::new(
            server,
            &settings.peerjs.key,
            &settings.peerjs.peer_id(&config.name),
        )?;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        peerjs_side = Some(PeerJsSide::new(command_tx));
        peerjs_client = Some(tokio::spawn(peerjs::run(
            target,
            peerjs_event_tx,
            command_rx,
        )));
    } else {
        drop(peerjs_event_tx);
    }
    let client = tokio::spawn(client::run(
        phonebook_url,
        Registration {
            name: config.name.clone(),
            meta: registration_meta(&settings),
            token: settings.device.token.clone(),
            tls: phonebook_tls,
            refuse_open: settings.call.answer == AnswerPolicy::Auto,
            listen: !settings.bell.ring.is_empty(),
        },
        event_tx,
        out_rx,
    ));
    let now = Instant::now();
    let mut shell = Shell {
        core: Doorbell::new(config, now),
        factory: std::sync::Arc::new(peers::RtcPeers {
            engine,
            feeds: feeds.clone(),
            audio: settings.audio.clone(),
        }),
        feeds,
        phonebook: PhonebookSide::new(out_tx),
        peerjs: peerjs_side,
        peers: HashMap::new(),
        peer_news: peer_tx,
        indicators,
        watchdog_due: shell::first_watchdog_wake(&notifier, now),
        notifier,
        interactive,
        replies: HashMap::new(),
        next_request: 0,
        meta: registration_meta(&settings),
    };
    loop {
        let wake = shell.next_wake();
        let sleep = async move {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            Some(event) = event_rx.recv() => Wake::Phonebook(event),
            Some(event) = peerjs_rx.recv() => Wake::PeerJs(event),
            Some(news) = peer_rx.recv() => Wake::Peer(news),
            Some(request) = requests.recv() => Wake::Request(request),
            _ = sleep => Wake::Deadline,
            _ = shutdown.cancelled() => break,
        };
        // One reading of the clock for everything this wake-up brings.
        let now = Instant::now();
        match woke {
            Wake::Phonebook(event) => {
                if let Some(input) = PhonebookSide::input(event) {
                    shell.handle(input, now).await;
                }
            }
            Wake::PeerJs(event) => {
                let inputs = shell
                    .peerjs
                    .as_mut()
                    .map(|s| s.inputs(event))
                    .unwrap_or_default();
                for input in inputs {
                    shell.handle(input, now).await;
                }
            }
            Wake::Peer(news) => shell.peer_news(news, now).await,
            Wake::Request(request) => shell.request(request, now).await,
            Wake::Deadline => {}
        }
        shell.woke(now).await;
    }

    shell.shut_down().await;
    // Dropping the last senders lets the clients flush the hang-ups and close.
    drop(shell);
    if tokio::time::timeout(Duration::from_secs(3), client)
        .await
        .is_err()
    {
        warn!("the phonebook did not take the hang-ups within 3 s");
    }
    if let Some(task) = peerjs_client
        && tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
    {
        warn!("the PeerJS connection did not close within 3 s");
    }
    Ok(())
}
