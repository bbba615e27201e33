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
//! while someone watches; each call has its own peer connection ([`rtc`]) that packs the
//! frames into RTP with timestamps from the encoder and turns PLI/FIR into keyframe
//! requests. Calls are pure state machines ([`call`]) driven by the device task
//! ([`device`]), which talks to the phonebook ([`signalling`]) over our versioned JSON
//! protocol (`docs/protocol.md`). Presses come from [`gpio`] backends; [`config`] merges
//! the board profile, the site config and the command line; [`app`] wires it all.

pub mod app;
pub mod call;
pub mod config;
pub mod control;
pub mod device;
pub mod gpio;
pub mod media;
pub mod rtc;
pub mod signalling;
pub mod systemd;
pub mod tls;
pub mod web;
