//! `exec` notifiers: a program run directly (never through a shell), the JSON event on its
//! stdin.
//!
//! The child gets an empty environment but `PATH`, `/` as its directory, a process group of
//! its own (killed whole at the timeout) and no capabilities: the daemon empties its
//! ambient set and, when it may, its bounding set (see `privilege`); the systemd unit sets
//! `SecureBits=noroot` so that a root child gains nothing at exec either.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Event, NotifyError};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The part of a failed program's stderr that is logged.
const MAX_STDERR: usize = 4 * 1024;

/// The placeholders an argument may hold.
pub const PLACEHOLDERS: [&str; 4] = ["{jail}", "{address}", "{prefix}", "{event}"];

/// `arg` with its placeholders replaced by the event's typed values (never log text).
fn expand(arg: &str, event: &Event) -> String {
    arg.replace("{jail}", &event.jail)
        .replace("{address}", &event.address.to_string())
        .replace("{prefix}", &event.prefix.to_string())
        .replace("{event}", event.event.as_str())
}

/// Runs `argv` with `body` on stdin; succeeds when it exits 0 within `timeout`.
pub async fn run(
    argv: &[String],
    event: &Event,
    body: &[u8],
    timeout: Duration,
) -> Result<(), NotifyError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut child = Command::new(program)
        .args(args.iter().map(|a| expand(a, event)))
        .env_clear()
        .env("PATH", PATH)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = child.id();
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    let exchange = async {
        if let Some(mut pipe) = stdin {
            match pipe.write_all(body).await {
                // A program that does not read its input is not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
        let mut kept = Vec::new();
        if let Some(mut pipe) = stderr {
            let mut chunk = [0u8; 1024];
            loop {
                let n = pipe.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                let room = MAX_STDERR.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
        let status = child.wait().await?;
        Ok::<_, NotifyError>((status, kept))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, _))) if status.success() => Ok(()),
        Ok(Ok((status, stderr))) => Err(NotifyError::Exit {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            // The program and whatever it started; `kill_on_drop` covers the program alone
            // should the group be gone already.
            if let Some(pid) = group.and_then(|p| i32::try_from(p).ok())
                && let Err(e) = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
            {
                tracing::debug!(error = %e, "killing a notifier's process group");
            }
            Err(NotifyError::Timeout(timeout))
        }
    }
}

/// Checks an `exec` argv: an absolute program path that exists, placeholders only in the
/// arguments.
pub fn validate(argv: &[String]) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("the command is empty".into());
    };
    if !program.starts_with('/') {
        return Err(format!(
            "{program:?}: the program is named by its absolute path (no PATH search, no shell)"
        ));
    }
    if PLACEHOLDERS.iter().any(|p| program.contains(p)) {
        return Err("placeholders go in the arguments, not in the program path".into());
    }
    match std::fs::metadata(program) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{program} is not a file")),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::EventKind;
    use super::*;

    #[test]
    fn only_typed_values_are_substituted() {
        let event = Event::new(
            EventKind::Unban,
            "sshd",
            "2001:db8::7".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
            None,
            None,
            "manual",
            vec!["{address} $(id)".into()],
        );
        assert_eq!(
            expand("--{event}={jail}:{address}:{prefix} {matched}", &event),
            "--unban=sshd:2001:db8::7:2001:db8::/64 {matched}"
        );
    }

    #[test]
    fn programs_are_absolute_paths() {
        assert!(validate(&["/bin/true".into()]).is_ok());
        assert!(validate(&["true".into()]).is_err());
        assert!(validate(&[]).is_err());
        assert!(validate(&["/nonexistent/x".into()]).is_err());
        assert!(validate(&["/{jail}".into()]).is_err());
    }
}
