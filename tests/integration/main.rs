//! banctl's integration tests: one test binary, one module per area.
//!
//! Tests that need the kernel run in their own network namespace (see `netns`); without root
//! they are skipped loudly, and under `cargo xtask test` (CI) they must run.

mod config;
mod containers;
mod daemon;
mod exit_codes;
mod fail2ban;
mod firewall;
mod fleet;
mod init;
mod journal;
mod lifecycle;
mod nats;
mod netns;
mod notify;
mod operator;
mod packaging;
mod permissions;
mod reliability;
mod reload;
mod source;
mod tester;
