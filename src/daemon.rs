//! The daemon: wires sources → filters/jails → firewall, and answers the control socket.
//!
//! **Invariant:** one task (the loop in [`run`]) owns every jail and the firewall handle.
//! Sources and control connections only send it messages over bounded channels, so no lock
//! guards ban state and a burst of lines becomes one netlink batch.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::addr::IpNet;
use crate::config::Config;
use crate::control::{self, BanInfo, ErrorKind, Incoming, JailStatus, Request, Response};
use crate::firewall::{Ban, Element, Firewall, FirewallError};
use crate::jail::{Jail, Outcome};
use crate::privilege;
use crate::source::{self, FileFollower, LineBatch};

/// Batches of lines waiting for the main loop; sources wait when it is full.
const LINE_QUEUE: usize = 1024;
/// Line batches folded into one round of bans.
const BATCHES_PER_ROUND: usize = 64;
/// How often expired failure windows are dropped (and the sources checked).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("cannot handle signals: {0}")]
    Signal(String),
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
}

/// The state the main loop owns.
pub struct Daemon {
    jails: Vec<Jail>,
    /// For each logpath pattern (source index), the jails reading it.
    routes: Vec<Vec<usize>>,
    firewall: Firewall,
    /// The host's own addresses, given to every jail.
    own: Arc<[IpNet]>,
    sources: Sources,
    /// Where the configuration is read from again on reload.
    config_path: PathBuf,
}

/// The running log sources: the patterns followed and the task following them.
struct Sources {
    patterns: Vec<String>,
    task: JoinHandle<Result<(), source::SourceError>>,
    tx: mpsc::Sender<LineBatch>,
}

impl Sources {
    fn start(patterns: Vec<String>, tx: mpsc::Sender<LineBatch>) -> Result<Sources, DaemonError> {
        let follower = FileFollower::new(&patterns)?;
        let task = tokio::spawn(source::run_files(follower, tx.clone()));
        Ok(Sources { patterns, task, tx })
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The distinct logpath patterns of `jails`, and for each the indexes of the jails reading it.
fn routing(jails: &[crate::config::JailConfig]) -> (Vec<String>, Vec<Vec<usize>>) {
    let mut patterns: Vec<String> = Vec::new();
    let mut routes: Vec<Vec<usize>> = Vec::new();
    for (j, jail) in jails.iter().enumerate() {
        for path in &jail.logpaths {
            let i = patterns.iter().position(|p| p == path).unwrap_or_else(|| {
                patterns.push(path.clone());
                routes.push(Vec::new());
                patterns.len() - 1
            });
            routes[i].push(j);
        }
    }
    (patterns, routes)
}

/// Runs the daemon until `shutdown` completes. The table and its bans stay in the kernel.
/// SIGHUP (or `banctl reload`) reads `config_path` again.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    privilege::require_net_admin()?;
    let mut firewall = Firewall::open()?;
    let rules: Vec<_> = config.jails.iter().map(|j| j.rules()).collect();
    firewall.apply_layout(&rules)?;

    let (patterns, routes) = routing(&config.jails);
    let (line_tx, mut lines) = mpsc::channel(LINE_QUEUE);
    let sources = Sources::start(patterns, line_tx)?;

    let access = control::Access {
        admin_group: config.daemon.admin_group.clone(),
        read_group: config.daemon.read_group.clone(),
    };
    let listener = control::bind(&config.daemon.socket, &access)?;
    // Giving the socket its group was the last step needing more than KEPT.
    privilege::drop_all_but_kept()?;
    let (ctl_tx, mut requests) = mpsc::channel(64);
    let server = tokio::spawn(control::serve(listener, ctl_tx, access));
    let mut hangup = signal::unix::signal(signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Signal(e.to_string()))?;

    let own: Arc<[IpNet]> = own_addresses().into();
    tracing::debug!(
        count = own.len(),
        "own addresses (never banned with ignoreself)"
    );
    let jails = config
        .jails
        .into_iter()
        .map(|c| Jail::new(c).with_own_addresses(own.clone()));
    let mut daemon = Daemon {
        jails: jails.collect(),
        routes,
        firewall,
        own,
        sources,
        config_path,
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    tracing::info!(jails = daemon.jails.len(), socket = %config.daemon.socket.display(), "banctl daemon ready");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(batch) = lines.recv() => {
                let mut round = vec![batch];
                while round.len() < BATCHES_PER_ROUND {
                    match lines.try_recv() {
                        Ok(more) => round.push(more),
                        Err(_) => break,
                    }
                }
                daemon.on_lines(&round);
            }
            Some(Incoming { request, reply }) = requests.recv() => {
                let response = daemon.handle(request);
                if reply.send(response).is_err() {
                    tracing::debug!("control client left before the answer");
                }
            }
            Some(()) = hangup.recv() => {
                tracing::info!("SIGHUP: reloading {}", daemon.config_path.display());
                daemon.reload();
            }
            _ = sweep.tick() => daemon.sweep(SystemTime::now()),
            () = &mut shutdown => break,
        }
    }
    server.abort();
    if let Err(e) = std::fs::remove_file(&config.daemon.socket) {
        tracing::debug!(error = %e, "removing control socket");
    }
    tracing::info!("banctl daemon stopped; bans stay in the kernel");
    Ok(())
}

