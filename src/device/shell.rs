//! The IO around [`Doorbell`]: it reads the clock once per wake-up, hands the core what
//! the phonebook, the PeerJS server, the peer connections and the buttons report, and
//! carries out the actions it returns. It decides nothing about calls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::core::{Action, Doorbell, Input, Notify};
use super::sides::{CallerSide, PeerJsSide, PhonebookSide, deliver};
use crate::control::{Control, ControlError, Reply, Request};
use crate::gpio::Indicators;
use crate::media::audio::AudioSettings;
use crate::rtc::{CallPeer, Feeds, PeerEvent, RtcEngine};
use crate::signalling::events::{CallStatus, Side, Status};
use crate::signalling::protocol::ClientMessage;
use crate::systemd::Notifier;

/// The device's IO: the peers, the sides, the indicators and the service manager.
pub(super) struct Shell {
    pub(super) core: Doorbell,
    pub(super) engine: RtcEngine,
    pub(super) feeds: Feeds,
    pub(super) audio: AudioSettings,
    pub(super) phonebook: PhonebookSide,
    pub(super) peerjs: Option<PeerJsSide>,
    pub(super) peers: HashMap<String, CallPeer>,
    /// Where each peer's events go, tagged with its call.
    pub(super) peer_events: mpsc::UnboundedSender<(String, PeerEvent)>,
    pub(super) indicators: Box<dyn Indicators>,
    pub(super) notifier: Notifier,
    pub(super) interactive: bool,
    /// Where the reply to the press being handled goes.
    pub(super) reply: Option<oneshot::Sender<Reply>>,
    /// When the systemd watchdog next wants a wake-up, if it is on.
    pub(super) watchdog_due: Option<Instant>,
}

