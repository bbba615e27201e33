//! Peer-provided text on its way into a log line.
//!
//! Caller names, agents and reasons come from whoever connects. Written raw, a newline
//! forges a second log line and escape sequences rewrite the operator's terminal; so
//! every such string is logged through [`for_log`], which escapes control characters and
//! shortens what is too long to be a name.

use std::fmt;

/// Characters of peer text kept in a log line; the rest becomes `…`.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Peer text, shown safely: see [`for_log`].
#[derive(Debug, Clone, Copy)]
pub struct ForLog<'a>(&'a str);

/// `text` for a log line: control characters (newlines, ESC, BEL, DEL, the C1 range)
/// and the Unicode line and bidi controls written as `\u{…}` escapes (`\n`, `\r` and `\t`
/// as themselves escaped), and at most [`MAX_LOGGED_CHARS`] characters.
pub fn for_log(text: &str) -> ForLog<'_> {
    ForLog(text)
}

/// The caller name in a call's metadata (`user`, else `callerName`, else `name`), for a
/// log line; `"someone"` when there is none.
pub fn caller_for_log(meta: &serde_json::Value) -> ForLog<'_> {
    let name = ["user", "callerName", "name"]
        .iter()
        .find_map(|key| meta.get(key).and_then(|v| v.as_str()))
        .unwrap_or("someone");
    ForLog(name)
}

/// Whether `c` must not reach a log as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        // Line and paragraph separators, and the bidi overrides that reorder what a
        // terminal shows.
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for ForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (shown, c) in self.0.chars().enumerate() {
            if shown == MAX_LOGGED_CHARS {
                return f.write_char('…');
            }
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let shown = for_log("Ray\nINFO forged line\x1b[31m\r\x07\u{7f}\u{9b}\u{202e}").to_string();
        assert_eq!(
            shown,
            "Ray\\nINFO forged line\\u{1b}[31m\\r\\u{7}\\u{7f}\\u{9b}\\u{202e}"
        );
        assert!(!shown.chars().any(needs_escape));
    }

    #[test]
    fn ordinary_names_are_unchanged_and_long_ones_cut() {
        assert_eq!(
            for_log("Zoë – front door ☕").to_string(),
            "Zoë – front door ☕"
        );
        // A backslash is escaped too, so an escape in the log is never the peer's text.
        assert_eq!(for_log(r"a\u{1b}").to_string(), r"a\\u{1b}");
        let long = "x".repeat(MAX_LOGGED_CHARS + 10);
        let shown = for_log(&long).to_string();
        assert_eq!(shown.chars().count(), MAX_LOGGED_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn the_caller_name_comes_from_the_metadata() {
        let meta = serde_json::json!({"callerName": "Ray\n"});
        assert_eq!(caller_for_log(&meta).to_string(), "Ray\\n");
        let meta = serde_json::json!({"user": "ray", "callerName": "Eve"});
        assert_eq!(caller_for_log(&meta).to_string(), "ray");
        assert_eq!(
            caller_for_log(&serde_json::json!({})).to_string(),
            "someone"
        );
    }
}
