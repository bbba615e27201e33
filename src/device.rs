//! The camera device: registered in the phonebook, it turns incoming calls into call
//! state machines, answers them with the camera's video once someone presses accept (or
//! the policy does), and keeps them going until either side hangs up.
//!
//! One task owns all calls; the phonebook client, the peer connections, the buttons and a
//! timer feed it events, so no call state is shared between threads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::call::{Action, AnswerRules, Call, CallState, Input};
use crate::config::{AnswerPolicy, Settings};
use crate::gpio::{Command, CommandKind, Indicators, Levels, Press, indicator_levels};
use crate::rtc::{CallPeer, Feeds, MediaCaps, PeerEvent, RtcEngine};
use crate::signalling::client::{self, ClientEvent, Registration};
use crate::signalling::peerjs::{self, PeerJsCommand, PeerJsEvent, PeerJsTarget};
use crate::signalling::protocol::{ClientMessage, IceCandidate, Presence, ServerMessage};
use crate::systemd::Notifier;

/// Candidates kept for a call that has not been accepted yet.
const MAX_EARLY_CANDIDATES: usize = 64;

/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(250);

/// The reason callers get when the daemon stops.
pub const SHUTTING_DOWN: &str = "camera shutting down";

/// Which signalling a call came through, and so where its answers go.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    /// Our own phonebook (pages, scripts, WHEP players through the phonebook).
    Phonebook,
    /// A stock PeerJS client through a PeerJS server.
    PeerJs {
        /// The caller's peer id.
        peer: String,
        /// The media connection's id.
        connection_id: String,
    },
}

struct LiveCall {
    machine: Call,
    route: Route,
    /// When the offer arrived, for the set-up timings in the debug log.
    offered: Instant,
    seq: u64,
    caller: String,
    offer: String,
    peer: Option<CallPeer>,
    early_candidates: Vec<IceCandidate>,
    data_open: bool,
}

/// The device's call handling.
pub struct Device {
    settings: Settings,
    name: String,
    feeds: Feeds,
    engine: RtcEngine,
    out: mpsc::UnboundedSender<ClientMessage>,
    peerjs: Option<mpsc::UnboundedSender<PeerJsCommand>>,
    peerjs_open: bool,
    peer_events: mpsc::UnboundedSender<(String, PeerEvent)>,
    calls: BTreeMap<String, LiveCall>,
    next_seq: u64,
    registered: bool,
    interactive: bool,
    rules: AnswerRules,
    dnd: bool,
    indicators: Box<dyn Indicators>,
    levels: Levels,
    ringing_since: Option<Instant>,
    viewers_announced: usize,
    notifier: Notifier,
    ever_registered: bool,
}

