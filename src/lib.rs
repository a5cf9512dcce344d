//! banctl: an nftables-native intrusion-prevention daemon and its CLI.
//!
//! Data flow: [`source`] (log lines) → [`filter`] (failures) → [`jail`] (ban decisions) →
//! [`firewall`] (nftables set elements over netlink); [`control`] serves the CLI; [`daemon`]
//! wires them. See ARCHITECTURE.md.

pub mod addr;
pub mod ban;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod engine;
pub mod fail2ban;
pub mod filter;
pub mod filter_spec;
pub mod firewall;
pub mod fleet;
pub mod init;
pub mod instance;
pub mod jail;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod privilege;
pub mod sd_notify;
pub mod source;
pub mod state;
pub mod suggest;

/// The runtime of one of the daemon's threads (the main loop, the sources, the control and
/// metrics servers, the fleet link): that thread alone, with I/O and timers. Each waits on a
/// handful of descriptors, so a poll takes up to 64 ready events where tokio takes 1,024:
/// that keeps 12 KB per runtime off the heap, and descriptors ready beyond 64 are taken by
/// the next poll.
pub fn thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(64)
        .build()
}
