//! banctl's integration tests: one test binary, one module per area.

mod firewall;
mod netns;