/// The metadata the device registers with.
pub fn registration_meta(settings: &Settings) -> Value {
    json!({
        "kind": "camera",
        "board": settings.board,
        "description": settings.description,
        "width": settings.video.width,
        "height": settings.video.height,
        "fps": settings.video.fps,
        "audio": settings.audio.has_microphone(),
        "speaker": settings.audio.has_speaker(),
        "version": env!("CARGO_PKG_VERSION"),
    })
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

/// Runs the device until `shutdown`: registers on the phonebook, answers calls with the
/// feeds, takes presses from `commands`, drives the indicators, and hangs every call up
/// with a reason on the way out (the indicators go dark).
pub async fn run(
    parts: DeviceParts,
    mut commands: mpsc::Receiver<Command>,
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
    let engine = RtcEngine::new(&settings.ice, caps)?;
    let name = settings.name();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let (peer_tx, mut peer_rx) = mpsc::unbounded_channel();
    let (peerjs_event_tx, mut peerjs_rx) = mpsc::unbounded_channel();
    let mut peerjs_client = None;
    let mut peerjs_out = None;
    if let Some(server) = &settings.peerjs.server {
        let target = PeerJsTarget::new(
            server,
            &settings.peerjs.key,
            &settings.peerjs.peer_id(&name),
        )?;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        peerjs_out = Some(command_tx);
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
            name: name.clone(),
            meta: registration_meta(&settings),
            token: settings.device.token.clone(),
            tls: phonebook_tls,
            refuse_open: settings.call.answer == AnswerPolicy::Auto,
        },
        event_tx,
        out_rx,
    ));
    let rules = AnswerRules {
        auto: settings.call.answer == AnswerPolicy::Auto,
        allow: settings.call.allow.clone(),
        max_viewers: settings.call.max_viewers,
        dnd_reason: settings.call.dnd_reason.clone(),
    };
    let mut device = Device {
        settings,
        name,
        feeds,
        engine,
        out: out_tx,
        peerjs: peerjs_out,
        peerjs_open: false,
        peer_events: peer_tx,
        calls: BTreeMap::new(),
        next_seq: 0,
        registered: false,
        interactive,
        rules,
        dnd: false,
        indicators,
        levels: Levels::default(),
        ringing_since: None,
        viewers_announced: 0,
        notifier,
        ever_registered: false,
    };
    device.show_indicators();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            Some(event) = event_rx.recv() => device.on_client_event(event).await,
            Some(event) = peerjs_rx.recv() => device.on_peerjs_event(event).await,
            Some((call_id, event)) = peer_rx.recv() => device.on_peer_event(&call_id, event).await,
            Some(command) = commands.recv() => device.on_command(command).await,
            _ = tick.tick() => device.on_tick().await,
            _ = shutdown.cancelled() => break,
        }
    }

    info!("shutting down: ending every call");
    device
        .notifier
        .stopping(&format!("ending {} call(s)", device.calls.len()));
    device.broadcast(&json!({"event": "shutting_down"})).await;
    for call in device.calls.values() {
        if let Some(peer) = &call.peer {
            peer.flush(Duration::from_millis(500)).await;
        }
    }
    let ids: Vec<String> = device.calls.keys().cloned().collect();
    for id in ids {
        device
            .apply(&id, Input::LocalHangup(SHUTTING_DOWN.into()))
            .await;
    }
    device.indicators.show(Levels::default()).ok();
    // Dropping the last sender lets the client flush the hang-ups and close.
    drop(device);
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

