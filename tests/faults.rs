//! Faults caused for real, not simulated: a network link cut mid-call (network
//! namespaces and a veth pair), a caller and a camera that can only meet through a TURN
//! relay (Debian's coturn, with a static user and with time-limited REST credentials),
//! SIGTERM with several callers, and a soak of 220 calls after which memory, file
//! descriptors and threads must come back to where they were, within stated margins.
//!
//! The network tests need root (`ip netns`, veth pairs, coturn in a namespace), so they
//! are marked ignored: a plain `cargo test` lists them as ignored (skipped, with the
//! reason), and `tools/test` adds `--include-ignored` when it runs as root, as CI does.
//! Run by hand without root, they fail saying so rather than pass.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, caller_engine, decode};
use peercam::config::IceSettings;
use peercam::media::Codec;
use peercam::rtc::{Caller, CallerEvent, RtcEngine};
use serde_json::{Value, json};
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

const WAIT: Duration = Duration::from_secs(10);

/// How long a connection may stay silent before both ends must have given up on it. The
/// ICE timeouts in src/rtc/engine.rs say 3 s + 5 s; the rest is slack for a loaded machine.
const LOSS_BOUND: Duration = Duration::from_secs(15);

/// The tests here take turns. Each runs real daemons against wall-clock bounds (ICE's
/// timeouts, a soak's margins); run side by side on a 2-core machine they starve each
/// other, and a call that waits its 10 s for ICE to connect becomes a flake.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why the network tests are ignored unless asked for (`--include-ignored`).
const NEEDS_ROOT: &str = "builds network namespaces, which needs root";

/// Fails the test at once when it cannot build network namespaces.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test {NEEDS_ROOT}: run it as root (tools/test does when it runs as root)"
    );
}

/// Runs `ip args…`, panicking with its error output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` (iproute2) is installed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces and veth pairs made for one test, removed when it drops, also when
/// the test panics. Names carry the test process's pid, so concurrent runs do not collide
/// and leftovers of a killed run can be recognised and removed.
struct Lab {
    tag: String,
    seq: u32,
    namespaces: Vec<String>,
    root_links: Vec<String>,
    links: usize,
}

const LAB_PREFIX: &str = "pcf";

