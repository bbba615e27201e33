//! Settings: the board profile, then the site config, then the command line, merged
//! key by key and validated into [`Settings`].
//!
//! Board profiles live in `boards/*.toml` and are compiled into the binary, so
//! `--board dev` works with no files installed; `--board ./my-board.toml` reads a file.
//! Keys nobody knows are reported (a typo should not silently do nothing).
//!
//! The sections are the settings types of the modules they configure (the video ones
//! live in [`crate::media::settings`], TLS in [`crate::tls`] …): this module layers and
//! validates them, and nothing below it names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::gpio::settings::{GpioBackend, GpioSettings};
use crate::host::host_name;
use crate::media::settings::{VideoSettings, VideoSettingsError};
use crate::signalling::protocol::{IceServer, validate_name};

/// The board profiles built into the binary.
pub const BOARDS: &[(&str, &str)] = &[
    ("dev", include_str!("../boards/dev.toml")),
    ("rpi-zero2w", include_str!("../boards/rpi-zero2w.toml")),
    ("rpi3", include_str!("../boards/rpi3.toml")),
    ("rpi4", include_str!("../boards/rpi4.toml")),
    ("rpi5", include_str!("../boards/rpi5.toml")),
    ("usb-webcam", include_str!("../boards/usb-webcam.toml")),
];

/// Everything the daemon needs to know, after merging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The board profile's name (or file path) these settings came from.
    #[serde(skip)]
    pub board: String,
    /// What the board profile says it is for.
    #[serde(default)]
    pub description: String,
    /// Who the device is and where it meets callers.
    #[serde(default)]
    pub device: DeviceSettings,
    /// Camera and encoder.
    pub video: VideoSettings,
    /// How calls are answered.
    #[serde(default)]
    pub call: CallSettings,
    /// How WebRTC finds a path.
    #[serde(default)]
    pub ice: IceSettings,
    /// Buttons and lights.
    #[serde(default)]
    pub gpio: GpioSettings,
    /// Microphone and speaker.
    #[serde(default)]
    pub audio: crate::media::audio::AudioSettings,
    /// Who may register, list and call on the phonebook this daemon serves.
    #[serde(default)]
    pub access: crate::signalling::access::AccessSettings,
    /// What one client may ask of that phonebook.
    #[serde(default)]
    pub limits: crate::signalling::limits::Limits,
    /// HTTPS for that phonebook.
    #[serde(default)]
    pub tls: crate::tls::TlsSettings,
    /// Registration on a stock PeerJS server as well.
    #[serde(default)]
    pub peerjs: PeerJsSettings,
    /// The visitor's bell: whom a press rings.
    #[serde(default)]
    pub bell: BellSettings,
}

/// The visitor's bell (`[bell]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BellSettings {
    /// The household's callee names a press rings, those online at the time; empty: the
    /// device has no bell.
    pub ring: Vec<String>,
    /// How long the phones ring before the press is missed.
    pub ring_timeout_secs: u64,
    /// How long the door output is driven when whoever answered opens the door.
    pub door_open_secs: u64,
}

impl Default for BellSettings {
    fn default() -> Self {
        BellSettings {
            ring: Vec::new(),
            ring_timeout_secs: 30,
            door_open_secs: 3,
        }
    }
}

/// Where the device also registers as a PeerJS peer, so stock `peerjs` clients can call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerJsSettings {
    /// The PeerJS server, e.g. `http://127.0.0.1:9000/` (its `--path` included); unset
    /// leaves PeerJS off.
    pub server: Option<String>,
    /// The server's API key (`peerjs` unless the server was started with `--key`).
    pub key: String,
    /// The peer id to take; the callee name when unset.
    pub id: Option<String>,
}

impl Default for PeerJsSettings {
    fn default() -> Self {
        PeerJsSettings {
            server: None,
            key: "peerjs".into(),
            id: None,
        }
    }
}

