//! The device's side of the phonebook: connect, say hello, register, relay messages, and
//! reconnect with a growing, jittered pause whenever the phonebook goes away. How the
//! messages travel is the [`Transport`]'s business: a WebSocket ([`run`]), or anything
//! else that connects ([`run_on`]), such as a phonebook in the same process.

use std::future::Future;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::access::CallerMode;
use super::backoff::Backoff;
use super::connection::{ClientError, PhonebookConnection};
use super::protocol::{ClientMessage, ErrorCode, Secret, ServerMessage};
use super::transport::{Transport, TransportError, WsTransport};

/// What the device learns from its phonebook connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Registered under the name; calls can arrive.
    Registered,
    /// The phonebook went away; the client is reconnecting.
    Disconnected(String),
    /// A message for the device.
    Message(ServerMessage),
}

/// The name and metadata to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Callee name.
    pub name: String,
    /// Metadata shown in the phonebook.
    pub meta: Value,
    /// The device token the phonebook knows this name by, if it asks for one.
    pub token: Option<Secret>,
    /// How to check a `wss://` phonebook's certificate (the public CAs, or a pinned one).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Refuse a phonebook that lets anyone call (`auth: open`) unless it is on loopback:
    /// set when this device answers every call by itself.
    pub refuse_open: bool,
    /// Also follow the callee list (`listen`): the bell rings those online.
    pub listen: bool,
}

/// Keeps the device registered on the phonebook at `url` until every sender of
/// `outgoing` is dropped: what was queued before that (the hang-ups of a shutdown) is
/// still sent. Messages are dropped (logged) while not connected: call messages are
/// meaningless to a phonebook that restarted. A `register` of the device's own name sent
/// through `outgoing` changes its metadata, also for the registrations after a reconnect.
pub async fn run(
    url: String,
    registration: Registration,
    events: mpsc::UnboundedSender<ClientEvent>,
    outgoing: mpsc::UnboundedReceiver<ClientMessage>,
) {
    let tls = registration.tls.clone();
    let connect = || WsTransport::connect(&url, tls.clone());
    run_on(&url, connect, registration, events, outgoing).await;
}

/// [`run`] over the transports `connect` opens, one per attempt; `phonebook` names the
/// phonebook in the log.
pub async fn run_on<T, F>(
    phonebook: &str,
    mut connect: impl FnMut() -> F + Send,
    mut registration: Registration,
    events: mpsc::UnboundedSender<ClientEvent>,
    mut outgoing: mpsc::UnboundedReceiver<ClientMessage>,
) where
    T: Transport,
    F: Future<Output = Result<T, TransportError>> + Send,
{
    let mut backoff = Backoff::reconnect();
    loop {
        let outcome = match connect().await {
            Ok(transport) => session(transport, &mut registration, &events, &mut outgoing).await,
            Err(err) => Err(err.into()),
        };
        match outcome {
            Ok(true) => return,
            Ok(false) => backoff.reset(),
            Err(err) => {
                warn!(%phonebook, "phonebook: {err}");
                let _ = events.send(ClientEvent::Disconnected(err.to_string()));
            }
        }
        let wait = backoff.pause();
        debug!(
            wait_ms = wait.as_millis() as u64,
            "reconnecting to the phonebook after a pause"
        );
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                msg = outgoing.recv() => match msg {
                    Some(msg) => {
                        if !keep_meta(&mut registration, &msg) {
                            debug!(kind = msg.kind(), "not connected to the phonebook; message dropped");
                        }
                    }
                    None => return,
                },
            }
        }
    }
}

/// Why the device could not stay registered.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{message} (is another device using the name {name:?}?)")]
    NameTaken { name: String, message: String },
    #[error("refused: {0} (check device.token)")]
    TokenRefused(String),
}

impl From<TransportError> for SessionError {
    fn from(err: TransportError) -> Self {
        SessionError::Client(err.into())
    }
}

/// The device's reading of a refusal: the two it can do something about get a hint.
fn registration_error(err: ClientError, name: &str) -> SessionError {
    match err {
        ClientError::Refused {
            code: ErrorCode::NameTaken,
            message,
        } => SessionError::NameTaken {
            name: name.to_owned(),
            message,
        },
        ClientError::Refused {
            code: ErrorCode::Unauthorized | ErrorCode::Forbidden,
            message,
        } => SessionError::TokenRefused(message),
        other => SessionError::Client(other),
    }
}

/// One connection. `Ok(true)`: shut down cleanly; `Ok(false)`: the phonebook closed
/// after we had registered (reconnect at once); `Err`: it failed.
/// Keeps the metadata of a `register` of the device's own name for the registrations to
/// come; true if `msg` was one.
fn keep_meta(registration: &mut Registration, msg: &ClientMessage) -> bool {
    match msg {
        ClientMessage::Register { name, meta } if *name == registration.name => {
            registration.meta = meta.clone();
            true
        }
        _ => false,
    }
}

