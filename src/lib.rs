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