impl PeerJsSettings {
    /// The peer id the device takes on the PeerJS server.
    pub fn peer_id(&self, callee_name: &str) -> String {
        self.id.clone().unwrap_or_else(|| callee_name.to_owned())
    }
}

/// Identity and addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSettings {
    /// Callee name in the phonebook; the host name when not set.
    pub name: Option<String>,
    /// Where the embedded phonebook listens (ignored with `phonebook`).
    pub listen: SocketAddr,
    /// A remote phonebook's WebSocket URL; when set, no phonebook is embedded.
    pub phonebook: Option<String>,
    /// The control socket of the simulated buttons.
    pub control: Option<PathBuf>,
    /// The phonebook's certificate (PEM) to trust, pinned, when it is self-signed; unset:
    /// the public CAs.
    pub phonebook_cert: Option<PathBuf>,
    /// The device token the phonebook knows this callee name by (`[access.devices]` on
    /// the phonebook); sent in `hello`.
    pub token: Option<crate::signalling::protocol::Secret>,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            phonebook: None,
            control: None,
            phonebook_cert: None,
            token: None,
        }
    }
}

/// How an incoming call is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AnswerPolicy {
    /// A person presses accept or decline.
    Buttons,
    /// Every call is accepted at once.
    Auto,
}

/// Call handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallSettings {
    /// How calls are answered.
    pub answer: AnswerPolicy,
    /// Caller names (`callerName` in the caller's metadata) accepted without ringing.
    pub allow: Vec<String>,
    /// A call nobody answers is declined with "no answer" after this long.
    pub ring_timeout_secs: u64,
    /// The reason sent when the decline button is pressed.
    pub decline_reason: String,
    /// The reason sent while the device is set to do not disturb.
    pub dnd_reason: String,
    /// Calls at once, ringing or watching; more are declined as "busy".
    pub max_viewers: usize,
    /// Seconds the camera keeps running after the last viewer left.
    pub idle_stop_secs: u64,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            answer: AnswerPolicy::Buttons,
            allow: Vec::new(),
            ring_timeout_secs: 30,
            decline_reason: "Not now".into(),
            dnd_reason: "Do not disturb".into(),
            max_viewers: 4,
            idle_stop_secs: 5,
        }
    }
}

impl CallSettings {
    /// The ring timeout as a duration.
    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.ring_timeout_secs)
    }
}

/// ICE: servers and which local interfaces to offer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceSettings {
    /// STUN/TURN servers, handed to the device and to the pages.
    pub servers: Vec<IceServer>,
    /// Only gather candidates on these interfaces (all when empty).
    pub interfaces: Vec<String>,
    /// Also offer loopback candidates (for a browser on the same machine).
    pub loopback: bool,
}