impl Daemon {
    /// Filters lines through their jails and writes the resulting bans in one batch.
    pub fn on_lines(&mut self, batches: &[LineBatch]) {
        let mut bans = Vec::new();
        for batch in batches {
            for &source in &batch.sources {
                for &j in self.routes.get(source).into_iter().flatten() {
                    let jail = &mut self.jails[j];
                    for line in &batch.lines {
                        match jail.on_line(line, batch.read_at) {
                            Some(Outcome::Ban(ban)) => bans.push(ban),
                            Some(Outcome::Ignored) => {
                                tracing::debug!(
                                    jail = jail.name(),
                                    line = line.as_str(),
                                    "ignored address"
                                )
                            }
                            Some(Outcome::Counted { .. }) | None => {}
                        }
                    }
                }
            }
        }
        if bans.is_empty() {
            return;
        }
        match self.write_bans(&bans) {
            Ok(()) => {
                for ban in &bans {
                    tracing::info!(jail = ban.jail.as_str(), address = %ban.net, bantime = %ban.time, "ban");
                }
            }
            Err(e) => tracing::error!(error = %e, count = bans.len(), "writing bans failed"),
        }
    }

    /// Writes bans; if the kernel lost our table or sets, restores the layout and retries once.
    fn write_bans(&mut self, bans: &[Ban]) -> Result<(), FirewallError> {
        match self.firewall.ban(bans) {
            Err(FirewallError::Netlink(e)) if e.errno() == Some(libc::ENOENT) => {
                tracing::warn!("banctl's table or sets were missing: restoring the layout");
                let rules: Vec<_> = self.jails.iter().map(|j| j.config().rules()).collect();
                self.firewall.apply_layout(&rules)?;
                self.firewall.ban(bans)
            }
            other => other,
        }
    }

    pub fn sweep(&mut self, now: SystemTime) {
        for jail in &mut self.jails {
            jail.sweep(now);
        }
        if self.sources.task.is_finished() {
            tracing::error!("log sources stopped; restarting them");
            match Sources::start(self.sources.patterns.clone(), self.sources.tx.clone()) {
                Ok(sources) => self.sources = sources,
                Err(e) => tracing::error!(error = %e, "cannot restart log sources"),
            }
        }
    }

