//! The device's offer against an answering peer in the same process, on loopback: the
//! camera's video flows from the answer on, the sound both ways only once two-way audio
//! is open, and answers are taken once, with readable errors for bad ones.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;

use super::*;
use crate::config::IceSettings;
use crate::media::audio::{MicrophoneKind, SpeakerKind, describe_microphone};
use crate::media::replay::ReplaySource;
use crate::rtc::engine::MediaCaps;

/// The longest any one step may take.
const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> IceSettings {
    IceSettings {
        servers: Vec::new(),
        interfaces: vec!["lo".into()],
        loopback: true,
    }
}

/// A board with the camera replayed, a microphone replayed (Opus frames every 20 ms) if
/// `microphone`, and a (fake) speaker if `speaker`.
fn board(microphone: bool, speaker: bool) -> (Feeds, AudioSettings) {
    let camera = ReplaySource::new(30, 30);
    let feeds = Feeds {
        video: Feed::from_source("camera", camera, None, None),
        audio: microphone.then(|| {
            let opus = ReplaySource::new(50, 1).codecs(&[Codec::Opus]);
            Feed::from_source("microphone", opus, None, None)
        }),
    };
    let audio = AudioSettings {
        microphone: if microphone {
            MicrophoneKind::Test
        } else {
            MicrophoneKind::None
        },
        speaker: if speaker {
            SpeakerKind::Fake
        } else {
            SpeakerKind::None
        },
        ..AudioSettings::default()
    };
    (feeds, audio)
}

/// The media sections of `sdp`, each as its `m=` kind and its direction.
fn sections(sdp: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            let kind = m.split(' ').next().unwrap_or_default().to_owned();
            found.push((kind, String::new()));
        } else if let Some(last) = found.last_mut()
            && ["sendrecv", "sendonly", "recvonly", "inactive"]
                .iter()
                .any(|d| line == format!("a={d}"))
        {
            last.1 = line["a=".len()..].to_owned();
        }
    }
    found
}

/// Hands each side's candidates to the other, and the rest of their events to the test.
fn connect(
    a: &Arc<CallPeer>,
    a_events: mpsc::UnboundedReceiver<PeerEvent>,
    b: &Arc<CallPeer>,
    b_events: mpsc::UnboundedReceiver<PeerEvent>,
) -> (
    mpsc::UnboundedReceiver<PeerEvent>,
    mpsc::UnboundedReceiver<PeerEvent>,
) {
    fn relay(
        mut events: mpsc::UnboundedReceiver<PeerEvent>,
        to: Arc<CallPeer>,
    ) -> mpsc::UnboundedReceiver<PeerEvent> {
        let (rest_tx, rest) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    PeerEvent::Candidate(Some(candidate)) => {
                        to.add_candidate(candidate).await.expect("candidate added");
                    }
                    PeerEvent::Candidate(None) => {}
                    other => {
                        let _ = rest_tx.send(other);
                    }
                }
            }
        });
        rest
    }
    (relay(a_events, b.clone()), relay(b_events, a.clone()))
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<PeerEvent>,
    mut pick: impl FnMut(&PeerEvent) -> bool,
) -> PeerEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("the peer is running");
            if pick(&event) {
                return event;
            }
        }
    })
    .await
    .expect("the event within the wait")
}

