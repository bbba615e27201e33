//! The buttons a person at the device presses, and how their presses reach the daemon.
//!
//! Every backend turns presses into [`Command`]s on one channel, so the daemon does not
//! know whether a press came from a GPIO pin, a terminal key or the control socket.
//! This machine has no pins: the [`simulated`] backend (terminal keys and a Unix control
//! socket used by `peercam press`) is the one here.

pub mod simulated;

use tokio::sync::oneshot;

/// A button press.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Press {
    /// Accept the oldest ringing call.
    Accept,
    /// Decline the oldest ringing call, with this reason or the board's.
    Decline(Option<String>),
    /// End every call, with this reason or a default.
    Hangup(Option<String>),
}

/// A request to the daemon, with where its one-line reply goes.
#[derive(Debug)]
pub struct Command {
    /// What is asked.
    pub kind: CommandKind,
    /// Gets `Ok(text)` or `Err(text)`.
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// What a command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    /// A button press.
    Press(Press),
    /// The daemon's status as one JSON line.
    Status,
}

impl CommandKind {
    /// Parses one line of the control protocol: `accept`, `decline [reason]`,
    /// `hangup [reason]` or `status`.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let reason = (!rest.is_empty()).then(|| rest.to_owned());
        match word {
            "accept" if reason.is_none() => Ok(CommandKind::Press(Press::Accept)),
            "decline" => Ok(CommandKind::Press(Press::Decline(reason))),
            "hangup" => Ok(CommandKind::Press(Press::Hangup(reason))),
            "status" if reason.is_none() => Ok(CommandKind::Status),
            _ => Err(format!(
                "unknown command {line:?}: use accept, decline [reason], hangup [reason] or status"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_parse() {
        assert_eq!(
            CommandKind::parse("accept\n"),
            Ok(CommandKind::Press(Press::Accept))
        );
        assert_eq!(
            CommandKind::parse("decline Not now"),
            Ok(CommandKind::Press(Press::Decline(Some("Not now".into()))))
        );
        assert_eq!(
            CommandKind::parse("decline"),
            Ok(CommandKind::Press(Press::Decline(None)))
        );
        assert!(CommandKind::parse("accept twice").is_err());
        assert!(CommandKind::parse("launch").is_err());
    }
}