impl Shell {
    /// When the loop next has to wake up without an event.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.core
            .next_deadline()
            .into_iter()
            .chain(self.watchdog_due)
            .min()
    }

    /// What every wake-up ends with: the watchdog ping and whatever fell due.
    pub(super) async fn woke(&mut self, now: Instant) {
        self.notifier.watchdog(now);
        if let (Some(due), Some(interval)) = (self.watchdog_due, self.notifier.watchdog_interval())
            && now >= due
        {
            // A quarter of the interval keeps the pings (every half of it) well inside it
            // whichever wake-up the notifier sends one on.
            self.watchdog_due = Some(now + watchdog_step(interval));
        }
        let actions = self.core.poll(now);
        self.perform(actions).await;
    }

    /// Hands `input` to the core at `now` and carries out what it returns.
    pub(super) async fn handle(&mut self, input: Input, now: Instant) {
        let actions = self.core.handle(input, now);
        self.perform(actions).await;
    }

    /// Answers one request of a button, a key or the control socket.
    pub(super) async fn request(&mut self, request: Request, now: Instant) {
        let reply = match request.control {
            Control::Status => {
                Ok(serde_json::to_string(&self.status()).expect("status serialises"))
            }
            Control::FaultCamera => {
                if self
                    .feeds
                    .video
                    .inject_failure("camera fault injected through the control socket")
                {
                    Ok("the camera pipeline will be rebuilt".into())
                } else {
                    Err(ControlError::CameraNotRunning)
                }
            }
            Control::Press(press) => {
                self.reply = request.reply;
                self.handle(Input::Press(press), now).await;
                // The core replies to every press; should it not, the asker hears that the
                // daemon is gone rather than waiting.
                self.reply = None;
                return;
            }
        };
        if let Some(tx) = request.reply {
            let _ = tx.send(reply);
        }
    }

    fn side(&mut self, side: Side) -> Option<&mut dyn CallerSide> {
        match side {
            Side::Phonebook => Some(&mut self.phonebook),
            Side::PeerJs => self.peerjs.as_mut().map(|s| s as &mut dyn CallerSide),
        }
    }

    async fn perform(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::ToCaller {
                    side,
                    call,
                    message,
                } => {
                    if let Some(side) = self.side(side) {
                        deliver(side, &call, message);
                    }
                }
                Action::CreatePeer { call, offer } => {
                    let input = self.create_peer(call, &offer).await;
                    // Making the answer takes a while (tens of ms): the core hears of it at
                    // the time it came, for the connect timeout and the set-up timings.
                    queue.extend(self.core.handle(input, Instant::now()));
                }
                Action::AddCandidates { call, candidates } => {
                    if let Some(peer) = self.peers.get(&call) {
                        for candidate in candidates {
                            if let Err(err) = peer.add_candidate(candidate).await {
                                debug!(%call, "{err:#}");
                            }
                        }
                    }
                }
                Action::ClosePeer { call } => {
                    if let Some(peer) = self.peers.remove(&call) {
                        peer.close().await;
                    }
                }
                Action::Forget { side, call } => {
                    if let Some(peer) = self.peers.remove(&call) {
                        peer.close().await;
                    }
                    if let Some(side) = self.side(side) {
                        side.forget(&call);
                    }
                }
                Action::Event { to, event } => {
                    let text = event.to_text();
                    for call in to {
                        if let Some(peer) = self.peers.get(&call) {
                            peer.send_text(&text).await;
                        }
                    }
                }
                Action::Flush { calls, limit } => {
                    for call in calls {
                        if let Some(peer) = self.peers.get(&call) {
                            peer.flush(limit).await;
                        }
                    }
                }
                Action::SetPresence(presence) => self.phonebook.send(ClientMessage::SetPresence {
                    name: self.core.name().to_owned(),
                    presence,
                }),
                Action::Indicators(levels) => {
                    if let Err(err) = self.indicators.show(levels) {
                        warn!("cannot switch the indicators: {err:#}");
                    }
                }
                Action::Notify(Notify::Ready(status)) => self.notifier.ready(&status),
                Action::Notify(Notify::Status(status)) => self.notifier.status(&status),
                Action::Notify(Notify::Stopping(status)) => self.notifier.stopping(&status),
                Action::Say(text) => {
                    if self.interactive {
                        eprintln!("peercam: {text}");
                    }
                }
                Action::Reply(reply) => {
                    if let Some(tx) = self.reply.take() {
                        let _ = tx.send(reply);
                    }
                }
            }
        }
    }

    /// Makes the call's peer connection from the offer; its events reach the loop tagged
    /// with the call.
    async fn create_peer(&mut self, call: String, offer: &str) -> Input {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let forward = self.peer_events.clone();
        let id = call.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if forward.send((id.clone(), event)).is_err() {
                    break;
                }
            }
        });
        match CallPeer::answer(&self.engine, offer, &self.feeds, &self.audio, tx).await {
            Ok((peer, sdp)) => {
                self.peers.insert(call.clone(), peer);
                Input::AnswerMade { call, sdp }
            }
            Err(err) => {
                warn!(%call, "cannot answer: {err:#}");
                Input::AnswerFailed {
                    call,
                    reason: format!("{err:#}"),
                }
            }
        }
    }

    /// What `peercam status` prints.
    pub(super) fn status(&self) -> Status {
        Status {
            name: self.core.name().to_owned(),
            registered: self.core.registered(),
            peerjs: self.core.peerjs_open(),
            camera_running: self.feeds.video.is_running(),
            dnd: self.core.dnd(),
            indicators: self.core.levels(),
            viewers: self.core.watching(),
            feed: self.feeds.video.stats(),
            microphone: self.feeds.audio.as_ref().map(|f| f.stats()),
            calls: self
                .core
                .calls()
                .map(|c| {
                    let peer = self.peers.get(c.id);
                    CallStatus {
                        id: c.id.to_owned(),
                        caller: c.caller.to_owned(),
                        via: c.side,
                        state: c.state,
                        video: peer.map(|p| p.video_codec()),
                        played_audio_buffers: peer.map_or(0, |p| p.played_audio_buffers()),
                    }
                })
                .collect(),
        }
    }

    /// Ends every call (telling the viewers first) and darkens the indicators.
    pub(super) async fn shut_down(&mut self) {
        self.handle(Input::Shutdown, Instant::now()).await;
    }
}

/// The first wake-up for the watchdog, if it is on.
pub(super) fn first_watchdog_wake(notifier: &Notifier, now: Instant) -> Option<Instant> {
    notifier
        .watchdog_interval()
        .map(|interval| now + watchdog_step(interval))
}

/// How long the loop sleeps at most while the watchdog is on.
fn watchdog_step(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_millis(1))
}