/// Packets read from `track` within `within`.
async fn packets(track: &TrackRemote, within: Duration) -> u64 {
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, track.read_rtp()).await {
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offered_call_shows_video_at_once_and_carries_sound_only_once_two_way() {
    crate::media::init().expect("GStreamer");
    let device_engine = RtcEngine::new(&loopback(), MediaCaps::default()).unwrap();
    let (feeds, audio) = board(true, true);
    let (device_tx, device_events) = mpsc::unbounded_channel();
    let (device, offer) = CallPeer::offer(&device_engine, &feeds, &audio, device_tx)
        .await
        .expect("an offer");
    assert_eq!(
        sections(&offer),
        [
            ("video".into(), "sendonly".into()),
            ("audio".into(), "sendrecv".into()),
            ("application".into(), "sendrecv".into())
        ],
        "{offer}"
    );

    // The other end (a page, say) answers at once and speaks from the start: a test tone.
    let page_engine = RtcEngine::caller(&loopback(), &[Codec::H264, Codec::Opus]).unwrap();
    let voice = Feed::new(
        "voice",
        describe_microphone(&AudioSettings {
            microphone: MicrophoneKind::Test,
            ..AudioSettings::default()
        })
        .unwrap(),
        None,
        None,
    );
    let (tracks_tx, mut tracks) = mpsc::unbounded_channel();
    let plan = MediaPlan {
        video: None,
        receive_video: false,
        audio: Some(voice.subscribe(Codec::Opus).expect("a test tone")),
        receive_audio: false,
        gated: false,
        remote: RemoteTracks::HandOut(Arc::new(move |track| {
            let _ = tracks_tx.send(track);
        })),
    };
    let (page_tx, page_events) = mpsc::unbounded_channel();
    let (page, answer) =
        CallPeer::start(&page_engine, plan, Role::Answer(&offer), emit_to(page_tx))
            .await
            .expect("an answer");
    let (device, page) = (Arc::new(device), Arc::new(page));
    let (mut device_events, mut page_events) = connect(&device, device_events, &page, page_events);

    device.apply_answer(&answer).await.expect("the answer");
    device
        .apply_answer(&answer)
        .await
        .expect("the same answer again changes nothing");
    next_event(&mut device_events, |e| *e == PeerEvent::Connected).await;

    let video = tokio::time::timeout(WAIT, tracks.recv())
        .await
        .expect("the camera's video within the wait")
        .expect("a track");
    assert_eq!(video.kind(), RTPCodecType::Video);
    assert!(packets(&video, Duration::from_millis(500)).await > 5);
    // A second of video and of the page's voice: none of the door's sound has come
    // (a track is handed out at its first packet), and the page's was not played.
    assert!(packets(&video, Duration::from_secs(1)).await > 10);
    assert!(
        tracks.try_recv().is_err(),
        "sound came before two-way audio was open"
    );
    assert_eq!(device.played_audio_buffers(), 0);

    device.open_two_way();
    device.open_two_way();
    let sound = tokio::time::timeout(WAIT, tracks.recv())
        .await
        .expect("the microphone's sound once two-way audio is open")
        .expect("a track");
    assert_eq!(sound.kind(), RTPCodecType::Audio);
    assert!(packets(&sound, Duration::from_millis(500)).await > 5);
    tokio::time::timeout(WAIT, async {
        while device.played_audio_buffers() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the page's voice plays once two-way audio is open");

    // The device's own data channel, both ways.
    next_event(&mut device_events, |e| *e == PeerEvent::DataOpen).await;
    next_event(&mut page_events, |e| *e == PeerEvent::DataOpen).await;
    device.send_text("{\"event\":\"bell\"}").await;
    let text = next_event(&mut page_events, |e| matches!(e, PeerEvent::Text(_))).await;
    assert_eq!(text, PeerEvent::Text("{\"event\":\"bell\"}".into()));
    page.send_text("{\"request\":\"open_door\"}").await;
    let text = next_event(&mut device_events, |e| matches!(e, PeerEvent::Text(_))).await;
    assert_eq!(text, PeerEvent::Text("{\"request\":\"open_door\"}".into()));

    device.shutdown().await;
    page.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_carries_the_sound_the_board_has() {
    let engine = RtcEngine::new(&loopback(), MediaCaps::default()).unwrap();
    let cases = [
        (true, false, Some("sendonly")),
        (false, true, Some("recvonly")),
        (false, false, None),
    ];
    for (microphone, speaker, direction) in cases {
        let (feeds, audio) = board(microphone, speaker);
        let (tx, _events) = mpsc::unbounded_channel();
        let (peer, offer) = CallPeer::offer(&engine, &feeds, &audio, tx).await.unwrap();
        let found = sections(&offer);
        assert_eq!(found[0], ("video".into(), "sendonly".into()), "{offer}");
        let sound = found.iter().find(|(kind, _)| kind == "audio");
        assert_eq!(
            sound.map(|(_, d)| d.as_str()),
            direction,
            "microphone {microphone}, speaker {speaker}: {offer}"
        );
        assert_eq!(peer.video_codec(), Codec::H264);
        peer.close().await;
    }
}

/// An answer to `offer` from a peer that sends and asks for nothing (it receives what
/// the offer sends), and that peer.
async fn plain_answer(offer: &str) -> (CallPeer, String) {
    let engine = RtcEngine::caller(&loopback(), &[Codec::H264]).unwrap();
    let plan = MediaPlan {
        video: None,
        receive_video: false,
        audio: None,
        receive_audio: false,
        gated: false,
        remote: RemoteTracks::HandOut(Arc::new(|_| {})),
    };
    let (tx, _events) = mpsc::unbounded_channel();
    CallPeer::start(&engine, plan, Role::Answer(offer), emit_to(tx))
        .await
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_taken_once_and_bad_ones_are_readable_errors() {
    let engine = RtcEngine::new(&loopback(), MediaCaps::default()).unwrap();
    let (feeds, audio) = board(false, false);
    let (tx, _events) = mpsc::unbounded_channel();
    let (peer, offer) = CallPeer::offer(&engine, &feeds, &audio, tx).await.unwrap();
    let err = peer.apply_answer("this is not SDP").await.unwrap_err();
    assert!(format!("{err:#}").contains("not valid SDP"), "{err:#}");
    // Nothing was taken of it: a good answer follows, and once it is applied any other
    // answer, good or not, changes nothing.
    let (page, answer) = plain_answer(&offer).await;
    peer.apply_answer(&answer).await.expect("a good answer");
    peer.apply_answer(&answer).await.expect("the same again");
    peer.apply_answer("this is not SDP")
        .await
        .expect("once answered, more answers change nothing");
    peer.close().await;
    page.close().await;

    // SDP without media, fingerprint or ICE credentials: webrtc-rs takes it in part and
    // then refuses it, so the connection can take no other answer.
    let (tx, _events) = mpsc::unbounded_channel();
    let (peer, offer) = CallPeer::offer(&engine, &feeds, &audio, tx).await.unwrap();
    let no_media = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    let err = peer.apply_answer(no_media).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot be used"), "{err:#}");
    let (page, answer) = plain_answer(&offer).await;
    let err = peer.apply_answer(&answer).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("no other can follow"),
        "{err:#}"
    );
    peer.close().await;
    page.close().await;
}
