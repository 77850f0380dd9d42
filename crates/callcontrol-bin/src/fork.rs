//! Becoming a daemon: the classic double fork, done before the tokio runtime
//! or any other thread exists (after `fork` only the calling thread lives).
//!
//! The parent does not exit at once: it waits on a pipe until the daemon
//! says it is serving (or why it could not start), so `call-control` exits 0
//! only when the socket is ready, and with the reason and 1 otherwise — what
//! an init script needs.
//!
//! This is the only module with `unsafe`: each block is one libc call on
//! plain integers, with the invariant stated next to it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

/// The daemon's end of the start-up pipe.
#[derive(Debug)]
pub struct Ready {
    pipe: Option<File>,
}

impl Ready {
    /// For a process that did not fork: reporting does nothing.
    pub fn none() -> Ready {
        Ready { pipe: None }
    }
    /// Tells the waiting parent the outcome (once).
    pub fn report(&mut self, outcome: Result<(), String>) {
        if let Some(mut p) = self.pipe.take() {
            let msg = match outcome {
                Ok(()) => "OK".to_string(),
                Err(e) => format!("ERR{e}"),
            };
            let _ = p.write_all(msg.as_bytes());
        }
    }
}

fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe(2) and are owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

fn fork() -> std::io::Result<i32> {
    // SAFETY: called while the process has a single thread (before the
    // runtime and the journal thread start), so the child inherits no lock
    // held by another thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid)
}

/// Forks into the background. Returns in the daemon (the grandchild) with
/// its [`Ready`]; the original process waits for the report and exits with
/// it; the intermediate child exits at once.
pub fn daemonize() -> std::io::Result<Ready> {
    let (mut reader, writer) = pipe()?;
    if fork()? > 0 {
        drop(writer);
        let mut msg = String::new();
        let _ = reader.read_to_string(&mut msg);
        if msg == "OK" {
            std::process::exit(0);
        }
        let why = msg
            .strip_prefix("ERR")
            .unwrap_or("the daemon exited during start-up");
        eprintln!("call-control: {why}");
        std::process::exit(1);
    }
    drop(reader);
    // SAFETY: plain syscall; makes the child a session leader, detached from
    // the terminal.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if fork()? > 0 {
        // The intermediate child: exit without running destructors or
        // atexit handlers that belong to the daemon.
        // SAFETY: _exit never returns and touches no shared state.
        unsafe { libc::_exit(0) };
    }
    std::env::set_current_dir("/")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let fd = null.into_raw_fd();
    for target in 0..3 {
        // SAFETY: `fd` is an open descriptor and 0..3 are the standard ones;
        // dup2 replaces them atomically.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if fd > 2 {
        // SAFETY: `fd` is ours (from into_raw_fd) and no longer used.
        unsafe { libc::close(fd) };
    }
    Ok(Ready { pipe: Some(writer) })
}
