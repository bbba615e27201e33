//! A phonebook connection inside the process: the [`Transport`] that talks to a
//! phonebook through its handle, with no socket and no text. What the client sends is
//! handed to the phonebook at once; what the phonebook sends arrives typed, charged to
//! whoever caused it as on a WebSocket. WHEP's calls use it, and so can a device whose
//! phonebook runs in the same process.

use tokio::sync::mpsc;

use super::hub::{PhonebookHandle, Reader};
use super::mailbox::Outgoing;
use super::phonebook::ConnId;
use super::protocol::{ClientMessage, ServerMessage};
use super::transport::{Transport, TransportError};

/// A connection to a phonebook in this process; it closes (its names released, its
/// calls hung up) when dropped.
pub struct LocalTransport {
    phonebook: PhonebookHandle,
    conn: ConnId,
    incoming: mpsc::Receiver<Outgoing>,
}

impl LocalTransport {
    /// Opens a connection on `phonebook`.
    pub(super) fn open(phonebook: &PhonebookHandle) -> Self {
        let opened = phonebook.open(Reader::Local);
        LocalTransport {
            phonebook: phonebook.clone(),
            conn: opened.conn,
            incoming: opened.outgoing,
        }
    }

    /// The connection's id in the phonebook.
    pub(super) fn conn(&self) -> ConnId {
        self.conn
    }
}

impl Transport for LocalTransport {
    async fn send(&mut self, msg: &ClientMessage) -> Result<(), TransportError> {
        self.phonebook.message(self.conn, msg.clone());
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<ServerMessage>, TransportError> {
        loop {
            match self.incoming.recv().await {
                Some(Outgoing::Message(letter)) => {
                    // Taking the message out of its letter is reading it: its place in
                    // the ledger is given back here.
                    if let Some(message) = letter.into_message() {
                        return Ok(Some(message));
                    }
                }
                Some(Outgoing::Ping) => {}
                Some(Outgoing::Close | Outgoing::GoingAway) | None => return Ok(None),
            }
        }
    }

    async fn close(&mut self) {
        // The phonebook has handled everything sent: `send` hands it over at once.
        self.phonebook.close(self.conn);
        self.incoming.close();
    }

    fn is_local(&self) -> bool {
        true
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.phonebook.close(self.conn);
    }
}
