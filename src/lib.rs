//! peercam: a WebRTC camera peer for single-board computers.
//!
//! A daemon on a Raspberry-Pi-class board registers itself as a *callee* in a phonebook.
//! People open the phonebook page in a browser, see which cameras are online (pushed
//! live), and call one with their name as metadata. The device rings; a person presses
//! accept or decline (or a policy answers), and on accept the browser gets the camera's
//! live H.264 video over WebRTC.
//!
//! The data path: the camera pipeline ([`media::pipeline`]) encodes once; the feed
//! ([`media::fanout`]) shares each access unit with every call and runs the camera only
//! while someone watches. The feed starts an [`media::source::EncodedSource`]: the
//! GStreamer pipeline ([`media::running`]) on a device, or access units replayed on tokio
//! time ([`media::replay`]) in tests. Each call has its own peer connection ([`rtc`]) that
//! packs the frames into RTP with timestamps from the encoder and turns PLI/FIR into
//! keyframe requests.
//!
//! Each call is a pure state machine ([`call`]); every call on the device is held by a
//! pure core ([`device::core`]: presses, do not disturb, the answer rules, the
//! indicators, on simulated time in its tests) that a thin IO shell ([`device`]) feeds
//! and obeys. Calls reach it through the caller's side ([`device::sides`]): our phonebook
//! ([`signalling`]), spoken over our versioned JSON protocol (`docs/protocol.md`) by one
//! client ([`signalling::connection`]) over a WebSocket or an in-process channel
//! ([`signalling::transport`], [`signalling::local`]), or a PeerJS server; the events
//! viewers get on the data channel are [`signalling::events`], the status
//! [`signalling::status`]. The device also calls out: its bell rings the household
//! through the phonebook with calls it places ([`call::Role`]). Presses come from [`gpio`]
//! backends, the terminal and the control socket, all as one [`control::Control`], and
//! every button is one row of [`buttons::BUTTONS`]; [`config`] merges the board profile, the site config and the
//! command line (each module owns its settings type); [`cli`] holds what the looking
//! commands print; [`app`] wires it all. No module depends on one that depends on it
//! (`tests/layering.rs` checks).

pub mod app;
pub mod buttons;
pub mod call;
pub mod cli;
pub mod config;
pub mod control;
pub mod device;
pub mod gpio;
pub mod host;
pub mod media;
pub mod rtc;
pub mod signalling;
pub mod systemd;
pub mod tls;
pub mod web;
