//! One client's connection to the phonebook, over any [`Transport`]: `hello` answered
//! by `welcome`, then typed messages each way. The device's registration (`client.rs`)
//! and WHEP's calls both start here, so the handshake is written once.

use std::time::Duration;

use thiserror::Error;
use tracing::debug;

use super::access::CallerMode;
use super::protocol::{
    ClientMessage, ErrorCode, IceServer, PROTOCOL_VERSION, Secret, ServerMessage,
};
use super::transport::{Transport, TransportError};

/// How long the phonebook may take to answer a request of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a phonebook connection could not be used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ClientError {
    /// The transport failed, or could not be opened.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The phonebook took longer than [`HANDSHAKE_TIMEOUT`] over a step.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// It closed the connection before the handshake was done.
    #[error("the phonebook closed the connection during the handshake")]
    Closed,
    /// It answered with an error.
    #[error("refused: {message}")]
    Refused {
        /// The error's code.
        code: ErrorCode,
        /// The phonebook's explanation.
        message: String,
    },
    /// The device would answer every call by itself on a phonebook that lets anyone
    /// call, and the phonebook is not on this machine.
    #[error(
        "answer = \"auto\" on a phonebook that lets anyone call (auth: open) would let anyone watch this camera; \
         set access on the phonebook, or answer with the buttons"
    )]
    OpenToAnyone,
}

/// What the phonebook said in its `welcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// Who may call on it.
    pub auth: CallerMode,
    /// The STUN/TURN servers it hands out.
    pub ice_servers: Vec<IceServer>,
}

/// A phonebook connection past its `hello`.
pub struct PhonebookConnection<T> {
    transport: T,
    welcome: Welcome,
}

impl<T: Transport> PhonebookConnection<T> {
    /// Says `hello` on `transport` as `agent` (with `token` if the phonebook knows this
    /// client by one) and waits for the `welcome`.
    pub async fn hello(
        mut transport: T,
        agent: &str,
        token: Option<Secret>,
    ) -> Result<Self, ClientError> {
        transport
            .send(&ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                agent: Some(agent.to_owned()),
                token,
            })
            .await?;
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match transport.recv().await? {
                    Some(ServerMessage::Welcome {
                        auth, ice_servers, ..
                    }) => return Ok(Welcome { auth, ice_servers }),
                    Some(ServerMessage::Error { code, message, .. }) => {
                        return Err(ClientError::Refused { code, message });
                    }
                    Some(other) => debug!(?other, "ignored before the welcome"),
                    None => return Err(ClientError::Closed),
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout("waiting for the welcome"))??;
        Ok(PhonebookConnection { transport, welcome })
    }

    /// The phonebook's `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the phonebook is on this machine.
    pub fn is_local(&self) -> bool {
        self.transport.is_local()
    }

    /// The transport underneath.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Sends `msg`.
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), TransportError> {
        self.transport.send(msg).await
    }

    /// The next message; `None` once the phonebook closed the connection. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, TransportError> {
        self.transport.recv().await
    }

    /// Sends `msg` and waits for the first message `reply` picks (it returns `Some`),
    /// or the first error; other messages before it are skipped.
    pub async fn request<R>(
        &mut self,
        msg: &ClientMessage,
        what: &'static str,
        mut reply: impl FnMut(&ServerMessage) -> Option<R> + Send,
    ) -> Result<R, ClientError> {
        self.send(msg).await?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match self.recv().await? {
                    Some(msg) => {
                        if let Some(found) = reply(&msg) {
                            return Ok(found);
                        }
                        if let ServerMessage::Error { code, message, .. } = msg {
                            return Err(ClientError::Refused { code, message });
                        }
                        debug!(?msg, "ignored while waiting for a reply");
                    }
                    None => return Err(ClientError::Closed),
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }

    /// Closes the connection; see [`Transport::close`].
    pub async fn close(mut self) {
        self.transport.close().await;
    }
}
