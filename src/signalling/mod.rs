//! Signalling: the protocol types, the phonebook server, the device's client, and the
//! events the device sends beside the protocol.

pub mod access;
pub mod client;
pub mod events;
mod http;
pub mod limits;
mod mailbox;
pub mod peerjs;
pub mod phonebook;
pub mod protocol;
pub mod sanitize;
pub mod server;
mod socket;
pub mod whep;
