//! Signalling: the protocol types, the phonebook server, the device's client, and the
//! events the device sends beside the protocol.

pub mod access;
pub mod backoff;
pub mod client;
pub mod connection;
pub mod events;
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
pub mod status;
pub mod transport;
pub mod whep;
