//! Service manager notifications (systemd's `sd_notify` protocol), without libsystemd.
//!
//! Each notification is one datagram of `KEY=value` lines to the socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name written `@name`). Outside systemd the variable
//! is unset and every call does nothing. A failed send is logged, never fatal: the service
//! manager's view is not worth a ban.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, and how often the watchdog wants a ping.
pub struct ServiceManager {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> ServiceManager {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let bytes = name.as_encoded_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
                None => SocketAddr::from_pathname(&name),
            };
            match (addr, UnixDatagram::unbound()) {
                (Ok(addr), Ok(sock)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, socket = ?name, "NOTIFY_SOCKET unusable; no service notifications");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        ServiceManager { target, watchdog }
    }

    /// How often to ping: half the watchdog timeout, as systemd advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog).map(|d| d / 2)
    }

    /// The service is up: the table and the restored bans are in place.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading the configuration");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping; bans stay in the kernel");
    }

    /// The main loop is alive.
    pub fn ping(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(message.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "service notification not sent");
        }
    }
}
