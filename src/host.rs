//! The machine's host name: the callee name when none is configured, and a name the
//! phonebook's self-signed certificate is made out to. On its own so that the settings
//! and TLS can both ask without either depending on the other.

use crate::signalling::protocol::validate_name;

/// The machine's host name, or "peercam" if it has none usable as a callee name.
pub fn host_name() -> String {
    usable_or_default(std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
}

fn usable_or_default(read: Option<String>) -> String {
    read.map(|s| s.trim().to_owned())
        .filter(|s| validate_name(s).is_ok())
        .unwrap_or_else(|| "peercam".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_name_is_kept_and_anything_else_falls_back() {
        assert_eq!(usable_or_default(Some("porch-cam\n".into())), "porch-cam");
        assert_eq!(usable_or_default(Some("bad/name\n".into())), "peercam");
        assert_eq!(usable_or_default(Some("\n".into())), "peercam");
        assert_eq!(usable_or_default(None), "peercam");
        assert!(validate_name(&host_name()).is_ok());
    }
}
