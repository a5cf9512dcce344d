//! The daemon: wires sources → filters/jails → firewall, and answers the control socket.
//!
//! **Invariant:** one task (the loop in [`run`]) owns every jail and the firewall handle.
//! Sources and control connections only send it messages over bounded channels, so no lock
//! guards ban state and a burst of lines becomes one netlink batch.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::addr::IpNet;
use crate::config::Config;
use crate::control::{self, BanInfo, ErrorKind, Incoming, JailStatus, Request, Response};
use crate::firewall::{Ban, Element, Firewall, FirewallError};
use crate::jail::{Jail, Outcome};
use crate::source::{self, FileFollower, LineBatch};

/// Batches of lines waiting for the main loop; sources wait when it is full.
const LINE_QUEUE: usize = 1024;
/// Line batches folded into one round of bans.
const BATCHES_PER_ROUND: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// The state the main loop owns.
pub struct Daemon {
    jails: Vec<Jail>,
    /// For each logpath pattern (source index), the jails reading it.
    routes: Vec<Vec<usize>>,
    firewall: Firewall,
}

/// Runs the daemon until `shutdown` completes. The table and its bans stay in the kernel.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let mut firewall = Firewall::open()?;
    let rules: Vec<_> = config.jails.iter().map(|j| j.rules()).collect();
    firewall.apply_layout(&rules)?;

    let mut patterns: Vec<String> = Vec::new();
    let mut routes: Vec<Vec<usize>> = Vec::new();
    for (j, jail) in config.jails.iter().enumerate() {
        for path in &jail.logpaths {
            let i = patterns.iter().position(|p| p == path).unwrap_or_else(|| {
                patterns.push(path.clone());
                routes.push(Vec::new());
                patterns.len() - 1
            });
            routes[i].push(j);
        }
    }
    let follower = FileFollower::new(&patterns)?;
    let (line_tx, mut lines) = mpsc::channel(LINE_QUEUE);
    let sources = tokio::spawn(source::run_files(follower, line_tx));

    let listener = control::bind(&config.daemon.socket)?;
    let (ctl_tx, mut requests) = mpsc::channel(64);
    let server = tokio::spawn(control::serve(listener, ctl_tx));

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
    };
    let sweep_every = daemon
        .jails
        .iter()
        .map(Jail::sweep_interval)
        .min()
        .unwrap_or(Duration::from_secs(60));
    let mut sweep = tokio::time::interval(sweep_every);
    tracing::info!(jails = daemon.jails.len(), socket = %config.daemon.socket.display(), "banctl daemon ready");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            batch = lines.recv() => match batch {
                Some(batch) => {
                    let mut round = vec![batch];
                    while round.len() < BATCHES_PER_ROUND {
                        match lines.try_recv() {
                            Ok(more) => round.push(more),
                            Err(_) => break,
                        }
                    }
                    daemon.on_lines(&round);
                }
                None => {
                    tracing::error!("log sources stopped");
                    break;
                }
            },
            Some(Incoming { request, reply }) = requests.recv() => {
                let response = daemon.handle(request);
                if reply.send(response).is_err() {
                    tracing::debug!("control client left before the answer");
                }
            }
            _ = sweep.tick() => daemon.sweep(SystemTime::now()),
            () = &mut shutdown => break,
        }
    }
    sources.abort();
    server.abort();
    if let Err(e) = std::fs::remove_file(&config.daemon.socket) {
        tracing::debug!(error = %e, "removing control socket");
    }
    tracing::info!("banctl daemon stopped; bans stay in the kernel");
    match sources.await {
        Ok(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
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
            Request::Status { jail } => self.status(jail.as_deref()),
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
        let items: Vec<(String, IpNet)> = removed
            .iter()
            .map(|b| (b.jail.clone(), b.address))
            .collect();
        self.firewall.unban(&items).map_err(Self::firewall_error)?;
        for jail in &mut self.jails {
            jail.forget(&target);
        }
        for b in &removed {
            tracing::info!(jail = b.jail.as_str(), address = %b.address, "unban");
        }
        Ok(Response::Unbanned { removed })
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