async fn session<T: Transport>(
    transport: T,
    registration: &mut Registration,
    events: &mpsc::UnboundedSender<ClientEvent>,
    outgoing: &mut mpsc::UnboundedReceiver<ClientMessage>,
) -> Result<bool, SessionError> {
    let name = &registration.name.clone();
    let agent = format!("peercam/{}", env!("CARGO_PKG_VERSION"));
    let mut conn = PhonebookConnection::hello(transport, &agent, registration.token.clone())
        .await
        .map_err(|err| registration_error(err, name))?;
    if registration.refuse_open && conn.welcome().auth == CallerMode::Open && !conn.is_local() {
        return Err(ClientError::OpenToAnyone.into());
    }
    let register = ClientMessage::Register {
        name: name.clone(),
        meta: registration.meta.clone(),
    };
    conn.request(&register, "registering", |reply| {
        matches!(reply, ServerMessage::Registered { .. }).then_some(())
    })
    .await
    .map_err(|err| registration_error(err, name))?;
    info!(%name, "registered on the phonebook");
    let _ = events.send(ClientEvent::Registered);
    if registration.listen {
        conn.send(&ClientMessage::Listen).await?;
    }

    loop {
        tokio::select! {
            msg = conn.recv() => match msg? {
                Some(msg) => { let _ = events.send(ClientEvent::Message(msg)); }
                None => {
                    let _ = events.send(ClientEvent::Disconnected("the phonebook closed the connection".into()));
                    return Ok(false);
                }
            },
            msg = outgoing.recv() => match msg {
                Some(msg) => {
                    keep_meta(registration, &msg);
                    conn.send(&msg).await?
                }
                None => {
                    // The phonebook reads in order, so once it has closed its end it has
                    // routed everything sent before: the hang-ups of a shutdown reach
                    // the callers before an embedded phonebook closes their sockets.
                    conn.close().await;
                    return Ok(true);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::signalling::server::PhonebookServer;

    fn registration() -> Registration {
        Registration {
            name: "cam".into(),
            meta: json!({}),
            token: None,
            tls: None,
            // The phonebook is open, but in this process: allowed.
            refuse_open: true,
            listen: false,
        }
    }

    async fn next(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> ClientEvent {
        tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("an event within a minute of virtual time")
            .expect("the client is running")
    }

    /// The device registers and takes a call on a phonebook in this process, with no
    /// socket, on virtual time; dropped by the phonebook, it registers again after its
    /// backoff.
    #[tokio::test(start_paused = true)]
    async fn registers_in_process_takes_a_call_and_comes_back() {
        let server = PhonebookServer::new(Vec::new());
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::unbounded_channel();
        let phonebook = server.clone();
        let connect = move || {
            let transport = phonebook.connect_local();
            async move { Ok(transport) }
        };
        let client = tokio::spawn(async move {
            run_on("in-process", connect, registration(), events_tx, out_rx).await;
        });
        assert_eq!(next(&mut events).await, ClientEvent::Registered);

        let mut caller = PhonebookConnection::hello(server.connect_local(), "test", None)
            .await
            .expect("welcome");
        let call = ClientMessage::Call {
            call_id: "c1".into(),
            callee: "cam".into(),
            meta: json!({"callerName": "test"}),
            sdp: "offer".into(),
        };
        caller.send(&call).await.expect("sent");
        match next(&mut events).await {
            ClientEvent::Message(ServerMessage::IncomingCall {
                call_id,
                callee,
                sdp,
                ..
            }) => assert_eq!(
                (call_id, callee, sdp),
                ("c1".into(), "cam".into(), "offer".into())
            ),
            other => panic!("expected the call, got {other:?}"),
        }
        out.send(ClientMessage::Accept {
            call_id: "c1".into(),
            sdp: "answer".into(),
        })
        .expect("client running");
        let accepted = tokio::time::timeout(Duration::from_secs(10), caller.recv())
            .await
            .expect("an answer in time");
        assert_eq!(
            accepted,
            Ok(Some(ServerMessage::Accepted {
                call_id: "c1".into(),
                sdp: "answer".into()
            }))
        );

        let dropped_at = tokio::time::Instant::now();
        assert!(server.disconnect_callee("cam"));
        assert!(matches!(
            next(&mut events).await,
            ClientEvent::Disconnected(_)
        ));
        assert_eq!(next(&mut events).await, ClientEvent::Registered);
        // The first pause of the backoff, jittered, on virtual time.
        let waited = dropped_at.elapsed();
        assert!(
            (Duration::from_millis(200)..Duration::from_millis(300)).contains(&waited),
            "{waited:?}"
        );

        drop(out);
        tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("the client stops once its senders are gone")
            .expect("no panic");
        assert!(server.connect_local().is_local());
    }
}
