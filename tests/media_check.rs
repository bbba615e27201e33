//! The camera side of every built-in board: profiles load, pipeline descriptions parse
//! (or, where this machine lacks the board's camera or codec, say the right things), the
//! encoder falls back, the VP8 branch opens on demand, and `peercam check` / `peercam
//! devices` work on the dev board and fail readably on a broken one.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use peercam::config::{BOARDS, Settings};
use peercam::gpio::settings::GpioBackend;
use peercam::media::settings::{InputFormat, SourceKind};
use peercam::media::{self, choose, encode, pipeline};

fn load(board: &str) -> Settings {
    Settings::load(board, None, toml::Table::new())
        .unwrap_or_else(|err| panic!("board {board}: {err:#}"))
}

fn parses(description: &str) -> Result<(), String> {
    media::init().unwrap();
    gst::parse::launch(description)
        .map(|_| ())
        .map_err(|err| format!("{err}: {description}"))
}

fn peercam(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peercam"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run peercam")
}

#[test]
fn every_built_in_board_loads_and_pi_boards_have_buttons() {
    let names: Vec<&str> = BOARDS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["dev", "rpi-zero2w", "rpi3", "rpi4", "rpi5", "usb-webcam"]
    );
    for (name, text) in BOARDS {
        assert!(
            text.starts_with(&format!("# peercam board profile: {name}\n")),
            "{name} needs its header comment"
        );
        let s = load(name);
        assert!(!s.description.is_empty(), "{name}");
        let v = &s.video;
        assert!(v.min_bitrate_kbps <= v.bitrate_kbps && v.bitrate_kbps <= v.max_bitrate_kbps);
        if name.starts_with("rpi") {
            assert_eq!(v.source, SourceKind::Libcamera, "{name}");
            assert_eq!(s.gpio.backend, GpioBackend::Rppal, "{name}");
            let pins = [
                ("accept", 17, true),
                ("decline", 27, true),
                ("hangup", 22, true),
                ("bell", 5, true),
                ("ring_led", 23, false),
                ("on_air_led", 24, false),
                ("buzzer", 25, false),
            ];
            // The door relay is fitted by choice: commented out in the profiles.
            assert!(s.gpio.pin("door").is_none(), "{name}");
            for (pin, line, active_low) in pins {
                let pin = s
                    .gpio
                    .pin(pin)
                    .unwrap_or_else(|| panic!("{name}: pin {pin} ({line}) missing"));
                assert_eq!((pin.line, pin.active_low), (line, active_low), "{name}");
            }
            assert_eq!(s.call.answer, peercam::config::AnswerPolicy::Buttons);
            assert!(v.width <= 1280 && v.height <= 720 && v.fps <= 30, "{name}");
        }
    }
    let expect_vp8 = [
        ("dev", true),
        ("rpi-zero2w", false),
        ("rpi3", false),
        ("rpi5", true),
        ("usb-webcam", true),
    ];
    for (name, vp8) in expect_vp8 {
        assert_eq!(load(name).video.vp8_fallback, vp8, "{name}");
    }
    let hw = ["rpi-zero2w", "rpi3", "rpi4"];
    for name in hw {
        let v = load(name).video;
        assert_eq!(v.encoder, "v4l2h264enc", "{name}");
        assert_eq!(v.encoder_fallback, ["x264enc"], "{name}");
        assert_eq!(v.encoder_device.as_deref(), Some("/dev/video11"), "{name}");
    }
    let v = load("rpi5").video;
    assert_eq!(
        (v.encoder.as_str(), v.width, v.height, v.fps),
        ("x264enc", 1280, 720, 30)
    );
    let v = load("usb-webcam").video;
    assert_eq!(v.source, SourceKind::V4l2);
    assert_eq!(v.device.as_deref(), Some("/dev/video0"));
    assert_eq!(v.input_format, InputFormat::Auto);
}

#[test]
fn bad_video_settings_are_refused_with_reasons() {
    let err = |text: &str| {
        format!(
            "{:#}",
            Settings::load("dev", None, toml::from_str(text).unwrap()).unwrap_err()
        )
    };
    let e = err("[video]\nmin_bitrate_kbps = 3000");
    assert!(e.contains("min_bitrate_kbps <= bitrate_kbps"), "{e}");
    let e = err("[video]\nencoder_fallback = [\"vp8enc\"]");
    assert!(
        e.contains("encoder_fallback: unknown encoder \"vp8enc\""),
        "{e}"
    );
    let e = err("[video]\ninput_format = \"mjpeg\"");
    assert!(e.contains("needs video.source = \"v4l2\""), "{e}");
    let e = err("[video]\ninput_format = \"yuv\"");
    assert!(e.contains("yuv"), "{e}");
}

