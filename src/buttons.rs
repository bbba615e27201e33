//! Every button of the device in one table: its pin, terminal key, control-socket word,
//! event name and meaning. The control socket, the terminal, `peercam press`, the GPIO
//! backends, the data-channel events and the help texts all read [`BUTTONS`], so a new
//! button is one row here (and what it does, in the device core).

use serde::{Deserialize, Serialize};

/// A press, by what it does; named on the wire (events, control words) by its row's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    /// Answers the incoming call that rang first.
    Accept,
    /// Declines it (a short press of the decline button).
    Decline,
    /// Do not disturb on/off (the decline button held).
    Dnd,
    /// Ends every call.
    Hangup,
    /// The visitor's bell: rings the household.
    Bell,
}

/// How long a pin's button is held for a press to mean its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// However long.
    Any,
    /// Released before the long-press time.
    Short,
    /// Held at least the long-press time.
    Long,
}

/// One button: everything the rest of the daemon needs to know of it.
#[derive(Debug, Clone, Copy)]
pub struct ButtonRow {
    /// What it does.
    pub button: Button,
    /// The `[gpio]` key of its pin, and how long that pin's button is held for this press.
    pub pin: (&'static str, Hold),
    /// Its key on the daemon's terminal.
    pub key: u8,
    /// Its word on the control socket and in `peercam press`, and its name in events.
    pub word: &'static str,
    /// Whether the word may be followed by a reason for the caller.
    pub takes_reason: bool,
    /// What it does, for help texts.
    pub meaning: &'static str,
}

/// Every button.
pub const BUTTONS: &[ButtonRow] = &[
    ButtonRow {
        button: Button::Accept,
        pin: ("accept", Hold::Any),
        key: b'a',
        word: "accept",
        takes_reason: false,
        meaning: "answer the call that rang first",
    },
    ButtonRow {
        button: Button::Decline,
        pin: ("decline", Hold::Short),
        key: b'd',
        word: "decline",
        takes_reason: true,
        meaning: "decline the call that rang first, with the board's reason or the one given",
    },
    ButtonRow {
        button: Button::Dnd,
        pin: ("decline", Hold::Long),
        key: b'n',
        word: "dnd",
        takes_reason: false,
        meaning: "do not disturb on/off (the decline button held)",
    },
    ButtonRow {
        button: Button::Hangup,
        pin: ("hangup", Hold::Any),
        key: b'h',
        word: "hangup",
        takes_reason: true,
        meaning: "end every call",
    },
    ButtonRow {
        button: Button::Bell,
        pin: ("bell", Hold::Any),
        key: b'b',
        word: "bell",
        takes_reason: false,
        meaning: "the visitor's bell: ring the household's phones",
    },
];

impl Button {
    /// Its row of [`BUTTONS`].
    pub fn row(self) -> &'static ButtonRow {
        BUTTONS
            .iter()
            .find(|row| row.button == self)
            .expect("every button has a row")
    }

    /// Its word on the control socket and in events.
    pub fn word(self) -> &'static str {
        self.row().word
    }

    /// The button a control word names.
    pub fn from_word(word: &str) -> Option<Button> {
        BUTTONS.iter().find(|r| r.word == word).map(|r| r.button)
    }

    /// The button a terminal key stands for (either case).
    pub fn from_key(key: u8) -> Option<Button> {
        let key = key.to_ascii_lowercase();
        BUTTONS.iter().find(|r| r.key == key).map(|r| r.button)
    }

    /// The button a press of the one on `pin` stands for, held `long` or not.
    pub fn on_pin(pin: &str, long: bool) -> Option<Button> {
        let held = |hold: Hold| match hold {
            Hold::Any => true,
            Hold::Short => !long,
            Hold::Long => long,
        };
        BUTTONS
            .iter()
            .find(|r| r.pin.0 == pin && held(r.pin.1))
            .map(|r| r.button)
    }
}

/// The `[gpio]` keys of the buttons' pins, each once, in the table's order.
pub fn button_pins() -> Vec<&'static str> {
    let mut pins: Vec<&'static str> = Vec::new();
    for row in BUTTONS {
        if !pins.contains(&row.pin.0) {
            pins.push(row.pin.0);
        }
    }
    pins
}

/// `peercam press WORD` takes the table's words, with their meanings as help.
impl clap::ValueEnum for Button {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Button::Accept,
            Button::Decline,
            Button::Dnd,
            Button::Hangup,
            Button::Bell,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let row = self.row();
        Some(clap::builder::PossibleValue::new(row.word).help(row.meaning))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn every_button_has_one_row_and_names_agree() {
        for button in Button::value_variants() {
            let rows = BUTTONS.iter().filter(|r| r.button == *button).count();
            assert_eq!(rows, 1, "{button:?}");
            // The event name (serde) is the control word.
            assert_eq!(
                serde_json::to_value(button).unwrap(),
                serde_json::json!(button.word())
            );
            assert_eq!(Button::from_word(button.word()), Some(*button));
            assert_eq!(Button::from_key(button.row().key), Some(*button));
        }
        assert_eq!(BUTTONS.len(), Button::value_variants().len());
        let keys: std::collections::BTreeSet<u8> = BUTTONS.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), BUTTONS.len(), "one key per button");
    }

    #[test]
    fn pins_map_to_presses_by_how_long_they_are_held() {
        assert_eq!(Button::on_pin("decline", false), Some(Button::Decline));
        assert_eq!(Button::on_pin("decline", true), Some(Button::Dnd));
        assert_eq!(Button::on_pin("accept", true), Some(Button::Accept));
        assert_eq!(Button::on_pin("bell", false), Some(Button::Bell));
        assert_eq!(Button::on_pin("door", false), None);
        assert_eq!(
            button_pins(),
            ["accept", "decline", "hangup", "bell"].to_vec()
        );
    }
}
