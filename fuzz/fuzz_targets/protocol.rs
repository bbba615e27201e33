//! Frames from a few connections into the phonebook, and every frame through both
//! decoders.
//!
//! The input is a list of records separated by 0xFF, a byte UTF-8 never uses. A record's
//! first byte says who sends it and how; the rest is the frame, read as lossy UTF-8:
//!
//! * bits 0-1: which of the three connections;
//! * bits 2-3: 0 or 1 a text frame, 2 the connection goes away and a new one takes its
//!   place, 3 the frame parsed first and handed over as a message (the WHEP side's path);
//! * bit 4: the new connection of a 2 skips `hello`;
//! * bit 5: the frame comes on the connection's previous, closed id (a late frame).
//!
//! Besides not panicking, the phonebook must never address a connection that is gone,
//! and must hold no callee and no call once everyone has left.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use peercam::signalling::phonebook::{ConnId, Output, Phonebook};
use peercam::signalling::protocol::{ClientMessage, ServerMessage};

const CONNS: usize = 3;

const HELLO: &str = r#"{"type":"hello","version":1}"#;

struct Harness {
    book: Phonebook,
    slots: [ConnId; CONNS],
    previous: [Option<ConnId>; CONNS],
    next: ConnId,
    gone: BTreeSet<ConnId>,
}

impl Harness {
    fn new() -> Self {
        let mut harness = Harness {
            book: Phonebook::new(Vec::new()),
            slots: [0; CONNS],
            previous: [None; CONNS],
            next: 1,
            gone: BTreeSet::new(),
        };
        for slot in 0..CONNS {
            harness.slots[slot] = harness.open(true);
        }
        harness
    }

    fn open(&mut self, hello: bool) -> ConnId {
        let conn = self.next;
        self.next += 1;
        self.book.connect(conn);
        if hello {
            let out = self.book.handle_text(conn, HELLO);
            assert!(
                matches!(out.as_slice(), [Output::Send(c, ServerMessage::Welcome { .. })] if *c == conn),
                "hello got {out:?}"
            );
        }
        conn
    }

    /// Closes `conn` as the server does, and puts a new connection in its slot.
    fn close(&mut self, conn: ConnId, hello: bool) {
        if self.gone.contains(&conn) {
            return;
        }
        self.gone.insert(conn);
        let out = self.book.disconnect(conn);
        self.check(&out);
        if let Some(slot) = self.slots.iter().position(|c| *c == conn) {
            self.previous[slot] = Some(conn);
            self.slots[slot] = self.open(hello);
        }
    }

    fn check(&self, out: &[Output]) {
        for output in out {
            let (Output::Send(to, _) | Output::Close(to)) = output;
            assert!(
                !self.gone.contains(to),
                "{output:?} addresses a connection that is gone"
            );
        }
    }

    fn frame(&mut self, control: u8, text: &str) {
        let slot = usize::from(control & 3) % CONNS;
        let conn = match self.previous[slot] {
            Some(old) if control & 0x20 != 0 => old,
            _ => self.slots[slot],
        };
        let out = match (control >> 2) & 3 {
            2 => {
                let live = self.slots[slot];
                self.close(live, control & 0x10 == 0);
                return;
            }
            3 => match ClientMessage::parse(text) {
                Ok(msg) => self.book.handle(conn, msg),
                Err(_) => return,
            },
            _ => self.book.handle_text(conn, text),
        };
        self.check(&out);
        for output in &out {
            if let Output::Close(closed) = output {
                self.close(*closed, true);
            }
        }
    }

    fn finish(mut self) {
        for slot in 0..CONNS {
            let conn = self.slots[slot];
            self.gone.insert(conn);
            let out = self.book.disconnect(conn);
            self.check(&out);
        }
        assert_eq!(self.book.active_calls(), 0, "calls outlived everyone");
        assert!(self.book.callees().is_empty(), "callees outlived everyone");
    }
}

/// Whatever a decoder accepts must survive being written out and read again.
fn decode(text: &str) {
    if let Ok(msg) = ClientMessage::parse(text) {
        let again = serde_json::to_string(&msg).expect("client messages serialise");
        assert_eq!(ClientMessage::parse(&again), Ok(msg));
    }
    if let Ok(msg) = serde_json::from_str::<ServerMessage>(text) {
        let again = serde_json::from_str::<ServerMessage>(&msg.to_text()).ok();
        assert_eq!(again, Some(msg));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut harness = Harness::new();
    for record in data.split(|b| *b == 0xff) {
        let Some((&control, frame)) = record.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(frame);
        decode(&text);
        harness.frame(control, &text);
    }
    harness.finish();
});
