//! The reports of the `peercam` commands that only look: `boards`, `devices`, `check` and
//! `call`. They read the settings and the media layer (or call a camera) and turn what they
//! find into text for a person; main.rs parses the command line and prints what these
//! return.

pub mod call;
pub mod check;
pub mod devices;

use crate::config::BOARDS;

/// `peercam boards`: each built-in board profile with its description, one a line.
pub fn boards() -> String {
    let mut out = String::new();
    for (name, text) in BOARDS {
        let description = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| {
                t.get("description")
                    .and_then(|d| d.as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        out.push_str(&format!("{name:12} {description}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_lists_every_built_in_profile_with_its_description() {
        let text = boards();
        assert_eq!(text.lines().count(), BOARDS.len(), "{text}");
        for (line, (name, _)) in text.lines().zip(BOARDS) {
            assert!(line.starts_with(&format!("{name:12} ")), "{line}");
            assert!(line.len() > 13, "{name} has no description: {line:?}");
        }
    }
}