#[test]
fn descriptions_of_every_board_parse_where_the_elements_are_here() {
    media::init().unwrap();
    for (name, _) in BOARDS {
        let video = load(name).video;
        let plan = pipeline::plan(&video).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let d = &plan.description;
        assert!(d.contains("appsink name=frames sync=false"), "{name}: {d}");
        assert!(
            d.contains(
                "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au"
            ),
            "{name}: {d}"
        );
        assert_eq!(
            d.contains("valve name=vp8valve drop=true"),
            plan.vp8,
            "{name}"
        );
        assert_eq!(d.contains("appsink name=vp8frames"), plan.vp8, "{name}");
        if plan.check_elements(&video).is_ok() {
            parses(d).unwrap();
        } else {
            // libcamerasrc is not here: the rest of the pipeline must still parse.
            assert!(
                d.starts_with(
                    "libcamerasrc ! video/x-raw,width=1280,height=720,framerate=30/1 ! tee name=raw"
                ),
                "{name}: {d}"
            );
            parses(&d.replacen("libcamerasrc", "videotestsrc is-live=true", 1)).unwrap();
        }
    }
    // The dev board's test pattern, exactly: I420, so the capture-time stamp can be drawn
    // into it on its way out of `stamp`.
    let d = pipeline::describe(&load("dev").video).unwrap();
    assert!(d.starts_with(
        "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! \
         identity name=stamp silent=true ! \
         clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 40\" halignment=right valignment=bottom ! tee name=raw  raw. ! \
         queue max-size-buffers=2 leaky=downstream ! videoconvert ! video/x-raw,format=I420 ! x264enc "
    ), "{d}");
    assert!(d.contains("vp8enc deadline=1 cpu-used=8 end-usage=cbr error-resilient=partitions target-bitrate=2000000 keyframe-max-dist=60 ! appsink name=vp8frames"), "{d}");
}

#[test]
fn hardware_boards_describe_v4l2h264enc_with_its_controls() {
    let v4l2 = encode::quirks("v4l2h264enc").unwrap();
    for name in ["rpi-zero2w", "rpi3", "rpi4"] {
        let video = load(name).video;
        let d = pipeline::compose(&video, InputFormat::Raw, Some(v4l2)).unwrap();
        let controls = format!(
            "v4l2h264enc extra-controls=\"controls,video_bitrate={},h264_i_frame_period=60,repeat_sequence_header=1\"",
            video.bitrate_kbps * 1000
        );
        assert!(d.contains(&controls), "{name}: {d}");
        assert!(
            d.contains("videoconvert ! video/x-raw,format=I420 ! v4l2h264enc"),
            "{name}: {d}"
        );
        assert!(
            d.contains("! video/x-h264,level=(string)3.1,profile=constrained-baseline ! h264parse"),
            "{name}: {d}"
        );
        assert!(
            d.starts_with(
                "libcamerasrc ! video/x-raw,width=1280,height=720,framerate=30/1 ! tee name=raw"
            ),
            "{d}"
        );
        assert_eq!(d.contains("vp8valve"), video.vp8_fallback, "{name}");
    }
    // 1080p asks the codec for level 4.
    let mut video = load("rpi4").video;
    (video.width, video.height) = (1920, 1080);
    let d = pipeline::compose(&video, InputFormat::Raw, Some(v4l2)).unwrap();
    assert!(
        d.contains("video/x-h264,level=(string)4,profile=constrained-baseline"),
        "{d}"
    );
}

#[test]
fn usb_webcam_descriptions_for_each_input_format() {
    let video = load("usb-webcam").video;
    let x264 = encode::quirks("x264enc").unwrap();
    let raw = pipeline::compose(&video, InputFormat::Raw, Some(x264)).unwrap();
    assert!(raw.starts_with("v4l2src device=\"/dev/video0\" ! video/x-raw,width=1280,height=720,framerate=30/1 ! tee name=raw"), "{raw}");
    let mjpeg = pipeline::compose(&video, InputFormat::Mjpeg, Some(x264)).unwrap();
    assert!(mjpeg.starts_with("v4l2src device=\"/dev/video0\" ! image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec ! tee name=raw"), "{mjpeg}");
    let h264 = pipeline::compose(&video, InputFormat::H264, None).unwrap();
    assert_eq!(
        h264,
        "v4l2src device=\"/dev/video0\" ! video/x-h264,width=1280,height=720,framerate=30/1 ! \
         h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! \
         appsink name=frames sync=false max-buffers=8 drop=true"
    );
    for d in [&raw, &mjpeg, &h264] {
        // Parsing does not open the camera.
        parses(d).unwrap();
    }
    assert!(mjpeg.contains("vp8valve") && !h264.contains("vp8"));
}

