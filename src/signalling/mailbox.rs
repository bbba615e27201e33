//! What waits to be written to one connection, and who it is charged to.
//!
//! Every message queued for a connection is a [`Letter`] that counts in the receiver's
//! [`Ledger`] until it is written (dropped): a relayed message against its sender's
//! window there, a callee-list message against the list window, an answer to the
//! connection's own request against its reply window. The server checks the windows
//! before queueing, so what others send a connection is refused to them when it piles up
//! ([`super::limits::RELAY_WINDOW`]) instead of filling the receiver's queue, and the
//! receiver is never disconnected for it.
//!
//! A letter carries the typed [`ServerMessage`]: only the WebSocket writer turns it into
//! text, and an in-process connection (WHEP's) takes the message as it is. Its size, the
//! length of its JSON, is counted once when it is queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::limits::{LIST_WINDOW, RECEIVER_WINDOW, RELAY_WINDOW, REPLY_WINDOW, Usage};
use super::phonebook::ConnId;
use super::protocol::ServerMessage;

/// What the server sends down one connection.
pub(crate) enum Outgoing {
    /// A protocol message.
    Message(Letter),
    /// A WebSocket ping.
    Ping,
    /// Close now.
    Close,
    /// Close with "going away": the server shuts down.
    GoingAway,
}

/// Whom a queued message is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charge {
    /// Relayed from that connection (a call message, or a hang-up on its behalf).
    Relay(ConnId),
    /// The callee list or a change to it.
    List,
    /// An answer to the receiver's own request, or the phonebook speaking on its own.
    Reply,
}

/// What a receiver has waiting, by whom it is charged to.
#[derive(Debug, Default)]
struct Tally {
    from: HashMap<ConnId, Usage>,
    relays: Usage,
    list: Usage,
    replies: Usage,
    /// List messages were dropped: send the whole list once the rest is read.
    list_stale: bool,
}

/// A connection's account of what waits in its queue.
#[derive(Debug, Default)]
pub(crate) struct Ledger(Mutex<Tally>);

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The list window is full; the listener gets the whole list later.
    ListDropped,
    /// The receiver does not read the answers to its own requests.
    RepliesUnread,
}

impl Ledger {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        // Counting never panics halfway; a poisoned lock still holds sound numbers.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `sender` may have one more message of `bytes` relayed here.
    pub(crate) fn has_room(&self, sender: ConnId, bytes: usize) -> bool {
        let tally = self.tally();
        tally
            .from
            .get(&sender)
            .is_none_or(|used| used.fits(bytes, RELAY_WINDOW))
            && tally.relays.fits(bytes, RECEIVER_WINDOW)
    }

    /// Counts `message` (of `bytes` as JSON text) as waiting, charged as `charge`, or
    /// says why it may not wait.
    /// Relayed messages always count: the sender's room was checked with
    /// [`Ledger::has_room`] before the phonebook acted on its message, and the few that
    /// were not checked end a call (one each), which the receiver must learn of.
    pub(crate) fn letter(
        self: &Arc<Self>,
        body: impl Into<Body>,
        bytes: usize,
        charge: Charge,
    ) -> Result<Letter, Refusal> {
        let mut tally = self.tally();
        match charge {
            Charge::Relay(sender) => {
                tally.from.entry(sender).or_default().add(bytes);
                tally.relays.add(bytes);
            }
            Charge::List => {
                if tally.list_stale || !tally.list.fits(bytes, LIST_WINDOW) {
                    tally.list_stale = true;
                    return Err(Refusal::ListDropped);
                }
                tally.list.add(bytes);
            }
            Charge::Reply => {
                if !tally.replies.fits(bytes, REPLY_WINDOW) {
                    return Err(Refusal::RepliesUnread);
                }
                tally.replies.add(bytes);
            }
        }
        Ok(Letter {
            body: Some(body.into()),
            bytes,
            charge,
            ledger: self.clone(),
        })
    }

    /// Whether list messages were dropped and none is waiting any more: then the
    /// listener is due the whole list. Clears the mark.
    pub(crate) fn take_list_resync(&self) -> bool {
        let mut tally = self.tally();
        if tally.list_stale && tally.list.messages == 0 {
            tally.list_stale = false;
            true
        } else {
            false
        }
    }

    fn release(&self, charge: Charge, bytes: usize) {
        let mut tally = self.tally();
        match charge {
            Charge::Relay(sender) => {
                if let Some(used) = tally.from.get_mut(&sender) {
                    used.remove(bytes);
                    if used.messages == 0 {
                        tally.from.remove(&sender);
                    }
                }
                tally.relays.remove(bytes);
            }
            Charge::List => tally.list.remove(bytes),
            Charge::Reply => tally.replies.remove(bytes),
        }
    }
}

