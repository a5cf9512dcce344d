//! The control socket: the daemon's server side and the CLI's client side.
//!
//! **Invariant:** the daemon answers requests from the same task that owns the jails and the
//! firewall ([`crate::daemon`]); this module only moves typed messages.

pub mod proto;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

pub use proto::{BanInfo, ErrorKind, JailStatus, PROTOCOL_VERSION, Request, Response};

use crate::config::Group;
use proto::{MAX_MESSAGE, MAX_REQUEST, RequestEnvelope, ResponseEnvelope};

/// How long the CLI waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("cannot reach the banctl daemon at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the banctl daemon failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an answer banctl cannot read: {0}")]
    Protocol(String),
    #[error("cannot create the control socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who may do what over the control socket (checked with the peer's credentials).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Members may change state, like root.
    pub admin_group: Option<Group>,
    /// Members may read state.
    pub read_group: Option<Group>,
}

impl Access {
    /// Root may do anything; `admin_group` members too; `read_group` members may read.
    pub fn allows(&self, uid: u32, groups: &[u32], request: &Request) -> bool {
        let member = |g: &Option<Group>| g.as_ref().is_some_and(|g| groups.contains(&g.gid));
        uid == 0 || member(&self.admin_group) || (!request.is_change() && member(&self.read_group))
    }

    fn denial(&self, request: &Request) -> String {
        let group = |g: &Option<Group>, role: &str| match g {
            Some(g) => format!("root or membership in group {:?} ({role})", g.name),
            None => "root".to_owned(),
        };
        if request.is_change() {
            format!(
                "permission denied: this change needs {}",
                group(&self.admin_group, "admin_group")
            )
        } else {
            let readers = match (&self.read_group, &self.admin_group) {
                (Some(r), _) => format!("root or membership in group {:?} (read_group)", r.name),
                (None, a) => group(a, "admin_group"),
            };
            format!("permission denied: reading needs {readers}")
        }
    }
}

/// The groups the peer process holds now: its effective group and its supplementary groups,
/// from `/proc/PID/status` of the pid the socket's credentials name (read at once, while the
/// connection is open), never from `/etc/group`: a process that dropped its supplementary
/// groups has none, one that was given a group has it. Only the process's own effective
/// group when the status cannot be read or names another user.
fn peer_groups(pid: Option<i32>, uid: u32, gid: u32) -> Vec<u32> {
    let status = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
    match status.as_deref().and_then(|s| groups_in_status(s, uid)) {
        Some(groups) => groups,
        None => vec![gid],
    }
}

/// The effective gid and the supplementary groups of a `/proc/PID/status` text, if its
/// effective uid is `uid`.
fn groups_in_status(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
    };
    // Uid: real effective saved fs.
    if field("Uid")?.get(1) != Some(&uid) {
        return None;
    }
    let mut groups = vec![*field("Gid")?.get(1)?];
    groups.extend(field("Groups")?);
    Some(groups)
}

/// A request from a client, with the channel to answer on.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Sends one request to the daemon and waits for its answer (blocking: the CLI has no runtime).
pub fn call(socket: &Path, request: Request) -> Result<Response, ControlError> {
    let connect = |source| ControlError::Connect {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(connect)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let envelope = RequestEnvelope {
        version: PROTOCOL_VERSION,
        request,
    };
    let mut line =
        serde_json::to_vec(&envelope).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_MESSAGE as u64)).read_line(&mut answer)?;
    let envelope: ResponseEnvelope =
        serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if envelope.version != PROTOCOL_VERSION {
        return Err(ControlError::Protocol(format!(
            "daemon speaks protocol version {}, this banctl speaks {PROTOCOL_VERSION}",
            envelope.version
        )));
    }
    Ok(envelope.response)
}

/// Binds the control socket (mode 0660, group `read_group`, else `admin_group`), replacing a
/// stale socket file.
pub fn bind(path: &Path, access: &Access) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if UnixStream::connect(path).is_ok() {
        let busy = std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another banctl daemon is listening there",
        );
        return Err(bind_err(busy));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(group) = access.read_group.as_ref().or(access.admin_group.as_ref()) {
        std::os::unix::fs::chown(path, None, Some(group.gid)).map_err(bind_err)?;
    }
    Ok(listener)
}