#[test]
fn choose_encoder_falls_back_from_v4l2h264enc_to_x264enc_here() {
    if std::path::Path::new("/dev/video11").exists() {
        return; // a Pi: the hardware encoder may well be usable
    }
    let video = load("rpi4").video;
    let (chosen, skipped) = choose::choose_encoder(&video).unwrap();
    assert_eq!(chosen.element, "x264enc");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].starts_with("v4l2h264enc: "), "{skipped:?}");
    assert!(
        skipped[0].contains("/dev/video11 does not exist")
            && skipped[0].contains("v4l2h264enc is not registered"),
        "{skipped:?}"
    );
    // No usable encoder at all: every reason is named.
    let mut video = load("rpi4").video;
    video.encoder_fallback.clear();
    let err = format!("{:#}", choose::choose_encoder(&video).unwrap_err());
    assert!(
        err.contains("no usable H.264 encoder: v4l2h264enc: "),
        "{err}"
    );
}

#[test]
fn the_vp8_branch_opens_on_demand() {
    media::init().unwrap();
    let d = pipeline::describe(&load("dev").video).unwrap();
    let pipeline = gst::parse::launch(&d)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let count = |sink: &str| {
        let n = Arc::new(AtomicU64::new(0));
        let seen = n.clone();
        let sink = pipeline
            .by_name(sink)
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    seen.fetch_add(1, Ordering::Relaxed);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        n
    };
    let h264 = count("frames");
    let vp8 = count("vp8frames");
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        h264.load(Ordering::Relaxed) > 10,
        "H.264 flows with the valve closed"
    );
    assert_eq!(vp8.load(Ordering::Relaxed), 0, "VP8 idles behind the valve");
    pipeline
        .by_name("vp8valve")
        .unwrap()
        .set_property("drop", false);
    std::thread::sleep(Duration::from_millis(1500));
    let vp8_frames = vp8.load(Ordering::Relaxed);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        vp8_frames > 10,
        "VP8 frames after opening the valve: {vp8_frames}"
    );
}

#[test]
fn check_measures_the_dev_board() {
    let out = peercam(&["check", "--board", "dev", "--seconds", "3", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (r["width"].as_i64(), r["height"].as_i64()),
        (Some(1280), Some(720)),
        "{r}"
    );
    let fps = r["fps"].as_f64().unwrap();
    assert!((25.0..=35.0).contains(&fps), "{r}");
    assert!(r["bitrate_kbps"].as_f64().unwrap() > 0.0, "{r}");
    let gop = r["keyframe_interval_frames"]
        .as_f64()
        .expect("two keyframes in 3 s");
    assert!((50.0..=70.0).contains(&gop), "{r}");
    assert_eq!(r["encoder"], "x264enc");
    assert_eq!(r["profile"], "constrained-baseline");
}

#[test]
fn check_fails_readably() {
    let out = peercam(&[
        "check",
        "--set",
        "video.encoder=nosuchenc",
        "--seconds",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown encoder \"nosuchenc\""), "{stderr}");

    let out = peercam(&["check", "--set", "video.encoder=nosuchenc", "--json"]);
    assert!(!out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("nosuchenc"), "{r}");

    let out = peercam(&[
        "check",
        "--set",
        "video.source=v4l2",
        "--set",
        "video.device=/dev/video-peercam-missing",
        "--seconds",
        "1",
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED: camera missing: /dev/video-peercam-missing does not exist"),
        "{stdout}"
    );
}

#[test]
fn devices_lists_encoders_and_the_boards_pick() {
    let out = peercam(&["devices", "--board", "dev"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("x264enc"), "{stdout}");
    assert!(
        stdout.contains("What the board \"dev\" would use here"),
        "{stdout}"
    );
    assert!(
        stdout.contains("encoder       x264enc (software)"),
        "{stdout}"
    );
    if peercam::media::probe::video_nodes().is_empty() {
        assert!(stdout.contains("no /dev/video* nodes"), "{stdout}");
    }
    let out = peercam(&["devices", "--board", "rpi4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("skipped       v4l2h264enc")
            || std::path::Path::new("/dev/video11").exists(),
        "{stdout}"
    );
}
