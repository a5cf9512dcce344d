pub mod addr;
pub mod config;
pub mod duration;
pub mod filter;
pub mod firewall;