impl Device {
    async fn on_client_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Registered => {
                self.registered = true;
                let status = self.status_line();
                if self.ever_registered {
                    self.notifier.status(&status);
                } else {
                    // The camera's elements and encoder were checked before we got here.
                    self.notifier.ready(&status);
                    self.ever_registered = true;
                }
                if self.dnd {
                    // A restarted phonebook forgot it.
                    self.send(ClientMessage::SetPresence {
                        name: self.name.clone(),
                        presence: Presence::Dnd,
                    });
                }
                self.say(&format!("registered as {:?}; waiting for calls", self.name));
            }
            ClientEvent::Disconnected(why) => {
                if self.registered {
                    warn!(%why, "lost the phonebook; reconnecting");
                }
                self.registered = false;
                self.notifier
                    .status(&format!("phonebook unreachable ({why}); reconnecting"));
                // Calls still being set up need the phonebook; established ones are peer
                // to peer and go on.
                let waiting: Vec<String> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| c.machine.state() != CallState::Established)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in waiting {
                    self.apply(&id, Input::RemoteHangup("phonebook connection lost".into()))
                        .await;
                }
            }
            ClientEvent::Message(msg) => self.on_message(msg).await,
        }
    }

    async fn on_message(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::IncomingCall {
                call_id,
                callee,
                meta,
                sdp,
            } => {
                if self.calls.contains_key(&call_id) {
                    return;
                }
                debug!(%call_id, %callee, "incoming call from the phonebook");
                self.ring(call_id, Route::Phonebook, &meta, sdp).await;
            }
            ServerMessage::Candidate { call_id, candidate } => {
                if let Some(candidate) = candidate {
                    self.add_remote_candidate(&call_id, candidate).await;
                }
            }
            ServerMessage::Hangup { call_id, reason } => {
                self.apply(&call_id, Input::RemoteHangup(reason)).await;
            }
            ServerMessage::Error {
                code,
                message,
                call_id,
            } => {
                warn!(?code, %message, "the phonebook reported an error");
                if let Some(call_id) = call_id {
                    self.apply(
                        &call_id,
                        Input::RemoteHangup(format!("phonebook: {message}")),
                    )
                    .await;
                }
            }
            other => debug!(?other, "ignored"),
        }
    }

    async fn on_peer_event(&mut self, call_id: &str, event: PeerEvent) {
        if !self.calls.contains_key(call_id) {
            return;
        }
        match event {
            PeerEvent::Candidate(candidate) => match self.route(call_id) {
                Some(Route::PeerJs {
                    peer,
                    connection_id,
                }) => {
                    // PeerJS never sends an end of candidates.
                    if let Some(candidate) = candidate {
                        self.send_peerjs(PeerJsCommand::Candidate {
                            dst: peer,
                            connection_id,
                            candidate,
                        });
                    }
                }
                _ => self.send(ClientMessage::Candidate {
                    call_id: call_id.into(),
                    candidate,
                }),
            },
            PeerEvent::DataClosed(label) => {
                // A PeerJS caller hangs up by closing its connection; the data channel
                // it opened on the call is the first to tell.
                if matches!(self.route(call_id), Some(Route::PeerJs { .. })) {
                    debug!(call = call_id, %label, "PeerJS caller's data channel closed");
                    self.apply(call_id, Input::RemoteHangup("caller hung up".into()))
                        .await;
                }
            }
            PeerEvent::Connected => {
                if let Some(call) = self.calls.get(call_id) {
                    debug!(
                        call = call_id,
                        ms = call.offered.elapsed().as_millis() as u64,
                        "connected (ICE and DTLS) after the offer"
                    );
                }
                self.apply(call_id, Input::PeerConnected).await
            }
            PeerEvent::Lost(reason) => self.apply(call_id, Input::PeerLost(reason)).await,
            PeerEvent::DataOpen => {
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.data_open = true;
                }
                self.send_event(call_id, &json!({"event": "accepted"}))
                    .await;
                let count = self.watching();
                self.send_event(call_id, &json!({"event": "viewers", "count": count}))
                    .await;
            }
            PeerEvent::Text(text) => {
                let caller = self
                    .calls
                    .get(call_id)
                    .map(|c| c.caller.clone())
                    .unwrap_or_default();
                let shown: String = text.chars().filter(|c| !c.is_control()).take(500).collect();
                info!(call = call_id, %caller, text = %shown, "message from a viewer");
                self.say(&format!("{caller} says: {shown}"));
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        let reply = match command.kind {
            CommandKind::Status => Ok(self.status().to_string()),
            CommandKind::FaultCamera => {
                if self
                    .feeds
                    .video
                    .inject_failure("camera fault injected through the control socket")
                {
                    Ok("the camera pipeline will be rebuilt".into())
                } else {
                    Err("the camera is not running".into())
                }
            }
            CommandKind::Press(press) => {
                let button = press.button();
                let reply = self.on_press(press).await;
                if reply.is_ok() {
                    self.broadcast(&json!({"event": "button", "button": button}))
                        .await;
                }
                reply
            }
        };
        if let Some(tx) = command.reply {
            let _ = tx.send(reply);
        }
    }

    async fn on_press(&mut self, press: Press) -> Result<String, String> {
        match press {
            Press::Accept | Press::Decline(_) => {
                let Some((id, caller)) = self
                    .calls
                    .iter()
                    .filter(|(_, c)| c.machine.state() == CallState::Ringing)
                    .min_by_key(|(_, c)| c.seq)
                    .map(|(id, c)| (id.clone(), c.caller.clone()))
                else {
                    return Err("no call is ringing".into());
                };
                if press == Press::Accept {
                    self.apply(&id, Input::Accept).await;
                    match self.calls.get(&id).map(|c| c.machine.state()) {
                        Some(CallState::Accepted | CallState::Established) => {
                            Ok(format!("accepted the call from {caller}"))
                        }
                        _ => Err(format!("the call from {caller} could not be answered")),
                    }
                } else {
                    let Press::Decline(reason) = press else {
                        unreachable!("matched above")
                    };
                    let reason =
                        reason.unwrap_or_else(|| self.settings.call.decline_reason.clone());
                    self.apply(&id, Input::Decline(reason.clone())).await;
                    Ok(format!("declined the call from {caller}: {reason}"))
                }
            }
            Press::DoNotDisturb => {
                self.dnd = !self.dnd;
                let presence = if self.dnd {
                    Presence::Dnd
                } else {
                    Presence::Available
                };
                self.send(ClientMessage::SetPresence {
                    name: self.name.clone(),
                    presence,
                });
                if !self.dnd {
                    self.say("do not disturb is off");
                    return Ok("do not disturb is off".into());
                }
                let reason = self.rules.dnd_reason.clone();
                let ringing: Vec<String> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| c.machine.state() == CallState::Ringing)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ringing {
                    self.apply(&id, Input::Decline(reason.clone())).await;
                }
                self.say("do not disturb is on: calls are declined until the next long press");
                Ok(format!(
                    "do not disturb is on: calls are declined with {reason:?}"
                ))
            }
            Press::Hangup(reason) => {
                let reason = reason.unwrap_or_else(|| "hung up at the device".into());
                let ids: Vec<String> = self.calls.keys().cloned().collect();
                if ids.is_empty() {
                    return Err("no call to hang up".into());
                }
                for id in &ids {
                    self.apply(id, Input::LocalHangup(reason.clone())).await;
                }
                Ok(format!("ended {} call(s)", ids.len()))
            }
        }
    }

    async fn on_tick(&mut self) {
        self.notifier.watchdog(Instant::now());
        self.show_indicators();
        let now = Instant::now();
        let due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.machine.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let actions = match self.calls.get_mut(&id) {
                Some(call) => call.machine.poll(now),
                None => continue,
            };
            self.perform_all(&id, actions).await;
        }
    }

    /// Feeds `input` to the call's state machine and carries out what it asks.
    async fn apply(&mut self, call_id: &str, input: Input) {
        let actions = match self.calls.get_mut(call_id) {
            Some(call) => call.machine.handle(input, Instant::now()),
            None => return,
        };
        self.perform_all(call_id, actions).await;
    }

    async fn perform_all(&mut self, call_id: &str, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            if let Some(follow_up) = self.perform(call_id, action).await {
                let more = match self.calls.get_mut(call_id) {
                    Some(call) => call.machine.handle(follow_up, Instant::now()),
                    None => Vec::new(),
                };
                queue.extend(more);
            }
        }
        if self
            .calls
            .get(call_id)
            .is_some_and(|c| c.machine.state().is_over())
            && let Some(call) = self.calls.remove(call_id)
            && let Some(peer) = call.peer
        {
            peer.close().await;
        }
        self.show_indicators();
        let watching = self.watching();
        if watching != self.viewers_announced {
            self.viewers_announced = watching;
            self.notifier.status(&self.status_line());
            self.broadcast(&json!({"event": "viewers", "count": watching}))
                .await;
        }
    }

    /// One line for `systemctl status`.
    fn status_line(&self) -> String {
        let watching = self.watching();
        format!(
            "registered as {:?}, {watching} viewer{}",
            self.name,
            if watching == 1 { "" } else { "s" }
        )
    }

    /// Calls in which media flows.
    fn watching(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.machine.state() == CallState::Established)
            .count()
    }

    /// Sets the ring LED, on-air LED and buzzer from the calls as they are now.
    fn show_indicators(&mut self) {
        let ringing = self
            .calls
            .values()
            .any(|c| c.machine.state() == CallState::Ringing);
        let now = Instant::now();
        self.ringing_since = match (ringing, self.ringing_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        let levels = indicator_levels(
            self.ringing_since.map(|since| now.duration_since(since)),
            self.watching() > 0,
        );
        if levels != self.levels {
            self.levels = levels;
            if let Err(err) = self.indicators.show(levels) {
                warn!("cannot switch the indicators: {err:#}");
            }
        }
    }

    /// Sends a device event to one viewer's data channel.
    async fn send_event(&self, call_id: &str, event: &Value) {
        if let Some(peer) = self.calls.get(call_id).and_then(|c| c.peer.as_ref()) {
            peer.send_text(&event.to_string()).await;
        }
    }

    /// Sends a device event to every viewer whose data channel is open.
    async fn broadcast(&self, event: &Value) {
        let text = event.to_string();
        for call in self.calls.values().filter(|c| c.data_open) {
            if let Some(peer) = &call.peer {
                peer.send_text(&text).await;
            }
        }
    }

    async fn perform(&mut self, call_id: &str, action: Action) -> Option<Input> {
        match action {
            Action::SendRinging => {
                // PeerJS has no ringing: its caller just waits for the answer.
                if self.route(call_id) == Some(Route::Phonebook) {
                    self.send(ClientMessage::Ringing {
                        call_id: call_id.into(),
                    });
                }
                None
            }
            Action::SendDecline(reason) => {
                match self.route(call_id) {
                    Some(Route::PeerJs { peer, .. }) => {
                        // PeerJS has no decline; EXPIRE makes the stock client report
                        // `peer-unavailable` instead of waiting forever.
                        info!(call = call_id, %peer, %reason, "declining a PeerJS call (sent as EXPIRE)");
                        self.send_peerjs(PeerJsCommand::Expire { dst: peer });
                    }
                    _ => self.send(ClientMessage::Decline {
                        call_id: call_id.into(),
                        reason,
                    }),
                }
                None
            }
            Action::SendHangup(reason) => {
                // A PeerJS caller learns of the hang-up from its connection closing
                // (ClosePeer), which fires `close` on its MediaConnection.
                if self.route(call_id) == Some(Route::Phonebook) {
                    self.send(ClientMessage::Hangup {
                        call_id: call_id.into(),
                        reason,
                    });
                }
                None
            }
            Action::ClosePeer => {
                let peer = self.calls.get_mut(call_id).and_then(|c| c.peer.take());
                if let Some(peer) = peer {
                    peer.close().await;
                }
                None
            }
            Action::Answer => self.answer(call_id).await.err().map(Input::AnswerFailed),
            Action::StateChanged(state, reason) => {
                let caller = self
                    .calls
                    .get(call_id)
                    .map(|c| c.caller.clone())
                    .unwrap_or_default();
                info!(call = call_id, %caller, %state, reason = reason.as_deref().unwrap_or(""), "call");
                match state {
                    CallState::Ringing => {
                        self.say(&format!(
                            "call from {caller} is ringing: press a to accept, d to decline (or `peercam press accept`)"
                        ));
                        self.broadcast(&json!({"event": "ringing", "caller": caller}))
                            .await;
                    }
                    CallState::Established => self.say(&format!("{caller} is watching")),
                    s if s.is_over() => self.say(&format!(
                        "call from {caller}: {s} ({})",
                        reason.as_deref().unwrap_or("")
                    )),
                    _ => {}
                }
                None
            }
        }
    }

    async fn answer(&mut self, call_id: &str) -> Result<(), String> {
        let offer = match self.calls.get(call_id) {
            Some(call) => call.offer.clone(),
            None => return Ok(()),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let forward = self.peer_events.clone();
        let id = call_id.to_owned();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if forward.send((id.clone(), event)).is_err() {
                    break;
                }
            }
        });
        let (peer, sdp) =
            CallPeer::answer(&self.engine, &offer, &self.feeds, &self.settings.audio, tx)
                .await
                .map_err(|err| {
                    warn!(call = call_id, "cannot answer: {err:#}");
                    format!("{err:#}")
                })?;
        match self.route(call_id) {
            Some(Route::PeerJs {
                peer,
                connection_id,
            }) => self.send_peerjs(PeerJsCommand::Answer {
                dst: peer,
                connection_id,
                sdp,
            }),
            _ => self.send(ClientMessage::Accept {
                call_id: call_id.into(),
                sdp,
            }),
        }
        let early = match self.calls.get_mut(call_id) {
            Some(call) => std::mem::take(&mut call.early_candidates),
            None => Vec::new(),
        };
        for candidate in early {
            if let Err(err) = peer.add_candidate(candidate).await {
                debug!(call = call_id, "{err:#}");
            }
        }
        if let Some(call) = self.calls.get_mut(call_id) {
            debug!(
                call = call_id,
                ms = call.offered.elapsed().as_millis() as u64,
                "answered after the offer"
            );
            call.peer = Some(peer);
        }
        Ok(())
    }

    fn route(&self, call_id: &str) -> Option<Route> {
        self.calls.get(call_id).map(|c| c.route.clone())
    }

    fn send_peerjs(&self, command: PeerJsCommand) {
        match &self.peerjs {
            Some(out) if out.send(command).is_ok() => {}
            _ => debug!("the PeerJS client has stopped"),
        }
    }

    /// A call ringing through `meta`, admitted or not by the answer rules.
    async fn ring(&mut self, call_id: String, route: Route, meta: &Value, offer: String) {
        let caller = caller_name(meta);
        let admission = self.rules.admit(
            meta.get("user")
                .or_else(|| meta.get("callerName"))
                .and_then(Value::as_str),
            self.calls.len(),
            self.dnd,
        );
        debug!(%call_id, ?route, ?admission, "incoming call");
        self.next_seq += 1;
        self.calls.insert(
            call_id.clone(),
            LiveCall {
                machine: Call::new(Instant::now(), self.settings.call.ring_timeout()),
                route,
                offered: Instant::now(),
                seq: self.next_seq,
                caller,
                offer,
                peer: None,
                early_candidates: Vec::new(),
                data_open: false,
            },
        );
        self.apply(&call_id, Input::Offered(admission)).await;
    }

    async fn on_peerjs_event(&mut self, event: PeerJsEvent) {
        match event {
            PeerJsEvent::Open => {
                self.peerjs_open = true;
                self.say("registered on the PeerJS server");
            }
            PeerJsEvent::Disconnected(why) => {
                if self.peerjs_open {
                    warn!(%why, "lost the PeerJS server; reconnecting");
                }
                self.peerjs_open = false;
                let waiting: Vec<String> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| {
                        matches!(c.route, Route::PeerJs { .. })
                            && c.machine.state() != CallState::Established
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in waiting {
                    self.apply(
                        &id,
                        Input::RemoteHangup("PeerJS server connection lost".into()),
                    )
                    .await;
                }
            }
            PeerJsEvent::Offer {
                src,
                connection_id,
                sdp,
                metadata,
            } => {
                let call_id = peerjs_call_id(&connection_id);
                if self.calls.contains_key(&call_id) {
                    return;
                }
                let mut meta = match metadata {
                    Value::Object(mut map) => {
                        // Only a phonebook can vouch for a user name; a PeerJS caller could
                        // claim any.
                        map.remove("user");
                        Value::Object(map)
                    }
                    _ => json!({}),
                };
                if caller_name(&meta) == "someone" {
                    meta["name"] = Value::String(src.clone());
                }
                let route = Route::PeerJs {
                    peer: src,
                    connection_id,
                };
                self.ring(call_id, route, &meta, sdp).await;
            }
            PeerJsEvent::Candidate {
                connection_id,
                candidate,
                ..
            } => {
                self.add_remote_candidate(&peerjs_call_id(&connection_id), candidate)
                    .await
            }
            PeerJsEvent::Leave { src } => {
                let gone: Vec<String> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| matches!(&c.route, Route::PeerJs { peer, .. } if *peer == src))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in gone {
                    self.apply(&id, Input::RemoteHangup("caller left".into()))
                        .await;
                }
            }
        }
    }

    /// Adds a caller's candidate now, or keeps it until the call is answered.
    async fn add_remote_candidate(&mut self, call_id: &str, candidate: IceCandidate) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        match &call.peer {
            Some(peer) => {
                if let Err(err) = peer.add_candidate(candidate).await {
                    debug!(%call_id, "{err:#}");
                }
            }
            None if call.early_candidates.len() < MAX_EARLY_CANDIDATES => {
                call.early_candidates.push(candidate)
            }
            None => debug!(%call_id, "too many early candidates; dropping one"),
        }
    }

    fn send(&self, msg: ClientMessage) {
        if self.out.send(msg).is_err() {
            debug!("the phonebook client has stopped");
        }
    }

    fn say(&self, text: &str) {
        if self.interactive {
            eprintln!("peercam: {text}");
        }
    }

    fn status(&self) -> Value {
        json!({
            "name": self.name,
            "registered": self.registered,
            "peerjs": self.peerjs.as_ref().map(|_| self.peerjs_open),
            "camera_running": self.feeds.video.is_running(),
            "dnd": self.dnd,
            "indicators": self.levels,
            "viewers": self.watching(),
            "feed": self.feeds.video.stats(),
            "microphone": self.feeds.audio.as_ref().map(|f| f.stats()),
            "calls": self.calls.iter().map(|(id, c)| json!({
                "id": id,
                "caller": c.caller,
                "via": match c.route { Route::Phonebook => "phonebook", Route::PeerJs { .. } => "peerjs" },
                "state": c.machine.state(),
                "video": c.peer.as_ref().map(|p| p.video_codec()),
                "played_audio_buffers": c.peer.as_ref().map_or(0, |p| p.played_audio_buffers()),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The device's id for a PeerJS media connection.
fn peerjs_call_id(connection_id: &str) -> String {
    format!("peerjs-{connection_id}")
}

/// The caller's name from its metadata: the user name the phonebook verified (`user`),
/// else `callerName` (as deepstream's examples use) or `name`, else "someone".
fn caller_name(meta: &Value) -> String {
    meta.get("user")
        .or_else(|| meta.get("callerName"))
        .or_else(|| meta.get("name"))
        .and_then(Value::as_str)
        .map(|s| s.chars().take(64).collect())
        .filter(|s: &String| !s.trim().is_empty())
        .unwrap_or_else(|| "someone".into())
}
