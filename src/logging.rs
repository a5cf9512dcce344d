//! The daemon's log: `tracing` to stderr (the journal under systemd), its level from
//! `BANCTL_LOG` at start and from `banctl log-level` at run time.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the running filter; set once by [`init`].
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// The level the log starts at, when `BANCTL_LOG` says nothing.
pub const DEFAULT_LEVEL: &str = "info";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogLevelError {
    #[error(
        "{0:?} is not a level (error, warn, info, debug, trace) nor a filter such as \"info,banctl::source=debug\""
    )]
    Invalid(String),
    #[error("this process's log level cannot be changed")]
    NotInstalled,
}

/// The filter for `wanted`. The NATS client logs every message at debug: only its warnings,
/// unless `wanted` names it.
fn filter(wanted: &str) -> Result<EnvFilter, LogLevelError> {
    let wanted = wanted.trim();
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    // Each part a level, or `target=level`: a bare word would silently name a target.
    let each_names_a_level = wanted.split(',').all(|part| {
        let level = part.rsplit_once('=').map_or(part, |(_, level)| level);
        LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim()))
    });
    if wanted.len() > 1024 || wanted.chars().any(char::is_control) || !each_names_a_level {
        return Err(LogLevelError::Invalid(wanted.to_owned()));
    }
    let full = if wanted.contains("async_nats") {
        wanted.to_owned()
    } else {
        format!("{wanted},async_nats=warn")
    };
    EnvFilter::try_new(full).map_err(|_| LogLevelError::Invalid(wanted.to_owned()))
}

/// Starts logging to stderr at `BANCTL_LOG`'s level (else [`DEFAULT_LEVEL`]).
pub fn init() {
    let wanted = std::env::var("BANCTL_LOG").unwrap_or_else(|_| DEFAULT_LEVEL.to_owned());
    let filter = filter(&wanted).unwrap_or_else(|_| {
        filter(DEFAULT_LEVEL).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter_reloading();
    let handle = builder.reload_handle();
    let _ = RELOAD.set(Box::new(move |f| {
        handle.reload(f).map_err(|e| e.to_string())
    }));
    builder.init();
}

/// Sets the running log level (`debug`, or a filter such as `info,banctl::source=debug`).
pub fn set_level(wanted: &str) -> Result<(), LogLevelError> {
    let filter = filter(wanted)?;
    let reload = RELOAD.get().ok_or(LogLevelError::NotInstalled)?;
    reload(filter).map_err(|_| LogLevelError::NotInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_are_checked() {
        for good in [
            "debug",
            "info,banctl::source=trace",
            "warn,async_nats=debug",
        ] {
            assert!(filter(good).is_ok(), "{good}");
        }
        for bad in ["", "loud", "info,=x=y", "debug\ninjected", "info,banctl"] {
            assert!(filter(bad).is_err(), "{bad:?}");
        }
    }
}