/// Why the settings could not be loaded; each says which file or key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The site config file could not be read.
    #[error("cannot read the config file {}: {error}", path.display())]
    ReadSite {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The site config file is not TOML.
    #[error("{} is not valid TOML: {error}", path.display())]
    ParseSite {
        /// The file.
        path: PathBuf,
        /// Where and why.
        error: toml::de::Error,
    },
    /// The site config's `board` key is not a string.
    #[error("board in the config file must be a string, not {0}")]
    BoardKey(String),
    /// No built-in board has this name and it is no path.
    #[error("unknown board {board:?}; built-in boards: {known} (or give a path to a .toml file)")]
    UnknownBoard {
        /// The name given.
        board: String,
        /// The built-in names, comma-separated.
        known: String,
    },
    /// The board file could not be read.
    #[error("cannot read the board file {board}: {error}")]
    ReadBoard {
        /// The path given.
        board: String,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The board profile is not TOML.
    #[error("the board profile {board} is not valid TOML: {error}")]
    ParseBoard {
        /// The board's name or path.
        board: String,
        /// Where and why.
        error: toml::de::Error,
    },
    /// The merged layers do not make settings: an unknown key, a value of the wrong type.
    #[error("invalid settings: {0}")]
    Invalid(toml::de::Error),
    /// The callee name (configured or the host name) is not a phonebook name.
    #[error("the callee name {name:?} cannot be used ({why}); set one with --name")]
    CalleeName {
        /// The name.
        name: String,
        /// What the phonebook's rules say.
        why: String,
    },
    /// The `[video]` section.
    #[error(transparent)]
    Video(#[from] VideoSettingsError),
    /// `call.max_viewers` out of range.
    #[error("call.max_viewers must be between 1 and 64")]
    MaxViewers,
    /// A GPIO backend with no button to read.
    #[error(
        "gpio.backend is set but no button has a pin (gpio.accept, gpio.decline, gpio.hangup or gpio.bell)"
    )]
    GpioWithoutButtons,
    /// A `[gpio]` key that names no pin.
    #[error("{0}")]
    Gpio(String),
    /// `device.phonebook` is no WebSocket URL.
    #[error("the phonebook URL {0:?} must start with ws:// or wss://")]
    PhonebookUrl(String),
    /// `peerjs.server` is no HTTP or WebSocket URL.
    #[error("peerjs.server {0:?} must start with http://, https://, ws:// or wss://")]
    PeerJsUrl(String),
    /// The PeerJS id (configured or the callee name) is not one PeerJS takes.
    #[error(
        "{0:?} is not a PeerJS id (letters and digits, single spaces, '-' or '_' between them); set peerjs.id"
    )]
    PeerJsId(String),
    /// The `[access]` section.
    #[error("access: {0}")]
    Access(String),
    /// The `[bell]` section.
    #[error("bell.ring: {0}")]
    Bell(String),
    /// Auto-answer for anyone who can reach the phonebook.
    #[error(
        "answer = \"auto\" with access.callers = \"open\" would let anyone on the network watch this camera: \
         set access.callers to \"passphrase\" or \"users\", or listen on 127.0.0.1 only"
    )]
    OpenAutoAnswer,
}

impl Settings {
    /// Merges the board profile `board` (a built-in name or a file), the optional site
    /// config file and the command-line overrides, in that order.
    pub fn load(
        board: &str,
        site: Option<&Path>,
        overrides: toml::Table,
    ) -> Result<Settings, ConfigError> {
        Settings::load_for(Some(board), site, overrides)
    }

    /// Like [`Settings::load`], where the board comes from `board` if given, else from
    /// the site config's top-level `board = "…"` key, else is `dev`: the way a service
    /// picks its board in /etc/peercam/peercam.toml.
    pub fn load_for(
        board: Option<&str>,
        site: Option<&Path>,
        overrides: toml::Table,
    ) -> Result<Settings, ConfigError> {
        let mut site_table = match site {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|error| ConfigError::ReadSite {
                        path: path.to_owned(),
                        error,
                    })?;
                toml::from_str::<toml::Table>(&text).map_err(|error| ConfigError::ParseSite {
                    path: path.to_owned(),
                    error,
                })?
            }
            None => toml::Table::new(),
        };
        let site_board = match site_table.remove("board") {
            Some(toml::Value::String(name)) => Some(name),
            Some(other) => return Err(ConfigError::BoardKey(other.to_string())),
            None => None,
        };
        let board = board
            .map(str::to_owned)
            .or(site_board)
            .unwrap_or_else(|| "dev".into());
        let mut merged = read_board(&board)?;
        merge(&mut merged, site_table);
        merge(&mut merged, overrides);
        let mut settings: Settings = toml::Value::Table(merged)
            .try_into()
            .map_err(ConfigError::Invalid)?;
        settings.board = board;
        settings.validate()?;
        Ok(settings)
    }

    /// The callee name: the configured one, else the host name.
    pub fn name(&self) -> String {
        self.device.name.clone().unwrap_or_else(host_name)
    }

    /// How long the camera lingers after the last viewer.
    pub fn idle_stop(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.call.idle_stop_secs))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let name = self.name();
        if let Err(why) = validate_name(&name) {
            return Err(ConfigError::CalleeName { name, why });
        }
        self.video.validate()?;
        if !(1..=64).contains(&self.call.max_viewers) {
            return Err(ConfigError::MaxViewers);
        }
        crate::gpio::validate_pins(&self.gpio).map_err(ConfigError::Gpio)?;
        if self.gpio.backend != GpioBackend::None && crate::gpio::buttons(&self.gpio).is_empty() {
            return Err(ConfigError::GpioWithoutButtons);
        }
        if let Some(url) = &self.device.phonebook
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return Err(ConfigError::PhonebookUrl(url.clone()));
        }
        if let Some(url) = &self.peerjs.server {
            if !["http://", "https://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                return Err(ConfigError::PeerJsUrl(url.clone()));
            }
            let id = self.peerjs.peer_id(&name);
            if !crate::signalling::peerjs::valid_peer_id(&id) {
                return Err(ConfigError::PeerJsId(id));
            }
        }
        self.access.validate().map_err(ConfigError::Access)?;
        self.validate_bell(&name)?;
        if self.call.answer == AnswerPolicy::Auto
            && self.device.phonebook.is_none()
            && self.access.callers == crate::signalling::access::CallerMode::Open
            && !self.device.listen.ip().is_loopback()
        {
            return Err(ConfigError::OpenAutoAnswer);
        }
        Ok(())
    }
}

