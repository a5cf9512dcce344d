//! One daemon per network namespace and per state directory.
//!
//! Two daemons on one kernel would each "repair" what the other writes, and two daemons on one
//! state store would each overwrite the other's promises. Before it touches either, a daemon
//! claims both:
//! - the network namespace, by binding the abstract Unix socket `@banctl-daemon` (abstract
//!   names are per network namespace, vanish with the process, and need no file). The holder
//!   answers whoever connects with its pid and state directory, so that the refusal names
//!   them;
//! - the state directory, by an exclusive lock on `daemon.lock` in it, which holds the pid.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const NAME: &[u8] = b"banctl-daemon";
const LOCK_FILE: &str = "daemon.lock";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    #[error(
        "another banctl daemon runs in this network namespace ({other}): two daemons on one \
         kernel would undo each other's changes; stop it first"
    )]
    Namespace { other: String },
    #[error(
        "another banctl daemon ({other}) uses the state directory {}: stop it first",
        dir.display()
    )]
    StateDir { dir: PathBuf, other: String },
    #[error("cannot claim {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// What this daemon holds; released when dropped (and by the kernel when the process ends).
pub struct Instance {
    _lock: std::fs::File,
    /// The namespace's name, until [`Instance::answer`] hands it to its thread.
    listener: Option<UnixListener>,
    state_dir: PathBuf,
}

impl Instance {
    /// Claims the network namespace and `state_dir` (created if missing).
    pub fn claim(state_dir: &Path) -> Result<Instance, InstanceError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| InstanceError::Io { what, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io("the state directory"))?;
        let path = state_dir.join(LOCK_FILE);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("the state directory's lock"))?;
        if lock.try_lock().is_err() {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            return Err(InstanceError::StateDir {
                dir: state_dir.to_owned(),
                other: format!("pid {}", pid.trim()),
            });
        }
        let me = format!("{}\n", std::process::id());
        lock.set_len(0).map_err(io("the state directory's lock"))?;
        (&lock)
            .write_all(me.as_bytes())
            .map_err(io("the state directory's lock"))?;
        let addr = SocketAddr::from_abstract_name(NAME).map_err(io("the namespace's name"))?;
        let listener = match UnixListener::bind_addr(&addr) {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(InstanceError::Namespace {
                    other: who_holds(&addr),
                });
            }
            Err(e) => return Err(io("the network namespace")(e)),
        };
        Ok(Instance {
            _lock: lock,
            listener: Some(listener),
            state_dir: state_dir.to_owned(),
        })
    }

    /// Answers, on a thread of its own, whoever asks who holds the namespace (a second
    /// daemon, to name this one). Called once capabilities are dropped: the thread starts
    /// with what the daemon kept.
    pub fn answer(&mut self) {
        if let Some(listener) = self.listener.take() {
            answer_who(listener, &self.state_dir);
        }
    }
}

/// Tells whoever connects who holds the namespace, on a thread of its own.
fn answer_who(listener: UnixListener, state_dir: &Path) {
    let answer = format!(
        "pid {}, state directory {}",
        std::process::id(),
        state_dir.display()
    );
    let spawned = std::thread::Builder::new()
        .name("banctl-instance".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = conn.write_all(answer.as_bytes());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot answer who holds the network namespace");
    }
}

/// What the holder of `addr` says of itself.
fn who_holds(addr: &SocketAddr) -> String {
    let asked = UnixStream::connect_addr(addr).and_then(|conn| {
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut text = String::new();
        conn.take(512).read_to_string(&mut text)?;
        Ok(text)
    });
    match asked {
        Ok(text) if !text.is_empty() => text,
        _ => "it does not say who it is".to_owned(),
    }
}
