//! The control protocol: what a person or a script asks the running daemon, in one type.
//!
//! [`Control`] is the one form of a request. The control socket reads it from a line
//! ([`Control::parse`]), `peercam press` and `peercam status` write it as one
//! ([`Control`]'s `Display`), the terminal's keys map to it ([`Control::from_key`]) and the
//! buttons send it as a [`Request`]. The reply is one line too: `ok TEXT` or
//! `error TEXT` ([`reply_line`], [`parse_reply`]).

use std::fmt;

use tokio::sync::oneshot;

use crate::buttons::Button;

/// A button press (the buttons and their words are [`crate::buttons::BUTTONS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Press {
    /// Accept the oldest ringing call.
    Accept,
    /// Decline the oldest ringing call, with this reason or the board's.
    Decline(Option<String>),
    /// End every call, with this reason or a default.
    Hangup(Option<String>),
    /// Turn do-not-disturb on or off (a long press of decline).
    DoNotDisturb,
    /// The visitor's bell: ring the household.
    Bell,
}

impl Press {
    /// The press of `button`, with `reason` where the button takes one.
    pub fn new(button: Button, reason: Option<String>) -> Press {
        match button {
            Button::Accept => Press::Accept,
            Button::Decline => Press::Decline(reason),
            Button::Dnd => Press::DoNotDisturb,
            Button::Hangup => Press::Hangup(reason),
            Button::Bell => Press::Bell,
        }
    }

    /// The button this press is of.
    pub fn button(&self) -> Button {
        match self {
            Press::Accept => Button::Accept,
            Press::Decline(_) => Button::Decline,
            Press::DoNotDisturb => Button::Dnd,
            Press::Hangup(_) => Button::Hangup,
            Press::Bell => Button::Bell,
        }
    }

    /// The reason given with it, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Press::Decline(reason) | Press::Hangup(reason) => reason.as_deref(),
            _ => None,
        }
    }
}

/// Longest accepted control line, in bytes.
pub const MAX_LINE: usize = 4096;

/// What is asked of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A button press.
    Press(Press),
    /// The daemon's status as one JSON line.
    Status,
    /// Make the camera pipeline fail as if the camera went away (to check that it is
    /// rebuilt and calls resume).
    FaultCamera,
}

/// Why a request got an `error` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The line is no request.
    #[error("unknown command {0:?}: use {words}, status or fault camera", words = press_words())]
    Unknown(String),
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// Accept or decline with no call ringing.
    #[error("no call is ringing")]
    NothingRinging,
    /// The answer to the call could not be made (bad offer, no camera).
    #[error("the call from {0} could not be answered")]
    NotAnswered(String),
    /// Hang-up with no call.
    #[error("no call to hang up")]
    NothingToHangUp,
    /// A bell press the bell's rules refuse (already ringing, no bell configured).
    #[error("{0}")]
    Bell(String),
    /// `fault camera` while the camera is off.
    #[error("the camera is not running")]
    CameraNotRunning,
    /// The daemon stopped before it replied.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// The daemon's answer to a request: the text after `ok`, or why not.
pub type Reply = Result<String, ControlError>;

/// A request with where its reply goes (none for a GPIO button: nobody reads it).
#[derive(Debug)]
pub struct Request {
    /// What is asked.
    pub control: Control,
    /// Gets the reply, if someone waits for it.
    pub reply: Option<oneshot::Sender<Reply>>,
}

impl Request {
    /// A request nobody waits for the reply of.
    pub fn unanswered(control: Control) -> Self {
        Request {
            control,
            reply: None,
        }
    }

    /// A request and the receiver of its reply.
    pub fn answered(control: Control) -> (Self, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        (
            Request {
                control,
                reply: Some(tx),
            },
            rx,
        )
    }
}

