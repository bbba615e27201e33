//! Signalling: the protocol types, the phonebook server, and the device's client.

pub mod access;
pub mod backoff;
pub mod client;
pub mod connection;
mod http;
mod hub;
pub mod limits;
pub mod local;
mod mailbox;
pub mod peerjs;
pub mod phonebook;
pub mod protocol;
pub mod sanitize;
pub mod sdp;
pub mod server;
mod socket;
pub mod transport;
pub mod whep;
