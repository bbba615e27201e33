//! A phonebook server on a loopback port of its own and a raw WebSocket client for it,
//! shared by the protocol tests (tests/phonebook_ws.rs) and the abuse tests
//! (tests/abuse.rs). Every wait is bounded by [`WAIT`].

// Each test file uses its own part of this.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peercam::signalling::protocol::{ClientMessage, ServerMessage};
use peercam::signalling::server::PhonebookServer;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any one step may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A phonebook serving on 127.0.0.1, on a listener bound once and handed to it.
pub struct TestPhonebook {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server, for the tests that look into it.
    pub server: PhonebookServer,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestPhonebook {
    /// Serves `server` on a port of the kernel's choosing.
    pub async fn start(server: PhonebookServer) -> TestPhonebook {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stop.await;
        }));
        TestPhonebook {
            addr,
            server,
            shutdown,
            task,
        }
    }

    /// Shuts it down and checks it stopped cleanly within [`WAIT`].
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        timeout(WAIT, self.task)
            .await
            .expect("the server stops within 5 s of shutdown")
            .expect("the server task does not panic")
            .expect("the server returns Ok");
    }
}

/// A raw WebSocket client of the phonebook.
pub struct WsClient {
    /// The socket, for the tests that send or read frames by hand.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to the phonebook at `addr`.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        let (ws, _) = timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("connect within 5 s")
        .expect("WebSocket handshake");
        WsClient { ws }
    }

    /// Connects with a receive buffer of `bytes`, so that not reading backs the server up
    /// after a few KiB instead of the megabytes loopback allows by default.
    pub async fn connect_with_receive_buffer(addr: SocketAddr, bytes: u32) -> WsClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = timeout(
            WAIT,
            tokio_tungstenite::client_async(
                format!("ws://{addr}/ws"),
                MaybeTlsStream::Plain(stream),
            ),
        )
        .await
        .expect("handshake within 5 s")
        .expect("WebSocket handshake");
        WsClient { ws }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientMessage) {
        self.send_all(std::iter::once(msg.clone())).await;
    }

    /// Sends every message in one write, as a flooding client would.
    pub async fn send_all(&mut self, msgs: impl IntoIterator<Item = ClientMessage>) {
        for msg in msgs {
            let text = serde_json::to_string(&msg).expect("client messages serialise");
            timeout(WAIT, self.ws.feed(Message::text(text)))
                .await
                .expect("queue within 5 s")
                .expect("queue");
        }
        timeout(WAIT, self.ws.flush())
            .await
            .expect("send within 5 s")
            .expect("send");
    }

    /// Sends one frame as it is (binary, malformed text, oversized …).
    pub async fn send_raw(&mut self, frame: Message) {
        timeout(WAIT, self.ws.send(frame))
            .await
            .expect("send within 5 s")
            .expect("send");
    }

    /// The next protocol message, or `None` when nothing comes for `quiet`. Pings and
    /// pongs are skipped (the server pings on its own schedule); anything else, the
    /// connection ending included, fails the test.
    pub async fn next_within(&mut self, quiet: Duration) -> Option<ServerMessage> {
        let text = timeout(quiet, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => return text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected a message, got {other:?}"),
                }
            }
        })
        .await
        .ok()?;
        Some(
            serde_json::from_str::<ServerMessage>(text.as_str())
                .unwrap_or_else(|err| panic!("not a server message ({err}): {text}")),
        )
    }

    /// The next protocol message, within [`WAIT`].
    pub async fn recv(&mut self) -> ServerMessage {
        self.next_within(WAIT).await.expect("a message within 5 s")
    }

    /// Waits until the server has closed the connection. A close frame, the end of the
    /// stream and a reset all count: which one a client sees depends on timing.
    pub async fn expect_closed(&mut self) {
        let closed = timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        closed.expect("the server closes the connection within 5 s");
    }
}
