//! A loopback port that the test holds for as long as it runs, handed to every `peercam`
//! it starts by socket activation (`$LISTEN_FDS`/`$LISTEN_PID`, descriptor 3): a phonebook
//! that is killed and started again comes back on the same port, and no other program can
//! take the port in between (as it could if the test bound port 0, read the number and
//! closed the socket).

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A listening socket on 127.0.0.1 owned by the test.
pub struct HeldPort {
    listener: TcpListener,
    /// The port it listens on.
    pub port: u16,
}

impl HeldPort {
    /// Listens on a port of the kernel's choosing on 127.0.0.1.
    pub fn bind() -> HeldPort {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        HeldPort { listener, port }
    }

    /// A command that runs `program` with this socket as its descriptor 3 and the
    /// socket-activation variables naming it. A shell sets `$LISTEN_PID` to its own pid and
    /// then execs the program, which keeps that pid.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", program])
            .env("LISTEN_FDS", "1");
        let fd = self.listener.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made,
        // on descriptors the child inherited.
        unsafe {
            command.pre_exec(move || pass_as_fd3(fd));
        }
        command
    }
}

/// Puts `fd` at descriptor 3, where socket activation expects it, open across exec.
fn pass_as_fd3(fd: RawFd) -> std::io::Result<()> {
    const TARGET: RawFd = 3;
    // SAFETY: plain descriptor calls; dup2 clears close-on-exec on the copy, and when the
    // socket already is descriptor 3 the flag is cleared by hand.
    let rc = unsafe {
        if fd == TARGET {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, TARGET)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
