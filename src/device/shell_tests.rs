//! The shell with peers that come when the test says: making one holds up neither other
//! calls nor presses, a press's reply goes where its request id says when the core gives
//! it, and the bell's actions reach the peers and the phonebook.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::core::{BellConfig, Config, Directory, Doorbell, Input};
use super::peers::{BoxFuture, Made, Peer, PeerFactory};
use super::shell::{PeerNews, Shell};
use super::sides::PhonebookSide;
use crate::control::{Control, Press, Request};
use crate::gpio::simulated::LoggedIndicators;
use crate::media::Codec;
use crate::media::fanout::Feed;
use crate::media::replay::ReplaySource;
use crate::rtc::{Feeds, PeerEvent};
use crate::signalling::events::Side;
use crate::signalling::protocol::{ClientMessage, IceCandidate, Presence};
use crate::systemd::Notifier;

const WAIT: Duration = Duration::from_secs(5);

/// What was done to the fake peers, in order.
type Log = Arc<Mutex<Vec<String>>>;

struct FakePeer {
    name: String,
    log: Log,
}

impl FakePeer {
    fn note(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {what}", self.name));
    }
}

impl Peer for FakePeer {
    fn add_candidate(&self, _candidate: IceCandidate) -> BoxFuture<'_, anyhow::Result<()>> {
        self.note("candidate");
        Box::pin(async { Ok(()) })
    }

    fn apply_answer<'a>(&'a self, sdp: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        self.note(&format!("applies {sdp}"));
        Box::pin(async { Ok(()) })
    }

    fn open_two_way(&self) {
        self.note("opens two-way");
    }

    fn send_text<'a>(&'a self, _text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn flush(&self, _limit: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.note("closed");
        Box::pin(async {})
    }

    fn video_codec(&self) -> Codec {
        Codec::H264
    }

    fn played_audio_buffers(&self) -> u64 {
        0
    }
}

/// Peers made only as the test lets them through, one per permit.
struct SlowPeers {
    permits: Arc<Semaphore>,
    made: Mutex<usize>,
    log: Log,
}

impl SlowPeers {
    fn make(&self, what: &'static str) -> BoxFuture<'static, Made> {
        let n = {
            let mut made = self.made.lock().unwrap();
            *made += 1;
            *made
        };
        let (permits, log) = (self.permits.clone(), self.log.clone());
        Box::pin(async move {
            permits.acquire().await.expect("permits").forget();
            let peer = FakePeer {
                name: format!("peer{n}"),
                log,
            };
            Ok((Box::new(peer) as Box<dyn Peer>, format!("{what} {n}")))
        })
    }
}

impl PeerFactory for SlowPeers {
    fn answer(
        &self,
        _offer: String,
        _events: mpsc::UnboundedSender<PeerEvent>,
    ) -> BoxFuture<'static, Made> {
        self.make("answer")
    }

    fn offer(&self, _events: mpsc::UnboundedSender<PeerEvent>) -> BoxFuture<'static, Made> {
        self.make("offer")
    }
}

struct Rig {
    shell: Shell,
    permits: Arc<Semaphore>,
    log: Log,
    news: mpsc::UnboundedReceiver<PeerNews>,
    sent: mpsc::UnboundedReceiver<ClientMessage>,
}

fn rig(bell: Vec<&str>) -> Rig {
    let permits = Arc::new(Semaphore::new(0));
    let log = Log::default();
    let (news_tx, news) = mpsc::unbounded_channel();
    let (out_tx, sent) = mpsc::unbounded_channel();
    let config = Config {
        name: "door".into(),
        peerjs: false,
        bell: BellConfig {
            ring: bell.into_iter().map(str::to_owned).collect(),
            ..BellConfig::default()
        },
        ..super::tests::config()
    };
    let shell = Shell {
        core: Doorbell::new(config, Instant::now()),
        factory: Arc::new(SlowPeers {
            permits: permits.clone(),
            made: Mutex::new(0),
            log: log.clone(),
        }),
        feeds: Feeds {
            video: Feed::from_source("camera", ReplaySource::new(30, 30), None, None),
            audio: None,
        },
        phonebook: PhonebookSide::new(out_tx),
        peerjs: None,
        peers: HashMap::new(),
        peer_news: news_tx,
        indicators: Box::new(LoggedIndicators::default()),
        notifier: Notifier::from_env(),
        interactive: false,
        replies: HashMap::new(),
        next_request: 0,
        meta: json!({"kind": "camera"}),
        watchdog_due: None,
    };
    Rig {
        shell,
        permits,
        log,
        news,
        sent,
    }
}

impl Rig {
    /// Lets one peer be made and hands the shell what its task reports.
    async fn make_one(&mut self) {
        self.permits.add_permits(1);
        let news = tokio::time::timeout(WAIT, self.news.recv())
            .await
            .expect("a peer is made")
            .expect("the shell is running");
        self.shell.peer_news(news, Instant::now()).await;
    }