/// One queued message; it stops counting in its receiver's ledger when dropped, that is
/// once it is written (or the connection is gone).
pub(crate) struct Letter {
    /// Always `Some` until the letter is read ([`Letter::into_message`],
    /// [`Letter::into_text`]).
    body: Option<Body>,
    bytes: usize,
    charge: Charge,
    ledger: Arc<Ledger>,
}

/// What a letter carries: the message itself for an in-process reader, or its JSON for a
/// socket, made once when the letter is posted (its length is what the letter is charged).
#[derive(Debug)]
pub(crate) enum Body {
    /// For a reader in this process.
    Message(ServerMessage),
    /// The message as the text frame a socket sends.
    Text(String),
}

impl From<ServerMessage> for Body {
    fn from(message: ServerMessage) -> Body {
        Body::Message(message)
    }
}

impl Letter {
    /// The message, given out of the queue: it stops counting here. `None` for a letter
    /// posted as text.
    pub(crate) fn into_message(mut self) -> Option<ServerMessage> {
        match self.body.take()? {
            Body::Message(message) => Some(message),
            Body::Text(_) => None,
        }
    }

    /// The message's text frame, given out of the queue: it stops counting here. A letter
    /// posted as a message is serialised now.
    pub(crate) fn into_text(mut self) -> Option<String> {
        match self.body.take()? {
            Body::Message(message) => Some(message.to_text()),
            Body::Text(text) => Some(text),
        }
    }

    /// What the message is charged to.
    pub(crate) fn charge(&self) -> Charge {
        self.charge
    }
}

impl Drop for Letter {
    fn drop(&mut self) {
        self.ledger.release(self.charge, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-byte letter: the windows count messages and bytes, not what they say.
    fn note() -> ServerMessage {
        ServerMessage::Callees {
            callees: Vec::new(),
        }
    }

    #[test]
    fn a_sender_has_no_room_once_its_window_is_full_and_others_still_do() {
        let ledger = Arc::new(Ledger::default());
        let mut held = Vec::new();
        for _ in 0..RELAY_WINDOW.messages {
            held.push(ledger.letter(note(), 1, Charge::Relay(1)).unwrap());
        }
        assert!(!ledger.has_room(1, 1));
        // Another sender still has room.
        assert!(ledger.has_room(2, 1));
        held.push(ledger.letter(note(), 1, Charge::Relay(2)).unwrap());
        // Written letters give their place back.
        held.clear();
        assert!(ledger.has_room(1, 1));
        assert!(ledger.tally().from.is_empty());
    }

    #[test]
    fn a_receiver_takes_so_much_from_all_senders_together() {
        let ledger = Arc::new(Ledger::default());
        let senders = RECEIVER_WINDOW.messages / (RELAY_WINDOW.messages - 1);
        let held: Vec<_> = (0..senders as u64)
            .flat_map(|sender| (0..RELAY_WINDOW.messages - 1).map(move |_| sender))
            .map(|sender| ledger.letter(note(), 1, Charge::Relay(sender)).unwrap())
            .collect();
        // Every sender is within its own window, but a new one finds no room.
        assert!(ledger.has_room(0, 1));
        let more: Vec<_> = (0..RECEIVER_WINDOW.messages - held.len())
            .map(|_| ledger.letter(note(), 1, Charge::Relay(1_000)).unwrap())
            .collect();
        assert!(!ledger.has_room(2_000, 1));
        drop(more);
        assert!(ledger.has_room(2_000, 1));
    }

    #[test]
    fn dropped_list_messages_are_made_up_with_the_whole_list() {
        let ledger = Arc::new(Ledger::default());
        let mut held = Vec::new();
        for _ in 0..LIST_WINDOW.messages {
            held.push(ledger.letter(note(), 1, Charge::List).unwrap());
        }
        assert_eq!(
            ledger.letter(note(), 1, Charge::List).err(),
            Some(Refusal::ListDropped)
        );
        assert!(!ledger.take_list_resync(), "not while updates still wait");
        held.pop();
        // Stale: later changes are dropped too, until the whole list has been sent.
        assert!(ledger.letter(note(), 1, Charge::List).is_err());
        held.clear();
        assert!(ledger.take_list_resync());
        assert!(!ledger.take_list_resync());
        assert!(ledger.letter(note(), 1, Charge::List).is_ok());
    }

    #[test]
    fn unread_replies_are_the_receivers_own_doing() {
        let ledger = Arc::new(Ledger::default());
        let held: Vec<_> = (0..REPLY_WINDOW.messages)
            .map(|_| ledger.letter(note(), 1, Charge::Reply).unwrap())
            .collect();
        assert_eq!(
            ledger.letter(note(), 1, Charge::Reply).err(),
            Some(Refusal::RepliesUnread)
        );
        drop(held);
        assert!(ledger.letter(note(), 1, Charge::Reply).is_ok());
    }
}