impl Settings {
    fn validate_bell(&self, own_name: &str) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.bell.ring {
            validate_name(name).map_err(|why| ConfigError::Bell(format!("{name:?}: {why}")))?;
            let key = crate::signalling::protocol::name_key(name);
            if key == crate::signalling::protocol::name_key(own_name) {
                return Err(ConfigError::Bell(format!(
                    "{name:?} is this device's own name"
                )));
            }
            if !seen.insert(key) {
                return Err(ConfigError::Bell(format!("{name:?} is named twice")));
            }
        }
        Ok(())
    }
}

fn read_board(board: &str) -> Result<toml::Table, ConfigError> {
    let text = match BOARDS.iter().find(|(name, _)| *name == board) {
        Some((_, text)) => text.to_string(),
        None if board.ends_with(".toml") || board.contains('/') => {
            std::fs::read_to_string(board).map_err(|error| ConfigError::ReadBoard {
                board: board.to_owned(),
                error,
            })?
        }
        None => {
            return Err(ConfigError::UnknownBoard {
                board: board.to_owned(),
                known: BOARDS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    toml::from_str(&text).map_err(|error| ConfigError::ParseBoard {
        board: board.to_owned(),
        error,
    })
}

/// Overlays `top` on `base`, table by table, so a site config can change one key of a
/// section without repeating the others.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => merge(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::settings::Bias;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn dev_board_loads_with_defaults() {
        let s = Settings::load("dev", None, toml::Table::new()).unwrap();
        assert_eq!(
            (s.video.width, s.video.height, s.video.fps),
            (1280, 720, 30)
        );
        assert_eq!(s.video.encoder, "x264enc");
        assert_eq!(s.call.answer, AnswerPolicy::Buttons);
        assert_eq!(s.device.listen.port(), 8080);
    }

    #[test]
    fn later_layers_override_single_keys() {
        let s = Settings::load(
            "dev",
            None,
            table("[video]\nwidth = 640\n[call]\nanswer = \"auto\"\n[device]\nname = \"porch\""),
        )
        .unwrap();
        assert_eq!(s.video.width, 640);
        assert_eq!(s.video.height, 720);
        assert_eq!(s.call.answer, AnswerPolicy::Auto);
        assert_eq!(s.name(), "porch");
    }

    #[test]
    fn the_site_config_picks_the_board_unless_the_command_line_does() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("peercam.toml");
        std::fs::write(&site, "board = \"rpi4\"\n[call]\nring_timeout_secs = 9\n").unwrap();
        let s = Settings::load_for(None, Some(&site), toml::Table::new()).unwrap();
        assert_eq!(s.board, "rpi4");
        assert_eq!(s.call.ring_timeout_secs, 9);
        let s = Settings::load_for(Some("dev"), Some(&site), toml::Table::new()).unwrap();
        assert_eq!(s.board, "dev");
        let s = Settings::load_for(None, None, toml::Table::new()).unwrap();
        assert_eq!(s.board, "dev");
    }

    #[test]
    fn gpio_pins_parse_with_defaults() {
        let s = Settings::load(
            "dev",
            None,
            table(
                "[gpio]\nbackend = \"cdev\"\naccept = { line = 17, active_low = true }\nring_led = { line = 27 }",
            ),
        )
        .unwrap();
        let accept = s.gpio.pin("accept").unwrap();
        assert_eq!(
            (accept.line, accept.active_low, accept.bias),
            (17, true, Bias::PullUp)
        );
        assert_eq!(s.gpio.long_press_ms, 1500);
        assert!(s.gpio.pin("decline").is_none());
        let err = Settings::load("dev", None, table("[gpio]\nacept = { line = 17 }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key gpio.acept"), "{err}");
    }

    #[test]
    fn the_bell_names_whom_it_rings_once_each() {
        let s = Settings::load("dev", None, table("[bell]\nring = [\"ray\", \"ada\"]")).unwrap();
        assert_eq!(s.bell.ring, ["ray", "ada"]);
        assert_eq!((s.bell.ring_timeout_secs, s.bell.door_open_secs), (30, 3));
        for (ring, says) in [
            ("[\"ray\", \"Ray\"]", "named twice"),
            ("[\"a/b\"]", "\"a/b\""),
            ("[\"porch\"]", "own name"),
        ] {
            let err = Settings::load(
                "dev",
                None,
                table(&format!(
                    "[device]\nname = \"porch\"\n[bell]\nring = {ring}"
                )),
            )
            .unwrap_err();
            assert!(matches!(err, ConfigError::Bell(_)), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_say_where() {
        let err = Settings::load("dev", None, table("[video]\nwdith = 640"))
            .unwrap_err()
            .to_string();
        assert!(format!("{err:#}").contains("invalid settings"), "{err}");
        let err = format!(
            "{:#}",
            Settings::load("dev", None, table("[video]\nencoder = \"nope\"")).unwrap_err()
        );
        assert!(err.contains("unknown encoder"), "{err}");
        let err = Settings::load("moon", None, toml::Table::new()).unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownBoard { board, .. } if board == "moon"));
        assert!(err.to_string().contains("built-in boards: dev"), "{err}");
    }

    #[test]
    fn errors_are_matchable_and_name_the_file_or_key() {
        let err = Settings::load("dev", None, table("[video]\nfps = 0")).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Video(VideoSettingsError::Size { fps: 0, .. })
            ),
            "{err}"
        );
        let err = Settings::load("dev", None, table("[call]\nmax_viewers = 0")).unwrap_err();
        assert!(matches!(err, ConfigError::MaxViewers), "{err}");
        let err = Settings::load("dev", None, table("[device]\nname = \"a/b\"")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::CalleeName { name, .. } if name == "a/b"),
            "{err}"
        );
        assert!(err.to_string().ends_with("; set one with --name"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let err = Settings::load_for(None, Some(&missing), toml::Table::new()).unwrap_err();
        assert!(matches!(err, ConfigError::ReadSite { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "cannot read the config file {}: ",
                missing.display()
            )),
            "{err}"
        );
        std::fs::write(&missing, "board = 7\n").unwrap();
        let err = Settings::load_for(None, Some(&missing), toml::Table::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "board in the config file must be a string, not 7"
        );
        let err =
            Settings::load(&missing.display().to_string(), None, toml::Table::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    }
}
