//! `peercam check`: runs the board's camera pipeline ([`crate::media::check`]) and puts
//! what it measured in a compact table (or, with `--json`, the report itself).

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::Settings;
use crate::media::check::{self, CheckReport};

/// Runs the check of the loaded settings for `duration` (blocking: GStreamer runs the
/// pipeline on its own threads, this waits for them).
pub fn run(settings: &Settings, duration: Duration) -> CheckReport {
    check::run(&settings.board, &settings.video, duration)
}

/// The report of a check that never ran because the settings did not load: `--json`
/// still prints one object, with the reason.
pub fn not_loaded(board: Option<&str>, error: &anyhow::Error) -> CheckReport {
    CheckReport {
        board: board.unwrap_or("dev").to_owned(),
        error: Some(format!("{error:#}")),
        ..CheckReport::default()
    }
}

/// The compact table `peercam check` prints.
pub fn table(report: &CheckReport) -> String {
    let mut out = String::new();
    let c = &report.configured;
    let row = |out: &mut String, key: &str, value: String| {
        let _ = writeln!(out, "  {key:<12}{value}");
    };
    let _ = writeln!(out, "peercam check: board {}", report.board);
    row(
        &mut out,
        "source",
        if report.input_format.is_empty() {
            report.source.clone()
        } else {
            format!("{}, input {}", report.source, report.input_format)
        },
    );
    if let Some(encoder) = &report.encoder {
        row(
            &mut out,
            "encoder",
            format!(
                "{encoder} ({}){}",
                if encoder == "passthrough" {
                    "the camera's own H.264"
                } else if report.hardware {
                    "hardware"
                } else {
                    "software"
                },
                if report.vp8_branch {
                    ", VP8 branch idle"
                } else {
                    ""
                }
            ),
        );
    }
    for why in &report.skipped {
        row(&mut out, "skipped", why.clone());
    }
    if report.frames > 0 {
        let size = match (report.width, report.height) {
            (Some(w), Some(h)) => format!("{w}x{h}"),
            _ => "unknown".into(),
        };
        row(
            &mut out,
            "picture",
            format!(
                "{size} (configured {}x{}), {} level {}",
                c.width,
                c.height,
                report.profile.as_deref().unwrap_or("?"),
                report.level.as_deref().unwrap_or("?"),
            ),
        );
        row(
            &mut out,
            "frames",
            format!(
                "{} in {:.1} s, {} keyframes",
                report.frames, report.seconds, report.keyframes
            ),
        );
        row(
            &mut out,
            "fps",
            format!("{:.1} (configured {})", report.fps, c.fps),
        );
        row(
            &mut out,
            "bitrate",
            format!(
                "{:.0} kbit/s (configured {})",
                report.bitrate_kbps, c.bitrate_kbps
            ),
        );
        row(
            &mut out,
            "keyframes",
            match (
                report.keyframe_interval_frames,
                report.keyframe_interval_secs,
            ) {
                (Some(f), Some(s)) => format!(
                    "every {f:.0} frames, {s:.2} s (configured {})",
                    c.keyframe_interval
                ),
                (Some(f), None) => {
                    format!("every {f:.0} frames (configured {})", c.keyframe_interval)
                }
                _ => format!(
                    "only {} in the run: the interval is longer (configured {})",
                    report.keyframes, c.keyframe_interval
                ),
            },
        );
    }
    for warning in &report.warnings {
        row(&mut out, "warning", warning.clone());
    }
    match &report.error {
        None => row(&mut out, "result", "ok".into()),
        Some(err) => row(&mut out, "result", format!("FAILED: {err}")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_says_failed_with_the_reason() {
        let report = CheckReport {
            board: "usb-webcam".into(),
            source: "v4l2".into(),
            error: Some("camera missing: /dev/video0 does not exist".into()),
            ..CheckReport::default()
        };
        let text = table(&report);
        assert!(text.contains("FAILED: camera missing"), "{text}");
        assert!(
            text.starts_with("peercam check: board usb-webcam\n  source      v4l2\n"),
            "{text}"
        );
    }

    #[test]
    fn a_check_that_never_ran_says_why_in_its_report() {
        let report = not_loaded(None, &anyhow::anyhow!("unknown board \"moon\""));
        assert!(!report.ok);
        assert_eq!(report.board, "dev");
        assert_eq!(report.error.as_deref(), Some("unknown board \"moon\""));
    }
}
