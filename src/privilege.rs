//! Least privilege: the daemon keeps only the capabilities it needs.
//!
//! **Invariants:** once the control socket is bound, the daemon holds `CAP_NET_ADMIN`
//! (nftables) and `CAP_DAC_READ_SEARCH` (reading root-only logs) and nothing else, also when
//! started by hand as root. The programs it runs (`exec` notifiers) get no capability: its
//! ambient set is empty, and so is its bounding set when it may empty it (`CAP_SETPCAP`, held
//! when started by hand as root); under systemd, whose unit leaves no `CAP_SETPCAP`, the unit's
//! `SecureBits=noroot` keeps a root child from gaining any at exec.

use caps::{CapSet, Capability, CapsHashSet};

/// What the running daemon keeps.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_DAC_READ_SEARCH];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivilegeError {
    #[error(
        "banctl daemon needs CAP_NET_ADMIN to write nftables: run it as root, or from its systemd \
         unit (AmbientCapabilities=CAP_NET_ADMIN CAP_DAC_READ_SEARCH)"
    )]
    NoNetAdmin,
    #[error("cannot drop capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
}

/// Refuses to go on without `CAP_NET_ADMIN`.
pub fn require_net_admin() -> Result<(), PrivilegeError> {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN)? {
        Ok(())
    } else {
        Err(PrivilegeError::NoNetAdmin)
    }
}

/// Drops every capability but [`KEPT`] from this thread's sets (threads started later inherit
/// them), and empties the bounding set when allowed to (`CAP_SETPCAP`, dropped last): the
/// bounding set only limits what a program gains at exec, and nothing the daemon runs needs
/// any capability.
pub fn drop_all_but_kept() -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    // Nothing is handed on to programs run later.
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        let kept: CapsHashSet = caps::read(None, set)?
            .intersection(&keep)
            .copied()
            .collect();
        caps::set(None, set, &kept)?;
    }
    tracing::debug!(kept = ?KEPT, "capabilities dropped");
    Ok(())
}