impl Control {
    /// Parses one line of the control protocol: `accept`, `decline [reason]`,
    /// `hangup [reason]`, `dnd`, `status` or `fault camera`.
    pub fn parse(line: &str) -> Result<Self, ControlError> {
        if line.len() > MAX_LINE {
            return Err(ControlError::TooLong);
        }
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let reason = one_line(rest);
        if let Some(button) = Button::from_word(word)
            && (reason.is_none() || button.row().takes_reason)
        {
            return Ok(Control::Press(Press::new(button, reason)));
        }
        match word {
            "status" if reason.is_none() => Ok(Control::Status),
            "fault" if rest == "camera" => Ok(Control::FaultCamera),
            _ => Err(ControlError::Unknown(line.to_owned())),
        }
    }

    /// The press a key of the terminal stands for (the keys of
    /// [`crate::buttons::BUTTONS`]: `a` accept, `d` decline, `n` do not disturb, `h` hang
    /// up, `b` the bell).
    pub fn from_key(key: u8) -> Option<Self> {
        Button::from_key(key).map(|button| Control::Press(Press::new(button, None)))
    }
}

/// The press words for help texts: `accept, decline [reason], …`.
fn press_words() -> String {
    crate::buttons::BUTTONS
        .iter()
        .map(|row| {
            if row.takes_reason {
                format!("{} [reason]", row.word)
            } else {
                row.word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The line form, as [`Control::parse`] reads it back. A reason's line breaks become
/// spaces: one request is one line.
impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Press(press) => {
                f.write_str(press.button().word())?;
                match press.reason().and_then(one_line) {
                    Some(reason) => write!(f, " {reason}"),
                    None => Ok(()),
                }
            }
            Control::Status => f.write_str("status"),
            Control::FaultCamera => f.write_str("fault camera"),
        }
    }
}

/// A reason as one line: control characters (line breaks, tabs) become spaces, and
/// nothing but spaces is no reason.
fn one_line(reason: &str) -> Option<String> {
    let spaced: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = spaced.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The reply as the line the control socket sends (with its newline).
pub fn reply_line(reply: &Reply) -> String {
    match reply {
        Ok(text) => format!("ok {text}\n"),
        Err(err) => format!("error {err}\n"),
    }
}

/// Reads a reply line: the text after `ok`, or the daemon's error text after `error`.
pub fn parse_reply(line: &str) -> Result<String, String> {
    let line = line.trim_end();
    match line.split_once(' ') {
        Some(("ok", text)) => Ok(text.to_owned()),
        Some(("error", text)) => Err(text.to_owned()),
        _ if line == "ok" => Ok(String::new()),
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        assert_eq!(
            Control::parse("accept\n"),
            Ok(Control::Press(Press::Accept))
        );
        assert_eq!(
            Control::parse("decline Not now"),
            Ok(Control::Press(Press::Decline(Some("Not now".into()))))
        );
        assert_eq!(
            Control::parse("decline"),
            Ok(Control::Press(Press::Decline(None)))
        );
        assert_eq!(
            Control::parse("hangup  bye "),
            Ok(Control::Press(Press::Hangup(Some("bye".into()))))
        );
        assert_eq!(
            Control::parse("dnd"),
            Ok(Control::Press(Press::DoNotDisturb))
        );
        assert_eq!(Control::parse("status"), Ok(Control::Status));
        assert_eq!(Control::parse("fault camera"), Ok(Control::FaultCamera));
        assert_eq!(
            Control::parse("accept twice"),
            Err(ControlError::Unknown("accept twice".into()))
        );
        assert!(Control::parse("launch").is_err());
        assert!(Control::parse("fault").is_err());
        assert_eq!(Control::parse("bell"), Ok(Control::Press(Press::Bell)));
        assert!(Control::parse("bell now").is_err());
        assert_eq!(
            Control::parse(&"x".repeat(MAX_LINE + 1)),
            Err(ControlError::TooLong)
        );
    }

    #[test]
    fn the_line_form_reads_back_as_the_same_request() {
        let all = [
            Control::Press(Press::Accept),
            Control::Press(Press::Decline(None)),
            Control::Press(Press::Decline(Some("Pas maintenant ☕ — plus tard".into()))),
            Control::Press(Press::Hangup(None)),
            Control::Press(Press::Hangup(Some("bye".into()))),
            Control::Press(Press::DoNotDisturb),
            Control::Press(Press::Bell),
            Control::Status,
            Control::FaultCamera,
        ];
        for control in all {
            let line = control.to_string();
            assert_eq!(Control::parse(&line), Ok(control), "{line:?}");
        }
        // The wire words stay what `peercam press` always sent.
        assert_eq!(
            Control::Press(Press::Decline(Some("Not now".into()))).to_string(),
            "decline Not now"
        );
        assert_eq!(Control::Press(Press::DoNotDisturb).to_string(), "dnd");
    }

    #[test]
    fn a_reason_with_control_characters_becomes_one_line() {
        assert_eq!(
            Control::parse("decline a\tb\u{7}"),
            Ok(Control::Press(Press::Decline(Some("a b".into()))))
        );
        assert_eq!(
            Control::parse("hangup \u{7}"),
            Ok(Control::Press(Press::Hangup(None)))
        );
    }

    #[test]
    fn a_reason_with_line_breaks_stays_one_line() {
        let line = Control::Press(Press::Decline(Some("a\nstatus".into()))).to_string();
        assert!(!line.contains('\n'));
        assert_eq!(
            Control::parse(&line),
            Ok(Control::Press(Press::Decline(Some("a status".into()))))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_line_parses_or_is_refused_and_what_prints_reads_back(line in proptest::prop_oneof![
            ".{0,80}",
            "(accept|decline|hangup|dnd|bell|status|fault)[ \t\u{7}\u{85}\u{2003}a-z]{0,20}",
        ]) {
            // Whatever a client sends, parsing answers; what parses prints as a line that
            // parses to the same request.
            if let Ok(control) = Control::parse(&line) {
                let printed = control.to_string();
                proptest::prop_assert!(!printed.contains('\n'));
                proptest::prop_assert_eq!(Control::parse(&printed), Ok(control));
            }
        }

        #[test]
        fn any_reason_survives_the_line(reason in "[^\\p{Cc}]{1,60}") {
            let reason = reason.trim().to_owned();
            proptest::prop_assume!(!reason.is_empty());
            // Reasons without control characters arrive as typed.
            let control = Control::Press(Press::Hangup(Some(reason)));
            proptest::prop_assert_eq!(Control::parse(&control.to_string()), Ok(control));
        }
    }

    #[test]
    fn keys_map_to_presses() {
        assert_eq!(Control::from_key(b'a'), Some(Control::Press(Press::Accept)));
        assert_eq!(
            Control::from_key(b'D'),
            Some(Control::Press(Press::Decline(None)))
        );
        assert_eq!(
            Control::from_key(b'h'),
            Some(Control::Press(Press::Hangup(None)))
        );
        assert_eq!(
            Control::from_key(b'n'),
            Some(Control::Press(Press::DoNotDisturb))
        );
        assert_eq!(Control::from_key(b'b'), Some(Control::Press(Press::Bell)));
        assert_eq!(Control::from_key(b'x'), None);
    }

    #[test]
    fn replies_are_ok_or_error_lines() {
        let ok: Reply = Ok("ended 2 call(s)".into());
        assert_eq!(reply_line(&ok), "ok ended 2 call(s)\n");
        let refused: Reply = Err(ControlError::NothingRinging);
        assert_eq!(reply_line(&refused), "error no call is ringing\n");
        assert_eq!(
            parse_reply("ok ended 2 call(s)\n"),
            Ok("ended 2 call(s)".into())
        );
        assert_eq!(parse_reply("ok\n"), Ok(String::new()));
        assert_eq!(
            parse_reply("error no call is ringing"),
            Err("no call is ringing".into())
        );
        assert!(parse_reply("what").is_err());
    }
}
