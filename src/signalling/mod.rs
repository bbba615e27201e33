//! Signalling: the protocol types, the phonebook server, and the device's client.

pub mod access;
pub mod client;
pub mod peerjs;
pub mod phonebook;
pub mod protocol;
pub mod server;
pub mod whep;