impl Lab {
    fn new() -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        Lab {
            tag: format!("{LAB_PREFIX}{}x{seq}", std::process::id()),
            seq,
            namespaces: Vec::new(),
            root_links: Vec::new(),
            links: 0,
        }
    }

    /// A new namespace with its loopback up.
    fn namespace(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.tag);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair between `a` and `b` (`None`: this test's own namespace) with the
    /// addresses given (CIDR), both ends up. Returns the two interface names.
    fn veth(
        &mut self,
        a: Option<&str>,
        a_addr: &str,
        b: Option<&str>,
        b_addr: &str,
    ) -> (String, String) {
        // Interface names have at most 15 bytes: pcf + pid + x + n + letter fits.
        let ends = [
            format!("{}{}", self.tag, (b'a' + 2 * self.links as u8) as char),
            format!("{}{}", self.tag, (b'b' + 2 * self.links as u8) as char),
        ];
        self.links += 1;
        let mut add = vec!["link", "add", &ends[0]];
        if let Some(ns) = a {
            add.extend(["netns", ns]);
        }
        add.extend(["type", "veth", "peer", "name", &ends[1]]);
        if let Some(ns) = b {
            add.extend(["netns", ns]);
        }
        ip(&add);
        for (ns, name, addr) in [(a, &ends[0], a_addr), (b, &ends[1], b_addr)] {
            match ns {
                Some(ns) => {
                    ip(&["-n", ns, "addr", "add", addr, "dev", name]);
                    ip(&["-n", ns, "link", "set", name, "up"]);
                }
                None => {
                    self.root_links.push(name.clone());
                    ip(&["addr", "add", addr, "dev", name]);
                    ip(&["link", "set", name, "up"]);
                }
            }
        }
        let [a_name, b_name] = ends;
        (a_name, b_name)
    }

    /// The first three octets of a /24 under 10.77 that no interface here uses yet, so
    /// tests and runs side by side do not share a route. Where the search starts depends
    /// on the process and the lab, as two labs may ask before either took its subnet.
    fn free_subnet(&self) -> String {
        let out = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .expect("ip addr");
        let used = String::from_utf8_lossy(&out.stdout).into_owned();
        let start = std::process::id() as usize + 97 * self.seq as usize;
        (0..250)
            .map(|i| format!("10.77.{}", (start + i) % 250 + 1))
            .find(|net| !used.contains(&format!("{net}.")))
            .expect("a free 10.77.x.0/24")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other, even while a process still
        // holds the namespace of the far end.
        for link in &self.root_links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Removes namespaces (and with them their veth pairs) left by test runs that were
/// killed before their `Lab` dropped.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(LAB_PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A caller-side engine that gathers only on `interfaces`, with `servers`.
fn caller_on(
    interfaces: &[&str],
    servers: Vec<peercam::signalling::protocol::IceServer>,
) -> RtcEngine {
    let ice = IceSettings {
        servers,
        interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
        loopback: false,
    };
    RtcEngine::caller(&ice, &[Codec::H264, Codec::Vp8, Codec::Opus]).expect("engine")
}

fn press(daemon: &Daemon, line: &str) -> Result<String, String> {
    tokio::task::block_in_place(|| daemon.control(line))
}

fn wait_until(daemon: &Daemon, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    tokio::task::block_in_place(|| daemon.wait_until(timeout, ok))
}

/// Calls `callee` as `caller`, presses accept when it rings, and decodes `frames`
/// pictures of its video.
async fn accepted_call(
    engine: &RtcEngine,
    url: &str,
    callee: &str,
    caller: &str,
    daemon: &Daemon,
    frames: u64,
) -> Caller {
    let mut call = Caller::call(engine, url, callee, json!({"callerName": caller}))
        .await
        .unwrap_or_else(|err| panic!("call placed: {err}\n{}", daemon.stderr()));
    call.wait_for(WAIT, |e| matches!(e, CallerEvent::Ringing).then_some(()))
        .await
        .unwrap_or_else(|err| panic!("it rings: {err}\n{}", daemon.stderr()));
    let reply = press(daemon, "accept").expect("accept");
    assert!(reply.contains(caller), "{reply}");
    let track = call
        .track(RTPCodecType::Video, WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    let decoded = decode(track, frames, WAIT).await;
    assert!(decoded.frames >= frames, "{decoded:?}\n{}", daemon.stderr());
    assert_eq!((decoded.width, decoded.height), (1280, 720));
    call
}

/// The device's log line for `call_id` reaching `state`, if any.
fn state_line(log: &str, call_id: &str, state: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(call_id) && l.contains(&format!("state={state}")))
        .map(str::to_owned)
}

/// The camera in one namespace, the caller here, a veth pair between them. A call is
/// accepted and plays; the link goes down; both ends must notice within
/// [`LOSS_BOUND`] and say "connection lost"; with the link back, a new call plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds network namespaces, which needs root (tools/test includes it as root)"]
async fn a_cut_link_ends_the_call_on_both_sides_and_a_new_call_works_after() {
    let _turn = ONE_AT_A_TIME.lock().await;
    require_root();
    let mut lab = Lab::new();
    let net = lab.free_subnet();
    let camera_ns = lab.namespace("cam");
    let (here, there) = lab.veth(
        None,
        &format!("{net}.1/24"),
        Some(&camera_ns),
        &format!("{net}.2/24"),
    );
    let interfaces = format!("ice.interfaces=[\"{there}\"]");
    // On 0.0.0.0 the camera reaches its own phonebook over the namespace's loopback, so
    // its registration survives the cut and only the call is at stake. Plain HTTP: the
    // caller here is no browser and needs no secure context.
    let daemon = Daemon::spawn_via(
        &["ip", "netns", "exec", &camera_ns],
        "0.0.0.0:0",
        "edge",
        &[
            "--set",
            "ice.loopback=false",
            "--set",
            &interfaces,
            "--set",
            "tls.mode=off",
        ],
    );
    wait_until(&daemon, WAIT, |s| s["registered"] == true);
    let url = daemon.ws.replace("127.0.0.1", &format!("{net}.2"));
    let engine = caller_on(&[&here], Vec::new());

    let mut call = accepted_call(&engine, &url, "edge", "Ray", &daemon, 15).await;
    let call_id = call.call_id().to_owned();
    wait_until(&daemon, WAIT, |s| s["calls"][0]["state"] == "ESTABLISHED");

    ip(&["-n", &camera_ns, "link", "set", &there, "down"]);
    let cut = Instant::now();
    let device = async {
        loop {
            let reply = peercam::gpio::simulated::send_control(&daemon.control, "status")
                .await
                .expect("control socket")
                .expect("status");
            let status: Value = serde_json::from_str(&reply).unwrap();
            if status["calls"] == json!([]) {
                return Some(cut.elapsed());
            }
            if cut.elapsed() > LOSS_BOUND {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let caller = async {
        loop {
            let left = LOSS_BOUND.saturating_sub(cut.elapsed());
            match call.next(left).await {
                Some(CallerEvent::Lost(reason) | CallerEvent::Hangup(reason)) => {
                    return Some((cut.elapsed(), reason));
                }
                Some(_) => continue,
                None => return None,
            }
        }
    };
    let (device, caller) = tokio::join!(device, caller);
    let log = daemon.stderr();
    let device = device.unwrap_or_else(|| {
        panic!("the camera still had the call {LOSS_BOUND:?} after the cut\n{log}")
    });
    let (caller, reason) = caller.unwrap_or_else(|| {
        panic!("the caller still had the call {LOSS_BOUND:?} after the cut\n{log}")
    });
    println!(
        "connection lost detected after {} ms on the device, {} ms on the caller",
        device.as_millis(),
        caller.as_millis()
    );
    assert_eq!(reason, "connection lost");
    let ended = state_line(&log, &call_id, "ENDED")
        .unwrap_or_else(|| panic!("no ENDED line for {call_id}\n{log}"));
    assert!(ended.contains("connection lost"), "{ended}");

    ip(&["-n", &camera_ns, "link", "set", &there, "up"]);
    let restored = Instant::now();
    call.hang_up("bye").await;
    let again = accepted_call(&engine, &url, "edge", "Ray again", &daemon, 15).await;
    println!(
        "a new call played {} ms after the link came back",
        restored.elapsed().as_millis()
    );
    again.hang_up("bye").await;
    wait_until(&daemon, WAIT, |s| s["calls"] == json!([]));
}

/// How the TURN server knows its users.
#[derive(Clone, Copy, Debug)]
enum TurnAuth {
    /// One static user (`--user u:p`), long-term credentials.
    Static,
    /// coturn's TURN REST API: credentials anyone with the shared secret can mint, good
    /// until the time in their user name.
    Rest,
}

/// The TURN server's port (and its relay range below). Fixed, yet they cannot collide: the
/// server listens and relays only inside a namespace this test made (its name carries the
/// test's pid and a sequence number), which nothing else uses.
const TURN_PORT: u16 = 13478;
const TURN_USER: &str = "peercam";
const TURN_PASSWORD: &str = "relay-pass";
const TURN_SECRET: &str = "peercam-shared-secret";
const TURN_REALM: &str = "peercam";

/// Debian's coturn, started in a namespace on addresses of the test's choosing, its log
/// kept for assertions.
struct TurnServer {
    child: Child,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl TurnServer {
    fn start(ns: &str, listen: &[&str], relay: &str, auth: TurnAuth) -> TurnServer {
        // Inside `ip netns exec` a missing program shows only as a server that never
        // answers; say what is missing instead.
        let found = Command::new("turnserver")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(
            found,
            "turnserver not found: install Debian's coturn (tools/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns.into(),
            "turnserver".into(),
            // No config file, no system database: nothing outside this test is read.
            "-n".into(),
            format!("--db={}", dir.path().join("turndb").display()),
            format!("--pidfile={}", dir.path().join("turn.pid").display()),
            "--no-cli".into(),
            "--no-tls".into(),
            "--no-dtls".into(),
            "--no-rfc5780".into(),
            format!("--listening-port={TURN_PORT}"),
            format!("--relay-ip={relay}"),
            "--min-port=49160".into(),
            "--max-port=49360".into(),
            format!("--realm={TURN_REALM}"),
            "--log-file=stdout".into(),
            "--simple-log".into(),
            "--verbose".into(),
        ];
        for ip in listen {
            args.push(format!("--listening-ip={ip}"));
        }
        match auth {
            TurnAuth::Static => {
                args.push("--lt-cred-mech".into());
                args.push(format!("--user={TURN_USER}:{TURN_PASSWORD}"));
            }
            // The shared secret is a form of the long-term mechanism; coturn warns when
            // --lt-cred-mech is given as well.
            TurnAuth::Rest => {
                args.push("--use-auth-secret".into());
                args.push(format!("--static-auth-secret={TURN_SECRET}"));
            }
        }
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("turnserver (Debian package coturn) is installed");
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        TurnServer {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a STUN binding request to `addr` is answered.
    fn wait_ready(&self, addr: &str) {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // Binding request: type 0x0001, no attributes, the magic cookie, an id.
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"peercamfault");
        let deadline = Instant::now() + WAIT;
        let mut reply = [0u8; 512];
        while Instant::now() < deadline {
            let _ = socket.send_to(&request, addr);
            if matches!(socket.recv_from(&mut reply), Ok((n, _)) if n >= 20 && reply[0] == 0x01) {
                return;
            }
        }
        panic!("the TURN server never answered on {addr}\n{}", self.log());
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone phonebook started inside a namespace, listening on all its addresses
/// with plain HTTP (the caller is no browser and needs no secure context), handing pages
/// the ICE servers of the `ice.servers` setting `ice`.
struct NsPhonebook(Child);

impl NsPhonebook {
    fn start(ns: &str, port: u16, ice: &str) -> NsPhonebook {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_peercam")])
            .args(["phonebook", "--listen", &format!("0.0.0.0:{port}")])
            .args(["--set", "tls.mode=off", "--set", ice])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the phonebook starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("http://"), "phonebook said {line:?}");
        std::thread::spawn(move || for _ in out.lines() {});
        NsPhonebook(child)
    }
}

impl Drop for NsPhonebook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `ice.servers` setting (TOML) for the TURN server at `addr` as `auth` needs it:
/// the static user's name and password, or coturn's shared secret, from which the
/// daemon makes time-limited credentials for itself and for every page.
fn turn_setting(addr: &str, auth: TurnAuth) -> String {
    let url = format!("turn:{addr}:{TURN_PORT}?transport=udp");
    match auth {
        TurnAuth::Static => format!(
            "ice.servers=[{{urls=[\"{url}\"],username=\"{TURN_USER}\",credential=\"{TURN_PASSWORD}\"}}]"
        ),
        TurnAuth::Rest => format!("ice.servers=[{{urls=[\"{url}\"],secret=\"{TURN_SECRET}\"}}]"),
    }
}

/// The ICE servers the phonebook at `url` hands a page in its `welcome`.
async fn welcome_ice_servers(url: &str) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the phonebook answers")
        .expect("a WebSocket");
    let hello = json!({"type": "hello", "version": 1});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a welcome")
            .expect("the socket stays open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            let msg: Value = serde_json::from_str(&text).unwrap();
            if msg["type"] == "welcome" {
                return msg["ice_servers"].clone();
            }
        }
    }
}

/// True for a TURN REST user name, `<expiry>:<user>`, that has not expired.
fn live_rest_username(username: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    username
        .split_once(':')
        .and_then(|(expiry, _)| expiry.parse::<u64>().ok())
        .is_some_and(|expiry| expiry > now)
}

/// Three networks: the caller here, the TURN server and the phonebook in a namespace
/// reachable from both sides, and the camera behind it with no route to the caller (the
/// middle namespace does not forward). The caller gathers no host candidates, as a
/// browser with `iceTransportPolicy: "relay"` would, so the call can only be carried by
/// the relay. The phonebook and the camera are each configured with the TURN server
/// as their side reaches it; the caller takes what the phonebook's `welcome` hands it,
/// as a page does. Both sides must have allocated a relay with their credentials.
async fn call_through_turn(auth: TurnAuth) {
    let mut lab = Lab::new();
    let net = lab.free_subnet();
    let relay_ns = lab.namespace("turn");
    let camera_ns = lab.namespace("cam");
    let (_here, _relay_outside) = lab.veth(
        None,
        &format!("{net}.1/24"),
        Some(&relay_ns),
        &format!("{net}.2/24"),
    );
    let (_relay_inside, camera_if) = lab.veth(
        Some(&relay_ns),
        "10.78.0.1/24",
        Some(&camera_ns),
        "10.78.0.2/24",
    );
    ip(&[
        "-n",
        &camera_ns,
        "route",
        "add",
        "default",
        "via",
        "10.78.0.1",
    ]);
    // New namespaces do not forward by default; said here because the topology rests on
    // it (through /proc rather than procps' sysctl, which minimal systems lack).
    let forwarding = Command::new("ip")
        .args(["netns", "exec", &relay_ns, "sh", "-c"])
        .arg("echo 0 > /proc/sys/net/ipv4/ip_forward")
        .output()
        .expect("sh");
    assert!(forwarding.status.success(), "{forwarding:?}");

    let public = format!("{net}.2");
    let turn = TurnServer::start(&relay_ns, &[&public, "10.78.0.1"], &public, auth);
    turn.wait_ready(&format!("{public}:{TURN_PORT}"));
    let _phonebook = NsPhonebook::start(&relay_ns, 8080, &turn_setting(&public, auth));

    // The camera's way out ends at the middle namespace: what it cannot reach directly,
    // it cannot reach at all.
    let listener = std::net::TcpListener::bind(format!("{net}.1:0")).unwrap();
    let probe = format!(
        "exec 3<>/dev/tcp/{net}.1/{}",
        listener.local_addr().unwrap().port()
    );
    let direct = Command::new("ip")
        .args([
            "netns", "exec", &camera_ns, "timeout", "2", "bash", "-c", &probe,
        ])
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "the camera reached the caller's network directly"
    );

    let interfaces = format!("ice.interfaces=[\"{camera_if}\"]");
    let daemon = Daemon::spawn_via(
        &["ip", "netns", "exec", &camera_ns],
        "127.0.0.1:0",
        "relay-cam",
        &[
            "--phonebook",
            "ws://10.78.0.1:8080/ws",
            "--set",
            "ice.loopback=false",
            "--set",
            &interfaces,
            "--set",
            &turn_setting("10.78.0.1", auth),
        ],
    );
    wait_until(&daemon, WAIT, |s| s["registered"] == true);

    let url = format!("ws://{public}:8080/ws");
    let handed = welcome_ice_servers(&url).await;
    let server = &handed[0];
    assert_eq!(
        server["urls"][0],
        format!("turn:{public}:{TURN_PORT}?transport=udp"),
        "{handed}"
    );
    assert!(
        server.get("secret").is_none(),
        "the secret went out: {handed}"
    );
    match auth {
        TurnAuth::Static => assert_eq!(server["username"], TURN_USER, "{handed}"),
        TurnAuth::Rest => assert!(
            live_rest_username(server["username"].as_str().unwrap_or("")),
            "{handed}"
        ),
    }
    // No interface by that name: no host candidates, only the relay's.
    let engine = caller_on(
        &["no-such-interface"],
        serde_json::from_value(handed.clone()).expect("IceServers"),
    );
    let started = Instant::now();
    let call = accepted_call(&engine, &url, "relay-cam", "Ray", &daemon, 15).await;
    println!(
        "{auth:?} TURN credentials: the relayed call played 15 frames {} ms after it was placed",
        started.elapsed().as_millis()
    );
    // coturn logs each allocation as `session ID: realm <R> user <U>: incoming packet
    // ALLOCATE processed, success`, without the client's address. The caller has one
    // TURN server and one connection, so it holds one allocation: a second session is
    // the camera's, and it got in with the credentials it made or was given.
    let log = turn.log();
    let allocations: std::collections::BTreeSet<(&str, &str)> = log
        .lines()
        .filter(|l| l.contains("incoming packet ALLOCATE processed, success"))
        .filter_map(|l| {
            let session = l.split("session ").nth(1)?.split(':').next()?;
            let user = l.split("user <").nth(1)?.split(">:").next()?;
            Some((session, user))
        })
        .collect();
    let sessions: std::collections::BTreeSet<&str> = allocations.iter().map(|(s, _)| *s).collect();
    assert!(
        sessions.len() >= 2,
        "both sides should have a relay: {allocations:?}\n{log}"
    );
    for (_, user) in &allocations {
        match auth {
            TurnAuth::Static => assert_eq!(*user, TURN_USER),
            TurnAuth::Rest => assert!(live_rest_username(user), "{user}"),
        }
    }
    call.hang_up("bye").await;
    wait_until(&daemon, WAIT, |s| s["calls"] == json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds network namespaces, which needs root (tools/test includes it as root)"]
async fn turn_relays_a_call_between_networks_with_a_static_user() {
    let _turn = ONE_AT_A_TIME.lock().await;
    require_root();
    call_through_turn(TurnAuth::Static).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds network namespaces, which needs root (tools/test includes it as root)"]
async fn turn_relays_a_call_between_networks_with_rest_credentials() {
    let _turn = ONE_AT_A_TIME.lock().await;
    require_root();
    call_through_turn(TurnAuth::Rest).await;
}

/// Waits for the device's `viewers` event on the data channel, which it sends once the
/// call is ESTABLISHED on its side.
async fn established(call: &mut Caller, daemon: &Daemon) {
    call.wait_for(WAIT, |e| match e {
        CallerEvent::Data(text) => serde_json::from_str::<Value>(text)
            .ok()
            .filter(|v| v["event"] == "viewers")
            .map(|_| ()),
        _ => None,
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&child| common::stats::proc_sample(child).is_some_and(|s| s.parent == pid))
        .collect()
}

/// SIGTERM with two viewers and a third caller ringing: every caller is told why, and
/// the daemon leaves nothing behind: no process, no child, no control socket, nothing
/// listening on the phonebook's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_call_with_a_reason_and_leaves_nothing_running() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let daemon = Daemon::start("term", &["--set", "call.allow=[\"One\",\"Two\"]"]);
    let engine = caller_engine();
    let mut viewers = Vec::new();
    for name in ["One", "Two"] {
        let mut call = Caller::call(&engine, &daemon.ws, "term", json!({"callerName": name}))
            .await
            .unwrap();
        established(&mut call, &daemon).await;
        viewers.push(call);
    }
    let mut ringing = Caller::call(&engine, &daemon.ws, "term", json!({"callerName": "Three"}))
        .await
        .unwrap();
    ringing
        .wait_for(WAIT, |e| matches!(e, CallerEvent::Ringing).then_some(()))
        .await
        .unwrap();
    wait_until(&daemon, WAIT, |s| s["viewers"] == 2);

    let pid = daemon.pid();
    let children = children_of(pid);
    let control = daemon.control.clone();
    let phonebook = daemon
        .page
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let stopping = Instant::now();
    let exit = tokio::task::block_in_place(|| daemon.stop());
    let stopped = stopping.elapsed();
    assert!(exit.success(), "exit status {exit}");

    for viewer in &mut viewers {
        let reason = viewer
            .wait_for(WAIT, |e| match e {
                CallerEvent::Hangup(r) => Some(r.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|err| panic!("a viewer was not hung up: {err}"));
        assert_eq!(reason, "camera shutting down");
    }
    let reason = loop {
        match ringing.next(WAIT).await {
            Some(CallerEvent::Declined(r)) => break r,
            Some(CallerEvent::Ringing) => continue,
            other => panic!("the ringing caller got {other:?}"),
        }
    };
    assert_eq!(reason, "camera shutting down");

    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon's process is still there"
    );
    for child in &children {
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists(),
            "the daemon's child {child} outlived it"
        );
    }
    assert!(!control.exists(), "the control socket {control:?} was left");
    assert!(
        std::net::TcpStream::connect(&phonebook).is_err(),
        "something still listens on the phonebook's {phonebook}"
    );
    println!(
        "SIGTERM with 3 callers: exited in {} ms; children before: {children:?}",
        stopped.as_millis()
    );
    for call in viewers.into_iter().chain([ringing]) {
        call.hang_up("bye").await;
    }
}

/// A process's resident memory, open file descriptors and threads.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

impl Figures {
    fn of(pid: u32) -> Figures {
        let field = |name: &str| {
            common::stats::status_field(pid, name)
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        Figures {
            rss_kib: field("VmRSS"),
            threads: field("Threads"),
            fds: common::stats::open_fds(pid).unwrap_or_else(|| panic!("no /proc/{pid}/fd")),
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} fds, {} threads",
            self.rss_kib as f64 / 1024.0,
            self.fds,
            self.threads
        )
    }
}

/// How far the daemon's figures may be above where they started once the calls are over
/// and the camera has stopped again.
///
/// File descriptors and threads came back exactly in every run measured (the same fd
/// count before and after; 3 to 9 threads, as tokio's blocking pool and GStreamer's come
/// and go); +2 leaves room for a socket or a pool thread on its way out.
///
/// RSS does not come back all the way. Measured in the debug build with one malloc
/// arena (see the soak for why), five runs: the warmed-up daemon at 64 to 67 MiB, 0 to
/// +5.5 MiB above that after the 200 calls in a row, +5 to +18 MiB after the 20 at once. The
/// calls in a row level off, so what the crowd leaves is the heap in pieces, not
/// something kept per call. The margin is +32 MiB: nearly twice the worst of that, and
/// far below leaking connections, which cost about 0.75 MiB each while up (20 at once:
/// +12 to +16 MiB); the soak fails if each call keeps about 150 KiB, a fifth of one.
const SOAK_MARGIN_FDS: usize = 2;
const SOAK_MARGIN_THREADS: u64 = 2;
const SOAK_MARGIN_RSS_KIB: u64 = 32 * 1024;

fn within_margin(before: Figures, after: Figures) -> bool {
    after.fds <= before.fds + SOAK_MARGIN_FDS
        && after.threads <= before.threads + SOAK_MARGIN_THREADS
        && after.rss_kib <= before.rss_kib + SOAK_MARGIN_RSS_KIB
}

/// Waits for the calls to end and the camera to stop, then a second for what they
/// leave to be let go of; with `before`, up to 15 s more for the figures to come back
/// inside the margin.
fn settle(daemon: &Daemon, before: Option<Figures>) -> Figures {
    daemon.wait_until(Duration::from_secs(15), |s| {
        s["calls"] == json!([]) && s["camera_running"] == false
    });
    std::thread::sleep(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = Figures::of(daemon.pid());
        match before {
            Some(before) if !within_margin(before, now) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => return now,
        }
    }
}

const SOAK_IN_A_ROW: usize = 200;
const SOAK_AT_ONCE: usize = 20;

/// Places `count` calls one after another; each reaches ESTABLISHED and is hung up by
/// its caller. Their ids go to `ids`.
async fn calls_in_a_row(
    engine: &RtcEngine,
    daemon: &Daemon,
    tag: &str,
    count: usize,
    ids: &mut Vec<String>,
) {
    for i in 0..count {
        let meta = json!({"callerName": format!("{tag} {i}")});
        let mut call = Caller::call(engine, &daemon.ws, "soak", meta)
            .await
            .unwrap_or_else(|err| panic!("{tag} {i}: {err}\n{}", daemon.stderr()));
        established(&mut call, daemon).await;
        ids.push(call.call_id().to_owned());
        call.hang_up("bye").await;
    }
}

/// Places `count` calls at once, waits until every one is watching, and returns the
/// daemon's figures then, after the callers hung up.
async fn calls_at_once(
    engine: &Arc<RtcEngine>,
    daemon: &Daemon,
    tag: &str,
    count: usize,
    ids: &mut Vec<String>,
) -> Figures {
    let mut placing = Vec::new();
    for i in 0..count {
        let engine = engine.clone();
        let ws = daemon.ws.clone();
        let meta = json!({"callerName": format!("{tag} {i}")});
        placing.push(tokio::spawn(async move {
            Caller::call(&engine, &ws, "soak", meta).await
        }));
    }
    let mut calls = Vec::new();
    for call in placing {
        let mut call = call
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("{tag}: {err}\n{}", daemon.stderr()));
        established(&mut call, daemon).await;
        ids.push(call.call_id().to_owned());
        calls.push(call);
    }
    let status = wait_until(daemon, WAIT, |s| s["viewers"] == count);
    assert_eq!(status["calls"].as_array().unwrap().len(), count, "{status}");
    let figures = Figures::of(daemon.pid());
    for call in calls {
        call.hang_up("bye").await;
    }
    figures
}

/// 200 calls one after another, then 20 at once, against one daemon; each call reaches
/// ESTABLISHED and is hung up by its caller. Afterwards memory, file descriptors and
/// threads come back to where they started, within the margins above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_220_calls_leaves_no_memory_fds_or_threads_behind() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // glibc gives threads arenas of their own and keeps their freed memory in pieces,
    // so with its default settings RSS drifts up with the threads of every connection
    // that came and went: this soak then ends 22 to 31 MiB higher, +21 to +28 MiB of it
    // from the calls in a row alone, and a run of 1500 calls was still rising at the end.
    // That hides whatever is really kept. With one arena the calls in a row level off.
    let daemon = Daemon::spawn_via(
        &["env", "MALLOC_ARENA_MAX=1"],
        "127.0.0.1:0",
        "soak",
        &[
            "--answer",
            "auto",
            "--set",
            "call.max_viewers=32",
            "--set",
            "call.idle_stop_secs=2",
            // The camera's own phonebook connection is held to the per-client message
            // rate (20/s, bursts of 60) like any other; at about ten calls a second
            // (each a ringing, an answer and candidates) the calls in a row would
            // outrun it and lose their answers. That limit is not what this measures.
            "--set",
            "limits.messages_per_second=1000",
            "--set",
            "limits.message_burst=1000",
        ],
    );
    wait_until(&daemon, WAIT, |s| s["registered"] == true);
    let engine = Arc::new(caller_engine());
    let mut ids = Vec::new();

    // The first calls load GStreamer's plugins, start x264 and take the allocator to
    // the high-water mark of 20 viewers; the baseline is taken after them, with the
    // camera stopped again, so that what the soak adds is what it kept.
    let warm = Instant::now();
    calls_in_a_row(&engine, &daemon, "warm", 3, &mut ids).await;
    calls_at_once(&engine, &daemon, "warm crowd", SOAK_AT_ONCE, &mut ids).await;
    let start = tokio::task::block_in_place(|| settle(&daemon, None));
    println!(
        "soak: before (after warming up, {:.1} s): {start}",
        warm.elapsed().as_secs_f64()
    );

    let in_a_row = Instant::now();
    calls_in_a_row(&engine, &daemon, "row", SOAK_IN_A_ROW, &mut ids).await;
    let in_a_row = in_a_row.elapsed();
    let after_row = tokio::task::block_in_place(|| settle(&daemon, None));
    let at_once = Instant::now();
    let crowd = calls_at_once(&engine, &daemon, "crowd", SOAK_AT_ONCE, &mut ids).await;
    let at_once = at_once.elapsed();
    let end = tokio::task::block_in_place(|| settle(&daemon, Some(start)));
    println!(
        "soak: {SOAK_IN_A_ROW} calls in a row in {:.1} s ({} ms each), then settled: {after_row}",
        in_a_row.as_secs_f64(),
        in_a_row.as_millis() / SOAK_IN_A_ROW as u128,
    );
    println!(
        "soak: {SOAK_AT_ONCE} at once up and hung up in {:.1} s; while up: {crowd}",
        at_once.as_secs_f64()
    );
    println!("soak: after, settled: {end}");

    let log = daemon.stderr();
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| state_line(&log, id, "ESTABLISHED").is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} calls never logged ESTABLISHED: {missing:?}",
        missing.len(),
        ids.len()
    );
    assert!(
        within_margin(start, end),
        "the daemon did not come back: before {start}, after {end} (margins: +{SOAK_MARGIN_FDS} fds, \
         +{SOAK_MARGIN_THREADS} threads, RSS +{} MiB)",
        SOAK_MARGIN_RSS_KIB / 1024
    );
}
