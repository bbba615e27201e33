//! The boundary between a phonebook client and how its messages travel: a
//! [`Transport`] sends [`ClientMessage`]s and yields [`ServerMessage`]s. Two kinds
//! exist: a WebSocket to a phonebook anywhere ([`WsTransport`]), and a connection
//! straight into a phonebook in the same process (`LocalTransport`, in `local.rs`), which
//! needs no socket and so runs under tokio's paused, virtual time in tests.
//!
//! The handshake and what follows it are the same over either: see
//! [`super::connection::PhonebookConnection`].

mod ws;

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use super::protocol::{ClientMessage, ServerMessage};

pub use ws::WsTransport;

/// Why a transport stopped working.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TransportError {
    /// The connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// It was opened but failed (a reset, a protocol error).
    #[error("connection failed: {0}")]
    Failed(String),
    /// Not a frame, not even a pong, for this long: the connection is dead.
    #[error("the phonebook has been silent for {0:?}")]
    Silent(Duration),
}

/// One client connection to a phonebook, as typed messages each way.
///
/// [`Transport::recv`] must be cancel-safe: the client waits on it and on its own
/// outgoing queue at once, and drops whichever did not finish.
pub trait Transport: Send {
    /// Sends `msg`.
    fn send(
        &mut self,
        msg: &ClientMessage,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The next message from the phonebook; `None` once it closed the connection.
    fn recv(
        &mut self,
    ) -> impl Future<Output = Result<Option<ServerMessage>, TransportError>> + Send;

    /// Closes this end, and waits a moment for the phonebook to close its own: it reads
    /// in order, so by then it has handled everything sent before.
    fn close(&mut self) -> impl Future<Output = ()> + Send;

    /// Whether the phonebook is on this machine (loopback, or in this very process).
    fn is_local(&self) -> bool;
}