    fn sent(&mut self) -> Vec<ClientMessage> {
        std::iter::from_fn(|| self.sent.try_recv().ok()).collect()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_peer_being_made_holds_up_no_press_and_the_accept_is_answered_once_it_is() {
    let mut rig = rig(Vec::new());
    let now = Instant::now();
    rig.shell
        .handle(
            Input::Offer {
                call: "c1".into(),
                side: Side::Phonebook,
                meta: json!({"callerName": "Ray"}),
                sdp: "offer".into(),
            },
            now,
        )
        .await;
    assert!(matches!(&rig.sent()[..], [ClientMessage::Ringing { .. }]));

    let (accept, mut accepted) = Request::answered(Control::Press(Press::Accept));
    rig.shell.request(accept, now).await;
    assert!(
        accepted.try_recv().is_err(),
        "no reply before the answer is made"
    );
    // Meanwhile the loop answers anything else at once.
    let (status, status_reply) = Request::answered(Control::Status);
    rig.shell.request(status, now).await;
    let status = status_reply.await.unwrap().unwrap();
    assert!(status.contains("\"state\":\"ACCEPTED\""), "{status}");

    rig.make_one().await;
    assert_eq!(
        accepted.await.unwrap(),
        Ok("accepted the call from Ray".into())
    );
    assert!(matches!(&rig.sent()[..], [ClientMessage::Accept { sdp, .. }] if sdp == "answer 1"));
}

#[tokio::test]
async fn a_peer_made_for_a_call_that_ended_meanwhile_is_closed() {
    let mut rig = rig(Vec::new());
    let now = Instant::now();
    let offer = Input::Offer {
        call: "c1".into(),
        side: Side::Phonebook,
        meta: json!({"callerName": "Ray"}),
        sdp: "offer".into(),
    };
    rig.shell.handle(offer, now).await;
    let (accept, accepted) = Request::answered(Control::Press(Press::Accept));
    rig.shell.request(accept, now).await;
    let hangup = Input::RemoteHangup {
        call: "c1".into(),
        reason: "caller hung up".into(),
    };
    rig.shell.handle(hangup, now).await;
    assert!(
        accepted.await.unwrap().is_err(),
        "the press hears the call was not answered"
    );
    rig.make_one().await;
    assert_eq!(rig.log(), ["peer1 closed"]);
    assert!(rig.shell.peers.is_empty());
}

#[tokio::test]
async fn the_bells_offers_answers_and_state_reach_the_peers_and_the_phonebook() {
    let mut rig = rig(vec!["ray", "ada"]);
    let now = Instant::now();
    let online = Directory::All(vec![
        ("ray".into(), Presence::Available),
        ("ada".into(), Presence::Available),
    ]);
    rig.shell.handle(Input::Directory(online), now).await;
    let (bell, rang) = Request::answered(Control::Press(Press::Bell));
    rig.shell.request(bell, now).await;
    assert_eq!(rang.await.unwrap(), Ok("ringing ray, ada".into()));
    // The state goes to the phonebook as the device's metadata.
    let registered = rig.sent();
    assert!(
        matches!(&registered[..], [ClientMessage::Register { meta, .. }] if meta["bell"]["state"] == "ringing"),
        "{registered:?}"
    );
    rig.make_one().await;
    rig.make_one().await;
    let mut placed: Vec<(String, String)> = rig
        .sent()
        .into_iter()
        .map(|m| match m {
            ClientMessage::Call {
                call_id, callee, ..
            } => (callee, call_id),
            other => panic!("{other:?}"),
        })
        .collect();
    placed.sort();
    let [(_, ada), (_, ray)] = &placed[..] else {
        panic!("{placed:?}")
    };
    rig.shell
        .handle(
            Input::CalleeRinging {
                call: ray.clone(),
                answer: Some("early".into()),
            },
            now,
        )
        .await;
    rig.shell
        .handle(
            Input::CalleeAccepted {
                call: ray.clone(),
                sdp: "early".into(),
            },
            now,
        )
        .await;
    // Which fake peer is whose depends on which offer came back first.
    let log = rig.log();
    let peer_of_ray = log[0].split(' ').next().unwrap().to_owned();
    let peer_of_ada = if peer_of_ray == "peer1" {
        "peer2"
    } else {
        "peer1"
    };
    assert_eq!(
        log,
        [
            format!("{peer_of_ray} applies early"),
            format!("{peer_of_ray} opens two-way"),
            format!("{peer_of_ada} closed"),
        ]
    );
    let sent = rig.sent();
    assert!(
        sent.iter().any(|m| matches!(m,
            ClientMessage::Hangup { call_id, reason } if call_id == ada && reason == "answered by ray")),
        "{sent:?}"
    );
    assert!(sent.iter().any(|m| matches!(m,
        ClientMessage::Register { meta, .. } if meta["bell"] == json!({"state": "answered", "by": "ray"}))));
}
