//! The IO around [`Doorbell`]: it reads the clock once per wake-up, hands the core what
//! the phonebook, the PeerJS server, the peer connections and the buttons report, and
//! carries out the actions it returns. It decides nothing about calls.
//!
//! Making a peer connection takes tens of milliseconds, so it runs on a task of its own
//! and comes back as [`PeerNews::Made`], ahead of that peer's events on the same channel;
//! the loop meanwhile goes on with other calls and presses. A press's reply goes where
//! its request id says, whenever the core gives it (an accept replies once the answer is
//! made).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::core::{Action, Doorbell, Input, Lights, Notify, PeerReport, RequestId};
use super::peers::{Made, Peer, PeerFactory};
use super::sides::{CallerSide, PeerJsSide, PhonebookSide, deliver};
use crate::control::{Control, ControlError, Reply, Request};
use crate::gpio::{Indicators, Levels};
use crate::rtc::{Feeds, PeerEvent};
use crate::signalling::events::Side;
use crate::signalling::protocol::ClientMessage;
use crate::signalling::status::{CallStatus, Status};
use crate::systemd::Notifier;

/// What the peer tasks tell the loop, in order per call.
pub(super) enum PeerNews {
    /// A peer connection asked for is made (with its SDP), or could not be.
    Made {
        call: String,
        offered: bool,
        result: Made,
    },
    /// A made peer reported something.
    Event { call: String, event: PeerEvent },
}

/// The device's IO: the peers, the sides, the indicators and the service manager.
pub(super) struct Shell {
    pub(super) core: Doorbell,
    /// Makes the calls' peer connections.
    pub(super) factory: Arc<dyn PeerFactory>,
    /// The camera and microphone, for the status.
    pub(super) feeds: Feeds,
    pub(super) phonebook: PhonebookSide,
    pub(super) peerjs: Option<PeerJsSide>,
    pub(super) peers: HashMap<String, Box<dyn Peer>>,
    /// Where the peer tasks report.
    pub(super) peer_news: mpsc::UnboundedSender<PeerNews>,
    pub(super) indicators: Box<dyn Indicators>,
    pub(super) notifier: Notifier,
    pub(super) interactive: bool,
    /// Where the replies to pending requests go, by request id.
    pub(super) replies: HashMap<RequestId, oneshot::Sender<Reply>>,
    pub(super) next_request: RequestId,
    /// The device's registration metadata, to which the bell's state is added.
    pub(super) meta: Value,
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
                let request = request.reply.map(|tx| {
                    self.next_request += 1;
                    self.replies.insert(self.next_request, tx);
                    self.next_request
                });
                self.handle(Input::Press { press, request }, now).await;
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
                Action::Signal { side, call, signal } => {
                    let placed = self
                        .side(side)
                        .is_some_and(|side| deliver(side, &call, signal));
                    if !placed {
                        let input = Input::RemoteHangup {
                            call,
                            reason: "that side cannot carry this call".into(),
                        };
                        queue.extend(self.core.handle(input, Instant::now()));
                    }
                }
                Action::CreateAnswer { call, offer } => self.make_peer(call, Some(offer)),
                Action::CreateOffer { call } => self.make_peer(call, None),
                Action::ApplyAnswer { call, sdp } => {
                    let Some(peer) = self.peers.get(&call) else {
                        continue;
                    };
                    if let Err(err) = peer.apply_answer(&sdp).await {
                        warn!(%call, "the callee's answer cannot be used: {err:#}");
                        let report = PeerReport::Lost(format!("bad answer: {err:#}"));
                        let input = Input::Peer { call, report };
                        queue.extend(self.core.handle(input, Instant::now()));
                    }
                }
                Action::OpenTwoWay { call } => {
                    if let Some(peer) = self.peers.get(&call) {
                        peer.open_two_way();
                    }
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
                Action::PublishBell(bell) => {
                    self.meta["bell"] = json!(bell);
                    self.phonebook.send(ClientMessage::Register {
                        name: self.core.name().to_owned(),
                        meta: self.meta.clone(),
                    });
                }
                Action::Lights(lights) => {
                    if let Err(err) = self.indicators.show(levels(lights)) {
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
                Action::Reply { request, reply } => match request {
                    Some(request) => {
                        if let Some(tx) = self.replies.remove(&request) {
                            let _ = tx.send(reply);
                        }
                    }
                    // A button's press: nobody reads the reply, but a refusal is news.
                    None => {
                        if let Err(err) = reply {
                            info!("button press: {err}");
                        }
                    }
                },
            }
        }
    }

