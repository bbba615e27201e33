//! The `peercam` command: parse the command line, load the settings, run until a signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use peercam::config::{AnswerPolicy, Settings};
use peercam::control::{Control, Press};
use peercam::gpio::simulated;
use peercam::{app, cli, media};
use tokio_util::sync::CancellationToken;

/// The site config read when `--config` is not given, if it exists.
const SITE_CONFIG: &str = "/etc/peercam/peercam.toml";

#[derive(Parser)]
#[command(version, about = "A WebRTC camera peer for single-board computers")]
struct Cli {
    /// Log lines as readable text (the journal shows them as they are) or as JSON objects.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the camera daemon (with an embedded phonebook unless --phonebook is given).
    Run(RunArgs),
    /// Run a standalone phonebook that cameras register on.
    Phonebook {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Press a simulated button of a running daemon.
    Press {
        /// Which button.
        button: peercam::buttons::Button,
        /// The reason given to the caller (decline, hangup).
        #[arg(long)]
        reason: Option<String>,
        /// The daemon's control socket.
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Print a running daemon's status as JSON.
    Status {
        /// The daemon's control socket.
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// List the built-in board profiles.
    Boards,
    /// List the cameras, codecs and encoders here, and what the board would use.
    Devices {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Run the board's camera pipeline for a few seconds and report what it produces.
    Check {
        #[command(flatten)]
        settings: SettingsArgs,
        /// How long to run the pipeline.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Call a camera the way a page does and report what arrives (for checking a camera
    /// across a network without a browser).
    Call {
        /// The callee to call.
        callee: String,
        /// The phonebook's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        phonebook: String,
        /// The caller name the device shows.
        #[arg(long, default_value = "peercam call")]
        name: String,
        /// A user token or passphrase, for a phonebook that asks for one.
        #[arg(long)]
        token: Option<String>,
        /// Seconds to wait for someone to answer.
        #[arg(long, default_value_t = 60)]
        answer_timeout: u64,
        /// Seconds to watch once the video arrives.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Also receive the camera's sound.
        #[arg(long)]
        audio: bool,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(clap::Args)]
struct SettingsArgs {
    /// Board profile: a built-in name (see `peercam boards`) or a .toml file
    /// [default: the config file's `board`, else dev].
    #[arg(long)]
    board: Option<String>,
    /// Site config overriding the board profile (default: /etc/peercam/peercam.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set video.width=640 --set 'ice.interfaces=["lo"]'.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Callee name in the phonebook (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Address of the embedded phonebook.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Register on this phonebook (ws://HOST:PORT/ws) instead of embedding one.
    #[arg(long)]
    phonebook: Option<String>,
    /// The control socket for `peercam press`.
    #[arg(long)]
    control: Option<PathBuf>,
    /// How calls are answered.
    #[arg(long)]
    answer: Option<AnswerPolicy>,
    /// Do not read keys from the terminal.
    #[arg(long)]
    no_terminal: bool,
}

/// Malloc arenas the daemon uses unless `MALLOC_ARENA_MAX` says otherwise.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas before any thread starts. glibc gives busy threads arenas of
/// their own (up to eight per core) and keeps what they free there in pieces: with every
/// call's webrtc-rs and GStreamer threads, resident memory creeps up over many calls
/// (tests/faults.rs soak) well above the live heap (tools/heap). Set here rather than in
/// the systemd unit, so the daemon behaves the same however it is started.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before any other
        // thread exists, so nothing allocates concurrently.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("info,{}", peercam::rtc::LOG_DIRECTIVES).into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            // Under systemd the journal stamps each line itself.
            let journal = std::env::var_os("JOURNAL_STREAM").is_some();
            let logs = logs.with_ansi(terminal);
            if journal {
                logs.without_time().init()
            } else {
                logs.init()
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("peercam: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("peercam: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let mut overrides = parse_overrides(&args.settings.set)?;
            let device = table_mut(&mut overrides, "device");
            if let Some(name) = args.name {
                device.insert("name".into(), name.into());
            }
            if let Some(listen) = args.listen {
                device.insert("listen".into(), listen.to_string().into());
            }
            if let Some(url) = args.phonebook {
                device.insert("phonebook".into(), url.into());
            }
            if let Some(control) = args.control {
                device.insert("control".into(), control.display().to_string().into());
            }
            if let Some(answer) = args.answer {
                let value = match answer {
                    AnswerPolicy::Auto => "auto",
                    AnswerPolicy::Buttons => "buttons",
                };
                table_mut(&mut overrides, "call").insert("answer".into(), value.into());
            }
            let settings = load(&args.settings, overrides)?;
            let shutdown = shutdown_on_signal();
            app::run(
                settings,
                app::RunOptions {
                    terminal: !args.no_terminal,
                },
                shutdown,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Phonebook { listen, settings } => {
            let overrides = parse_overrides(&settings.set)?;
            let settings = load(&settings, overrides)?;
            app::run_phonebook(listen, &settings, shutdown_on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Press {
            button,
            reason,
            control,
        } => {
            if reason.is_some() && !button.row().takes_reason {
                eprintln!("peercam: {} takes no --reason", button.word());
                return Ok(ExitCode::FAILURE);
            }
            control_command(control, Control::Press(Press::new(button, reason))).await
        }
        Command::Status { control } => control_command(control, Control::Status).await,
        Command::Boards => {
            print!("{}", cli::boards());
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices { settings } => {
            let overrides = parse_overrides(&settings.set)?;
            let settings = load(&settings, overrides)?;
            media::init()?;
            let report =
                tokio::task::spawn_blocking(move || cli::devices::report(&settings)).await?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            callee,
            phonebook,
            name,
            token,
            answer_timeout,
            seconds,
            audio,
            json,
            settings,
        } => {
            let overrides = parse_overrides(&settings.set)?;
            let settings = load(&settings, overrides)?;
            let report = peercam::cli::call::run(peercam::cli::call::CallRequest {
                phonebook,
                callee,
                caller_name: name,
                token,
                answer_timeout: Duration::from_secs(answer_timeout.clamp(1, 3600)),
                watch: Duration::from_secs(seconds.clamp(1, 3600)),
                audio,
                ice: settings.ice,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", peercam::cli::call::table(&report));
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check {
            settings,
            seconds,
            json,
        } => {
            let loaded = parse_overrides(&settings.set).and_then(|o| load(&settings, o));
            let settings = match loaded {
                Ok(settings) => settings,
                Err(err) if json => {
                    let report = cli::check::not_loaded(settings.board.as_deref(), &err);
                    println!("{}", serde_json::to_string(&report)?);
                    return Ok(ExitCode::FAILURE);
                }
                Err(err) => return Err(err),
            };
            let duration = Duration::from_secs(seconds.clamp(1, 600));
            let report =
                tokio::task::spawn_blocking(move || cli::check::run(&settings, duration)).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", cli::check::table(&report));
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn control_command(path: Option<PathBuf>, control: Control) -> anyhow::Result<ExitCode> {
    let path = app::control_path(path);
    match simulated::send_control(&path, &control.to_string()).await? {
        Ok(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(text) => {
            eprintln!("peercam: {text}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load(args: &SettingsArgs, overrides: toml::Table) -> anyhow::Result<Settings> {
    let site = args.config.clone().or_else(|| {
        Path::new(SITE_CONFIG)
            .exists()
            .then(|| PathBuf::from(SITE_CONFIG))
    });
    Ok(Settings::load_for(
        args.board.as_deref(),
        site.as_deref(),
        overrides,
    )?)
}

/// Turns `--set a.b=value` pairs into a table; values are TOML (`640`, `true`,
/// `["lo"]`), anything else is taken as a string.
fn parse_overrides(pairs: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for pair in pairs {
        let (key, raw) = pair
            .split_once('=')
            .with_context(|| format!("--set {pair:?}: expected KEY=VALUE"))?;
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        let mut path: Vec<&str> = key.trim().split('.').collect();
        let last = path
            .pop()
            .filter(|k| !k.is_empty())
            .with_context(|| format!("--set {pair:?}: empty key"))?;
        let mut node = &mut table;
        for part in path {
            node = table_mut(node, part);
        }
        node.insert(last.to_owned(), value);
    }
    Ok(table)
}

fn table_mut<'a>(table: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let entry = table
        .entry(key.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    entry.as_table_mut().expect("made a table above")
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        trigger.cancel();
    });
    token
}
