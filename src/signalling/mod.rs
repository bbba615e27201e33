//! Signalling: the protocol types, the phonebook server, the device's client, and the
//! events the device sends beside the protocol.

pub mod access;
pub mod client;
pub mod events;
pub mod peerjs;
pub mod phonebook;
pub mod protocol;
pub mod server;
pub mod whep;