    /// Makes a call's peer connection on a task of its own: the answer to `offer`, or an
    /// offer of the camera. The result, then the peer's events, come back as
    /// [`PeerNews`].
    fn make_peer(&self, call: String, offer: Option<String>) {
        let news = self.peer_news.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let offered = offer.is_none();
        let making = match offer {
            Some(offer) => self.factory.answer(offer, tx),
            None => self.factory.offer(tx),
        };
        tokio::spawn(async move {
            let result = making.await;
            let made = result.is_ok();
            let id = call.clone();
            if news
                .send(PeerNews::Made {
                    call,
                    offered,
                    result,
                })
                .is_err()
                || !made
            {
                return;
            }
            while let Some(event) = rx.recv().await {
                let event = PeerNews::Event {
                    call: id.clone(),
                    event,
                };
                if news.send(event).is_err() {
                    break;
                }
            }
        });
    }

    /// What a peer task reported, for the core.
    pub(super) async fn peer_news(&mut self, news: PeerNews, now: Instant) {
        let input = match news {
            PeerNews::Made {
                call,
                offered,
                result: Ok((peer, sdp)),
            } => {
                self.peers.insert(call.clone(), peer);
                if offered {
                    Input::OfferMade { call, sdp }
                } else {
                    Input::AnswerMade { call, sdp }
                }
            }
            PeerNews::Made {
                call,
                offered,
                result: Err(err),
            } => {
                let reason = format!("{err:#}");
                if offered {
                    warn!(%call, "cannot call out: {reason}");
                    Input::OfferFailed { call, reason }
                } else {
                    warn!(%call, "cannot answer: {reason}");
                    Input::AnswerFailed { call, reason }
                }
            }
            PeerNews::Event { call, event } => Input::Peer {
                call,
                report: report(event),
            },
        };
        self.handle(input, now).await;
    }

    /// What `peercam status` prints.
    pub(super) fn status(&self) -> Status {
        Status {
            name: self.core.name().to_owned(),
            registered: self.core.registered(),
            peerjs: self.core.peerjs_open(),
            camera_running: self.feeds.video.is_running(),
            dnd: self.core.dnd(),
            indicators: levels(self.core.lights()),
            viewers: self.core.watching(),
            feed: self.feeds.video.stats(),
            microphone: self.feeds.audio.as_ref().map(|f| f.stats()),
            calls: self
                .core
                .calls()
                .map(|c| {
                    let peer = self.peers.get(c.id);
                    let placed = c.role == crate::call::Role::Caller;
                    CallStatus {
                        id: c.id.to_owned(),
                        caller: if placed { self.core.name() } else { c.party }.to_owned(),
                        role: c.role,
                        callee: placed.then(|| c.party.to_owned()),
                        via: c.side,
                        state: c.state,
                        video: peer.map(|p| p.video_codec()),
                        played_audio_buffers: peer.map_or(0, |p| p.played_audio_buffers()),
                    }
                })
                .collect(),
            bell: self.core.bell().cloned(),
        }
    }

    /// Ends every call (telling the viewers first) and darkens the indicators.
    pub(super) async fn shut_down(&mut self) {
        self.handle(Input::Shutdown, Instant::now()).await;
    }
}

/// What the core's lights are on the board's outputs.
fn levels(lights: Lights) -> Levels {
    Levels {
        ring_led: lights.ring_led,
        on_air_led: lights.on_air_led,
        buzzer: lights.buzzer,
        door: lights.door,
    }
}

/// A peer's event as the core hears it.
fn report(event: PeerEvent) -> PeerReport {
    match event {
        PeerEvent::Candidate(candidate) => PeerReport::Candidate(candidate),
        PeerEvent::Connected => PeerReport::Connected,
        PeerEvent::DataOpen => PeerReport::DataOpen,
        PeerEvent::Text(text) => PeerReport::Text(text),
        PeerEvent::DataClosed(label) => PeerReport::DataClosed(label),
        PeerEvent::Lost(reason) => PeerReport::Lost(reason),
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