    /// Reads the configuration again and applies it; an invalid one changes nothing.
    ///
    /// Order: validate everything, start the new sources (if the logpaths changed), then apply
    /// the new layout in one batch; only when all of that worked is the running state replaced.
    /// Jails that keep their name keep their failure windows; their sets (and bans) stay.
    pub fn reload(&mut self) -> Response {
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays:\n{e}");
                return Response::Error {
                    kind: ErrorKind::Config,
                    message: e.to_string(),
                };
            }
        };
        let (patterns, routes) = routing(&config.jails);
        let new_sources = if patterns == self.sources.patterns {
            None
        } else {
            match Sources::start(patterns, self.sources.tx.clone()) {
                Ok(s) => Some(s),
                Err(e) => {
                    return Response::Error {
                        kind: ErrorKind::Config,
                        message: e.to_string(),
                    };
                }
            }
        };
        let rules: Vec<_> = config.jails.iter().map(|j| j.rules()).collect();
        if let Err(e) = self.firewall.apply_layout(&rules) {
            tracing::error!(error = %e, "reload refused by the kernel, the running configuration stays");
            return Self::firewall_error(e);
        }
        if let Some(sources) = new_sources {
            self.sources = sources;
        }
        let mut old: HashMap<String, Jail> = self
            .jails
            .drain(..)
            .map(|j| (j.name().to_owned(), j))
            .collect();
        let before: Vec<String> = old.keys().cloned().collect();
        self.jails = config
            .jails
            .into_iter()
            .map(|c| match old.remove(&c.name) {
                Some(jail) => jail.reconfigure(c),
                None => Jail::new(c).with_own_addresses(self.own.clone()),
            })
            .collect();
        self.routes = routes;
        let jails: Vec<String> = self.jails.iter().map(|j| j.name().to_owned()).collect();
        let added: Vec<String> = jails
            .iter()
            .filter(|j| !before.contains(j))
            .cloned()
            .collect();
        let mut removed: Vec<String> = old.into_keys().collect();
        removed.sort();
        tracing::info!(?jails, ?added, ?removed, "configuration reloaded");
        Response::Reloaded {
            jails,
            added,
            removed,
        }
    }

    fn jail_index(&self, name: &str) -> Result<usize, Response> {
        self.jails
            .iter()
            .position(|j| j.name() == name)
            .ok_or_else(|| Response::Error {
                kind: ErrorKind::UnknownJail,
                message: format!("no jail named {name:?}"),
            })
    }

    /// The jails a request is about: one by name, or all.
    fn selected(&self, jail: Option<&str>) -> Result<Vec<usize>, Response> {
        match jail {
            Some(name) => self.jail_index(name).map(|i| vec![i]),
            None => Ok((0..self.jails.len()).collect()),
        }
    }

    /// Answers one control request.
    pub fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::List { jail } => self.list(jail.as_deref()),
            Request::Ban { jail, target, time } => self.manual_ban(&jail, target, time),
            Request::Unban { target, jail } => self.unban(target, jail.as_deref()),
            Request::UnbanAll { jail } => self.unban_all(jail.as_deref()),
            Request::Status { jail } => self.status(jail.as_deref()),
            Request::Reload => Ok(self.reload()),
        };
        result.unwrap_or_else(|response| response)
    }

    fn firewall_error(e: FirewallError) -> Response {
        Response::Error {
            kind: ErrorKind::Firewall,
            message: e.to_string(),
        }
    }

    fn bans_of(&mut self, j: usize) -> Result<Vec<BanInfo>, Response> {
        let jail = self.jails[j].name().to_owned();
        let elements = self.firewall.list(&jail).map_err(Self::firewall_error)?;
        Ok(elements.into_iter().map(|e| ban_info(&jail, &e)).collect())
    }

    fn list(&mut self, jail: Option<&str>) -> Result<Response, Response> {
        let mut bans = Vec::new();
        for j in self.selected(jail)? {
            bans.extend(self.bans_of(j)?);
        }
        Ok(Response::Bans { bans })
    }

    fn manual_ban(
        &mut self,
        jail: &str,
        target: IpNet,
        time: Option<crate::duration::BanTime>,
    ) -> Result<Response, Response> {
        let j = self.jail_index(jail)?;
        let config = self.jails[j].config();
        if config.too_broad(&target) {
            return Err(Response::Error {
                kind: ErrorKind::TooBroad,
                message: format!(
                    "{target} is broader than jail {jail}'s min_prefix (/{}): not banned",
                    config.min_prefix.for_addr(target.addr())
                ),
            });
        }
        if self.jails[j].ignores(&target) {
            return Err(Response::Error {
                kind: ErrorKind::Ignored,
                message: format!(
                    "{target} is covered by jail {jail}'s ignoreip or is loopback: not banned"
                ),
            });
        }
        let time = time.unwrap_or(config.bantime);
        let ban = Ban {
            jail: jail.to_owned(),
            net: target,
            time,
        };
        self.write_bans(std::slice::from_ref(&ban))
            .map_err(Self::firewall_error)?;
        self.jails[j].forget(&target);
        tracing::info!(jail, address = %target, bantime = %time, "manual ban");
        Ok(Response::Banned {
            jail: jail.to_owned(),
            target,
            time,
        })
    }

    /// Removes every ban that equals `target` or covers it, in the selected jails, in one batch.
    fn unban(&mut self, target: IpNet, jail: Option<&str>) -> Result<Response, Response> {
        let mut removed = Vec::new();
        for j in self.selected(jail)? {
            removed.extend(
                self.bans_of(j)?
                    .into_iter()
                    .filter(|b| b.address.covers(&target)),
            );
        }
        if removed.is_empty() {
            let scope = jail.map_or("any jail".to_owned(), |j| format!("jail {j}"));
            return Err(Response::Error {
                kind: ErrorKind::NotBanned,
                message: format!("{target} is not banned in {scope}"),
            });
        }
        self.lift(&removed)?;
        Ok(Response::Unbanned { removed })
    }

    /// Removes every ban of the selected jails in one batch.
    fn unban_all(&mut self, jail: Option<&str>) -> Result<Response, Response> {
        let mut removed = Vec::new();
        for j in self.selected(jail)? {
            removed.extend(self.bans_of(j)?);
        }
        self.lift(&removed)?;
        Ok(Response::Unbanned { removed })
    }

    /// Deletes the given bans in one batch and forgets the addresses' failures.
    fn lift(&mut self, bans: &[BanInfo]) -> Result<(), Response> {
        if bans.is_empty() {
            return Ok(());
        }
        let items: Vec<(String, IpNet)> =
            bans.iter().map(|b| (b.jail.clone(), b.address)).collect();
        self.firewall.unban(&items).map_err(Self::firewall_error)?;
        for b in bans {
            for jail in &mut self.jails {
                jail.forget(&b.address);
            }
            tracing::info!(jail = b.jail.as_str(), address = %b.address, "unban");
        }
        Ok(())
    }

    fn status(&mut self, jail: Option<&str>) -> Result<Response, Response> {
        let mut jails = Vec::new();
        for j in self.selected(jail)? {
            let active_bans = self.bans_of(j)?.len();
            let jail = &self.jails[j];
            let dropped = self
                .firewall
                .dropped(jail.name())
                .map_err(Self::firewall_error)?;
            let c = jail.config();
            jails.push(JailStatus {
                name: c.name.clone(),
                filter: c.filter_name.clone(),
                sources: c.logpaths.iter().map(|p| format!("file:{p}")).collect(),
                ports: c.ports.iter().map(ToString::to_string).collect(),
                protocol: c.protocol.to_string(),
                maxretry: c.maxretry,
                findtime_s: c.findtime.as_secs(),
                bantime: c.bantime,
                tracked: jail.tracked(),
                active_bans,
                dropped_packets: dropped.packets,
                dropped_bytes: dropped.bytes,
            });
        }
        Ok(Response::Status { jails })
    }
}

/// The addresses of this host's interfaces (what `ignoreself` protects).
pub fn own_addresses() -> Vec<IpNet> {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the host's addresses; ignoreself covers loopback only");
            return Vec::new();
        }
    };
    let mut own: Vec<IpNet> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .map(IpNet::host)
        .collect();
    own.sort();
    own.dedup();
    own
}

pub fn ban_info(jail: &str, e: &Element) -> BanInfo {
    BanInfo {
        jail: jail.to_owned(),
        address: e.net,
        expires_in_s: e.expires_in.map(|d| d.as_secs()),
        bantime_s: e.timeout.map(|d| d.as_secs()),
    }
}