/// Connections from users other than root served at once; more are closed at once. Root's
/// connections are never refused, so an admin always gets through.
const MAX_CLIENTS: usize = 32;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts clients forever, forwarding each permitted request to the daemon's main task.
/// Each request is bounded before it is read: [`MAX_REQUEST`] bytes, [`REQUEST_TIMEOUT`],
/// and [`MAX_CLIENTS`] connections of other users than root at a time.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Incoming>, access: Access) {
    let access = std::sync::Arc::new(access);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let slot = match cred.uid() {
            0 => None,
            uid => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    tracing::warn!(
                        uid,
                        limit = MAX_CLIENTS,
                        "too many control connections: one refused"
                    );
                    continue;
                }
            },
        };
        let tx = tx.clone();
        let access = access.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, cred, tx, &access).await {
                tracing::debug!(error = %e, "control connection ended");
            }
            drop(slot);
        });
    }
}

async fn handle(
    stream: tokio::net::UnixStream,
    cred: tokio::net::unix::UCred,
    tx: mpsc::Sender<Incoming>,
    access: &Access,
) -> std::io::Result<()> {
    let groups = peer_groups(cred.pid(), cred.uid(), cred.gid());
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => return Ok(()),
        Ok(result) => {
            result?;
            dispatch(&line, &tx, |request| {
                if access.allows(cred.uid(), &groups, request) {
                    Ok(())
                } else {
                    tracing::warn!(uid = cred.uid(), ?request, "control request denied");
                    Err(access.denial(request))
                }
            })
            .await
        }
    };
    let envelope = ResponseEnvelope {
        version: PROTOCOL_VERSION,
        response,
    };
    let mut out = serde_json::to_vec(&envelope).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Reads one request line as the daemon does, before any permission check: bounded, UTF-8,
/// of this protocol version, a request this version knows. The error is the answer to send.
pub fn decode_request(line: &[u8]) -> Result<Request, Response> {
    let error = |kind, message: String| Response::Error { kind, message };
    if line.len() > MAX_REQUEST {
        return Err(error(
            ErrorKind::BadRequest,
            format!("request longer than {MAX_REQUEST} bytes"),
        ));
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(error(
            ErrorKind::BadRequest,
            "request is not valid UTF-8".to_owned(),
        ));
    };
    // Read the version first, so a future client gets "version" rather than "bad request".
    let version = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    if let Some(v) = version.filter(|&v| v != u64::from(PROTOCOL_VERSION)) {
        return Err(error(
            ErrorKind::Version,
            format!("request version {v}, daemon speaks {PROTOCOL_VERSION}"),
        ));
    }
    serde_json::from_str::<RequestEnvelope>(line)
        .map(|envelope| envelope.request)
        .map_err(|e| error(ErrorKind::BadRequest, e.to_string()))
}

async fn dispatch(
    line: &[u8],
    tx: &mpsc::Sender<Incoming>,
    permit: impl FnOnce(&Request) -> Result<(), String>,
) -> Response {
    let error = |kind, message: String| Response::Error { kind, message };
    let request = match decode_request(line) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    if let Err(message) = permit(&request) {
        return error(ErrorKind::PermissionDenied, message);
    }
    let (reply, answer) = oneshot::channel();
    if tx.send(Incoming { request, reply }).await.is_err() {
        return error(ErrorKind::Unavailable, "the daemon is shutting down".into());
    }
    answer
        .await
        .unwrap_or_else(|_| error(ErrorKind::Unavailable, "the daemon is shutting down".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_policy() {
        let group = |name: &str, gid| {
            Some(Group {
                name: name.into(),
                gid,
            })
        };
        let access = Access {
            admin_group: group("banctl-admin", 900),
            read_group: group("adm", 4),
        };
        let read = Request::List { jail: None };
        let change = Request::Reload;
        assert!(access.allows(0, &[0], &change));
        assert!(access.allows(1000, &[1000, 900], &change));
        assert!(access.allows(1000, &[1000, 4], &read));
        assert!(!access.allows(1000, &[1000, 4], &change));
        assert!(!access.allows(1000, &[1000], &read));
        assert!(
            access
                .denial(&change)
                .contains("\"banctl-admin\" (admin_group)")
        );
        let status =
            "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 900 \n";
        assert_eq!(groups_in_status(status, 1000), Some(vec![100, 4, 900]));
        assert_eq!(groups_in_status(status, 0), None);
        let none = Access::default();
        assert!(!none.allows(1000, &[1000], &read));
        assert_eq!(none.denial(&read), "permission denied: reading needs root");
    }
}
