//! The shared helpers of the tests and benches (tests/common) checked on their own, so a
//! figure a bench prints or a bound a test asserts does not rest on a broken reader.

mod common;

use std::io::Read;
use std::time::Duration;

use common::port::HeldPort;
use common::stats::{open_fds, percentile, proc_sample, rss_kib};

#[test]
fn percentiles_are_by_nearest_rank() {
    let values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    assert_eq!(percentile(&values, 0.0), Some(1));
    assert_eq!(percentile(&values, 0.5), Some(6));
    assert_eq!(percentile(&values, 0.95), Some(10));
    assert_eq!(percentile(&values, 1.0), Some(10));
    assert_eq!(percentile::<u32>(&[], 0.5), None);
}

#[test]
fn proc_readers_describe_this_process() {
    let me = std::process::id();
    let sample = proc_sample(me).expect("our own /proc/<pid>/stat");
    assert_eq!(sample.parent, std::os::unix::process::parent_id());
    let spin = std::time::Instant::now();
    while spin.elapsed() < Duration::from_millis(50) {
        std::hint::black_box(spin.elapsed());
    }
    let later = proc_sample(me).unwrap();
    assert!(later.cpu_seconds >= sample.cpu_seconds);
    assert!(rss_kib(me) > 0);
    assert!(open_fds(me).unwrap() >= 3);
    assert_eq!(proc_sample(u32::MAX), None);
}

/// A held port reaches a child as descriptor 3 with the socket-activation variables set
/// for the child's own pid, and stays the test's when the child is gone.
#[test]
fn a_held_port_is_passed_to_a_child_and_outlives_it() {
    let held = HeldPort::bind();
    let mut child = held
        .command("sh")
        .args([
            "-c",
            "[ \"$LISTEN_PID\" = \"$$\" ] && [ \"$LISTEN_FDS\" = 1 ] && [ -S /proc/self/fd/3 ] && echo ok",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out.trim(), "ok");
    // Still listening after the child exited: a new one can take it over.
    let connected = std::net::TcpStream::connect(("127.0.0.1", held.port));
    assert!(connected.is_ok(), "{connected:?}");
}
