//! The daemon: wires sources, the engine (over the firewall and the store), the control and
//! metrics servers, the ruleset watcher and the notifiers. It holds no ban policy.
//!
//! **Invariant:** one task (the loop in [`run`]) owns the engine. Sources and control
//! connections only send it messages over bounded channels, so no lock guards ban state and
//! a burst of lines becomes one netlink batch.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use std::path::PathBuf;

use tokio::signal;
use tokio::sync::mpsc;

use crate::addr::IpNet;
use crate::ban::Element;
use crate::config::{Config, SourceChoice};
use crate::control::{self, BanInfo, ErrorKind, Incoming, JailStatus, Request, Response};
use crate::engine::{Engine, EngineError, Listed, failures_in};
use crate::filter::Filter;
use crate::firewall::{self, Firewall, FirewallError, Monitor};
use crate::fleet::{Fleet, Inbound};
use crate::jail::Jail;
use crate::metrics::{self, Scrape};
use crate::notify::Notifications;
use crate::privilege;
use crate::sd_notify::ServiceManager;
use crate::source::{
    Files, Journal, LineBatch, Positions, Prepare, ReadBuffers, Running, Source, StartFrom,
};
use crate::state::{StateError, Store};

mod events;
mod memory;
mod resolve;
use resolve::{Resolved, Resolver};

/// Batches of lines waiting for the main loop; sources wait when it is full. A batch holds
/// at most one read (1 MiB) of a file or 1,000 journal entries, so this bounds the memory a
/// flood of lines can take, whatever its rate. Four keep the reader ahead of the loop while
/// the batches it reads are still in the caches when the loop takes them: against 16, a
/// 1M-line catch-up peaked at 45 MB instead of 58, and ran as fast or faster.
const LINE_QUEUE: usize = 4;
/// Lines folded into one round of bans: enough to make a burst one netlink batch, few enough
/// that control requests and metrics scrapes, served first, never wait long for a round.
const LINES_PER_ROUND: usize = 16 * 1024;
/// How often expired failure windows are dropped (and the sources checked).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often expired bans and old history leave the state store.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often bans that expired in the kernel are announced to notifiers wanting unbans.
const EXPIRY_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("cannot handle signals: {0}")]
    Signal(String),
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot watch the ruleset: {0}")]
    Monitor(String),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot start the control and metrics servers: {0}")]
    Servers(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
}

/// The state the main loop owns: the engine (jails, enforcer, ledger) and what feeds it and
/// hears from it.
pub struct Daemon {
    engine: Engine<Firewall, Store>,
    /// For each source index, the jails reading it.
    routes: Vec<Vec<usize>>,
    /// The host's own addresses, given to every jail.
    own: Arc<[IpNet]>,
    sources: Sources,
    /// The jails' filters by source, for the sources' threads.
    filters: SourceFilters,
    /// Where the configuration is read from again on reload.
    config_path: PathBuf,
    /// The configuration running, as `banctl config` shows it: its files and the TOML.
    effective: (Vec<String>, String),
    /// `[daemon]` as the daemon started with it: its socket, state directory, metrics address
    /// and groups stay until a restart.
    started: crate::config::DaemonConfig,
    /// The `[[notify]]` entries' delivery tasks (replaced on reload, their counts kept).
    notifications: Notifications,
    /// Host names of jails with `usedns = "yes"`, resolved off the loop.
    resolver: Resolver,
    /// The fleet link, when `[fleet]` is set (kept as started until a restart).
    fleet: Option<Fleet>,
    /// The `[fleet]` the link was started with.
    fleet_config: Option<crate::config::FleetConfig>,
}

/// The running log sources, one [`Source`] per kind: all logpath patterns in one, each
/// journal in its own. A source's routing indexes follow those of the sources before it.
///
/// Each generation of sources has its own channel: when a reload replaces them, the batches
/// the old ones had queued go with the old channel, unprocessed and so not counted as read;
/// the new sources read those lines again from the saved positions, routed the new way.
struct Sources {
    routing: Routing,
    /// Whether sources without a saved position read back their existing lines.
    readback: bool,
    /// Each source, the routing index of its first slot, and its reader.
    running: Vec<(Box<dyn Source>, usize, Running)>,
    prepare: Prepare,
    /// The read buffers of processed batches, given back to the sources.
    buffers: ReadBuffers,
    tx: mpsc::Sender<LineBatch>,
    lines: mpsc::Receiver<LineBatch>,
}

impl Sources {
    fn start(
        routing: Routing,
        readback: bool,
        positions: &dyn Positions,
        prepare: Prepare,
    ) -> Result<Sources, DaemonError> {
        let (tx, lines) = mpsc::channel(LINE_QUEUE);
        // The batches the line queue holds, and the one being read.
        let buffers = ReadBuffers::keeping(LINE_QUEUE + 1);
        let from = StartFrom {
            positions,
            readback,
            prepare: prepare.clone(),
            buffers: buffers.clone(),
        };
        let mut running = Vec::new();
        let mut first = 0;
        for source in routing.sources() {
            let reader = source.start(first, &from, tx.clone())?;
            let slots = source.names().len();
            running.push((source, first, reader));
            first += slots;
        }
        Ok(Sources {
            routing,
            readback,
            running,
            prepare,
            buffers,
            tx,
            lines,
        })
    }

    /// How `banctl status` names each routing index.
    fn names(&self) -> Vec<String> {
        self.running
            .iter()
            .flat_map(|(source, _, _)| source.names())
            .collect()
    }

    /// Starts again the sources that stopped by themselves.
    fn restart_stopped(&mut self, positions: &dyn Positions) {
        let from = StartFrom {
            positions,
            readback: self.readback,
            prepare: self.prepare.clone(),
            buffers: self.buffers.clone(),
        };
        for (source, first, reader) in &mut self.running {
            if reader.is_finished() {
                tracing::error!(sources = ?source.names(), "log source stopped; restarting it");
                match source.start(*first, &from, self.tx.clone()) {
                    Ok(again) => *reader = again,
                    Err(e) => tracing::error!(error = %e, "cannot restart a log source"),
                }
            }
        }
    }
}

/// The filters of the jails reading each source (by routing index) that can examine lines on
/// their own (those with a candidate search: no line depends on the ones before), shared with
/// the sources' threads: each batch's failures are found there, off the main loop and while
/// the batch's lines are still in that core's cache ([`LineBatch::examined`]). Set again
/// whenever the jails or the routes change; a batch prepared by a filter build the jail no
/// longer has is examined again by the jail itself.
#[derive(Clone, Default)]
struct SourceFilters(Arc<RwLock<Vec<Vec<Examiner>>>>);

/// A filter, by the id of its build's candidate search (what a batch's failures are keyed by).
type Examiner = (u64, Filter);

impl SourceFilters {
    /// The filters of `filters` (by jail index) for `routes` (the jails of each source), each
    /// build once per source.
    fn set<'a>(&self, routes: &[Vec<usize>], filters: impl Iterator<Item = &'a Filter>) {
        let filters: Vec<&Filter> = filters.collect();
        let by_source = routes
            .iter()
            .map(|jails| {
                let mut mine: Vec<Examiner> = Vec::new();
                for filter in jails.iter().filter_map(|&j| filters.get(j).copied()) {
                    if let Some(search) = filter.candidate_search()
                        && mine.iter().all(|(id, _)| *id != search.id())
                    {
                        mine.push((search.id(), filter.clone()));
                    }
                }
                mine
            })
            .collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = by_source;
    }

    /// What the sources do to each batch: find the failures of each filter of the batch's
    /// sources, in the lines its candidate search finds.
    fn prepare(&self) -> Prepare {
        let filters = self.0.clone();
        Arc::new(move |batch: &mut LineBatch| {
            let by_source = filters.read().unwrap_or_else(PoisonError::into_inner);
            for &source in &batch.sources {
                for (id, filter) in by_source.get(source).into_iter().flatten() {
                    if batch.examined.iter().all(|(done, _)| done != id) {
                        let listed = batch
                            .lines
                            .candidates(|b, from| filter.next_candidate(b, from));
                        let failures = failures_in(&batch.lines, listed, |l| filter.examine(l));
                        batch.examined.push((*id, failures));
                    }
                }
            }
        })
    }
}

/// Which sources the jails read, and which jails read each source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Routing {
    /// Logpath patterns: sources `0..files.len()`.
    files: Vec<String>,
    /// Journals: the sources after the files.
    journals: Vec<Journal>,
    /// For each source index, the indexes of the jails reading it.
    routes: Vec<Vec<usize>>,
}

impl Routing {
    /// The sources, in routing order.
    fn sources(&self) -> Vec<Box<dyn Source>> {
        let files = Files {
            patterns: self.files.clone(),
        };
        std::iter::once(Box::new(files) as Box<dyn Source>)
            .chain(
                self.journals
                    .iter()
                    .map(|j| Box::new(j.clone()) as Box<dyn Source>),
            )
            .collect()
    }

    /// Whether `other` reads the same files and journals (the routes may differ).
    fn reads_the_same(&self, other: &Routing) -> bool {
        self.files == other.files
            && self.journals.len() == other.journals.len()
            && self
                .journals
                .iter()
                .zip(&other.journals)
                .all(|(a, b)| a.spec == b.spec)
    }
}

/// Whether any file matches one of the logpath patterns now.
fn any_file_exists(patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        glob::glob(p).is_ok_and(|mut paths| paths.any(|path| path.is_ok_and(|p| p.is_file())))
    })
}

/// The distinct sources of `jails` (with `source = "auto"`: the files if one exists, else the
/// journal), and for each the jails reading it.
fn routing(jails: &[crate::config::JailConfig]) -> Routing {
    fn slot<T: PartialEq + Clone>(
        list: &mut Vec<T>,
        routes: &mut Vec<Vec<usize>>,
        item: &T,
    ) -> usize {
        list.iter().position(|x| x == item).unwrap_or_else(|| {
            list.push(item.clone());
            routes.push(Vec::new());
            list.len() - 1
        })
    }
    let (mut files, mut file_routes) = (Vec::new(), Vec::new());
    let (mut journals, mut journal_routes) = (Vec::new(), Vec::new());
    for (j, jail) in jails.iter().enumerate() {
        let journal = match (jail.source, &jail.journal) {
            (SourceChoice::File, _) | (_, None) => None,
            (SourceChoice::Journal, Some(spec)) => Some(spec),
            (SourceChoice::Auto, Some(spec)) => {
                (jail.logpaths.is_empty() || !any_file_exists(&jail.logpaths)).then_some(spec)
            }
        };
        match journal {
            Some(spec) => {
                let i = slot(&mut journals, &mut journal_routes, spec);
                journal_routes[i].push(j);
            }
            None => {
                for path in &jail.logpaths {
                    let i = slot(&mut files, &mut file_routes, path);
                    file_routes[i].push(j);
                }
            }
        }
    }
    // A journal's first start reads back the longest findtime of the jails reading it.
    let journals = journals
        .into_iter()
        .zip(&journal_routes)
        .map(|(spec, readers)| Journal {
            spec,
            back: readers
                .iter()
                .map(|&j| jails[j].findtime)
                .max()
                .unwrap_or_default(),
        })
        .collect();
    file_routes.extend(journal_routes);
    Routing {
        files,
        journals,
        routes: file_routes,
    }
}

/// Runs the daemon until `shutdown` completes. The table and its bans stay in the kernel.
/// SIGHUP (or `banctl reload`) reads `config_path` again.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    privilege::require_net_admin()?;
    // Before the store or the kernel is touched: one daemon per namespace and state dir.
    let mut instance = crate::instance::Instance::claim(&config.daemon.state_dir)?;
    let (store, damaged) = Store::open_or_recover(&config.daemon.state_dir)?;
    if let Some(aside) = &damaged {
        tracing::error!(
            moved_to = %aside.display(),
            "the state store was damaged: moved aside, starting a new one; the bans in the kernel are adopted, ban history and saved failures are lost"
        );
    }
    let firewall = Firewall::open()?;
    // Joined once the start's bans are in: see below.
    let monitor = Monitor::open_unjoined().map_err(|e| DaemonError::Monitor(e.to_string()))?;
    let access = control::Access {
        admin_group: config.daemon.admin_group.clone(),
        read_group: config.daemon.read_group.clone(),
    };
    let listener = control::bind(&config.daemon.socket, &access)?;
    let metrics_listener = match config.daemon.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Giving the socket its group was the last step needing more than KEPT. Capabilities are
    // per thread: every thread (journal readers, the ruleset watcher) starts after this drop.
    privilege::drop_all_but_kept()?;
    instance.answer();

    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let routing = routing(&config.jails);
    let routes = routing.routes.clone();
    let filters = SourceFilters::default();
    filters.set(&routes, config.jails.iter().map(|j| &j.filter));
    let sources = Sources::start(routing, config.daemon.readback, &store, filters.prepare())?;

    let own: Arc<[IpNet]> = own_addresses().into();
    tracing::debug!(
        count = own.len(),
        "own addresses (never banned with ignoreself)"
    );
    let jails = config
        .jails
        .iter()
        .cloned()
        .map(|c| Jail::new(c).with_own_addresses(own.clone()));
    let (resolver, mut resolved) = Resolver::start();
    let engine = Engine::new(
        jails.collect(),
        firewall,
        store,
        config.daemon.history,
        SystemTime::now(),
    );
    let (fleet_tx, mut fleet_rx) = mpsc::channel::<Inbound>(4);
    let fleet = match &config.fleet {
        Some(f) => Some(Fleet::start(
            f.clone(),
            config.daemon.state_dir.clone(),
            fleet_tx,
        )?),
        None => None,
    };
    let mut daemon = Daemon {
        engine,
        routes,
        own: own.clone(),
        sources,
        filters,
        config_path,
        effective: (config.files(), crate::config::effective::render(&config)),
        started: config.daemon.clone(),
        notifications: Notifications::start(&config.notify, Arc::default()),
        resolver,
        fleet,
        fleet_config: config.fleet.clone(),
    };
    daemon
        .engine
        .set_remote_policy(remote_policy(&config, &own));
    daemon.fit_to_listeners();
    let unwatched_from = daemon.engine.enforcer_changes();
    // Failures back, then table, rules and every unexpired ban of the store, in one batch,
    // before anything else.
    let (restored, adopted) = daemon
        .engine
        .start(SystemTime::now())
        .map_err(DaemonError::Engine)?;
    tracing::info!(restored, adopted, "ruleset in place");
    if let Some(f) = config.fleet.as_ref().filter(|f| f.role.enforces()) {
        daemon.catch_up(&mut fleet_rx, f.wait).await;
    }
    // The watcher hears transactions from now on: the start's own (100,000 bans are as many
    // notifications) were never built for it. Another process's change made before it
    // listened shows in the ruleset's generation: then everything is checked once.
    monitor
        .join()
        .map_err(|e| DaemonError::Monitor(e.to_string()))?;
    let unwatched = unwatched_from
        .zip(daemon.engine.enforcer_changes())
        .map_or(1, |(from, to)| from.others_until(to));
    if unwatched > 0 {
        tracing::info!(
            transactions = unwatched,
            "the ruleset changed by another process during the start: checking it"
        );
        daemon.repair(None);
    }
    let (repair_tx, mut repairs) = mpsc::channel(4);
    firewall::watch_removals(monitor, repair_tx)
        .map_err(|e| DaemonError::Monitor(e.to_string()))?;
    let (ctl_tx, mut requests) = mpsc::channel(64);
    let (scrape_tx, mut scrapes) = mpsc::channel::<Scrape>(8);
    if let Some(address) = config.daemon.metrics.filter(|_| metrics_listener.is_some()) {
        tracing::info!(%address, "serving metrics");
    }
    let servers = Servers::start(listener, ctl_tx, access, metrics_listener, scrape_tx)?;
    let mut expiry = tokio::time::interval(EXPIRY_EVERY);
    let mut hangup = signal::unix::signal(signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Signal(e.to_string()))?;

    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut purge = tokio::time::interval(PURGE_EVERY);
    let manager = ServiceManager::from_env();
    // Without a watchdog the branch below never fires.
    let mut watchdog = tokio::time::interval(
        manager
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600)),
    );
    tracing::info!(jails = daemon.engine.jails().len(), socket = %config.daemon.socket.display(), "banctl daemon ready");
    manager.ready(&format!("{}; {restored} bans restored", daemon.summary()));

    tokio::pin!(shutdown);
    let mut release = memory::Release::new();
    loop {
        // In this order: an admin, a scrape, a repair and the timers never wait behind a
        // flood of lines.
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(Incoming { request, reply }) = requests.recv() => {
                let response = daemon.handle(request);
                if reply.send(response).is_err() {
                    tracing::debug!("control client left before the answer");
                }
                release.after_work();
            }
            Some(reply) = scrapes.recv() => {
                if reply.send(daemon.snapshot()).is_err() {
                    tracing::debug!("metrics client left before the answer");
                }
            }
            Some(by) = repairs.recv() => {
                daemon.repair(by);
                release.after_work();
            }
            _ = watchdog.tick(), if manager.watchdog_interval().is_some() => {
                manager.ping();
                manager.status(&daemon.summary());
            }
            Some(()) = hangup.recv() => {
                tracing::info!("SIGHUP: reloading {}", daemon.config_path.display());
                manager.reloading();
                daemon.reload();
                manager.ready(&daemon.summary());
                release.after_work();
            }
            _ = expiry.tick() => {
                daemon.engine.report_expired(SystemTime::now());
                daemon.announce();
            }
            _ = sweep.tick() => {
                daemon.sweep(SystemTime::now());
                release.after_work();
            }
            _ = purge.tick() => {
                daemon.engine.purge(SystemTime::now());
                daemon.announce();
                release.after_work();
            }
            () = release.quiet(), if release.armed() => {
                daemon.sources.buffers.clear();
                release.release();
            }
            Some(answer) = resolved.recv() => daemon.on_resolved(answer),
            Some(round) = fleet_rx.recv() => {
                daemon.on_fleet(round);
                release.after_work();
            }
            // Last: whatever else is ready goes first, the lines take the rest.
            Some(batch) = daemon.sources.lines.recv() => {
                let mut lines = batch.lines.len();
                let mut round = vec![batch];
                while lines < LINES_PER_ROUND {
                    match daemon.sources.lines.try_recv() {
                        Ok(more) => {
                            lines += more.lines.len();
                            round.push(more);
                        }
                        Err(_) => break,
                    }
                }
                daemon.on_lines(&round);
                for batch in round {
                    daemon.sources.buffers.give(batch.lines);
                }
                release.after_work();
                // The runtime has one thread: let its other tasks (notifications, name
                // lookups) move before the next round, or a flood would starve them.
                tokio::task::yield_now().await;
            }
        }
    }
    manager.stopping();
    drop(servers);
    if let Err(e) = std::fs::remove_file(&config.daemon.socket) {
        tracing::debug!(error = %e, "removing control socket");
    }
    tracing::info!("banctl daemon stopped; bans stay in the kernel");
    Ok(())
}

/// The control and metrics servers, on a thread of their own with a runtime of their own:
/// they accept, read and answer while the main loop works through a flood of lines, and
/// hand each request to the loop, which takes it before its next round. Started after the
/// privilege drop, so the thread holds only what the daemon kept. Stopped on drop.
struct Servers {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Servers {
    fn start(
        control: tokio::net::UnixListener,
        requests: mpsc::Sender<Incoming>,
        access: control::Access,
        metrics: Option<tokio::net::TcpListener>,
        scrapes: mpsc::Sender<Scrape>,
    ) -> Result<Servers, DaemonError> {
        // Listeners belong to the runtime that made them: move them over as std sockets.
        let control = control.into_std().map_err(control::ControlError::Io)?;
        let metrics = match metrics.map(tokio::net::TcpListener::into_std) {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => return Err(DaemonError::Servers(e.to_string())),
            None => None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = crate::thread_runtime().map_err(|e| DaemonError::Servers(e.to_string()))?;
        std::thread::Builder::new()
            .name("banctl-servers".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let control = match tokio::net::UnixListener::from_std(control) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "control socket lost");
                            return;
                        }
                    };
                    let metrics =
                        metrics.and_then(|l| match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                tracing::error!(error = %e, "metrics listener lost: no metrics");
                                None
                            }
                        });
                    let serve_metrics = async {
                        match metrics {
                            Some(l) => metrics::serve(l, scrapes).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = control::serve(control, requests, access) => {}
                        () = serve_metrics => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| DaemonError::Servers(e.to_string()))?;
        Ok(Servers { stop: Some(stop) })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How the engine takes remote bans: per `[fleet]`, for the roles that enforce them.
fn remote_policy(config: &Config, own: &Arc<[IpNet]>) -> Option<crate::engine::RemotePolicy> {
    let f = config.fleet.as_ref().filter(|f| f.role.enforces())?;
    Some(crate::engine::RemotePolicy {
        name: f.name.clone(),
        apply: f.apply,
        min_prefix: f.min_prefix,
        max_per_minute: f.max_per_minute,
        own: own.clone(),
    })
}

impl Daemon {
    /// Applies rounds of fleet bans until the link says they are all in, or `wait` passed
    /// (servers unreachable: the daemon starts with what it has and catches up later).
    async fn catch_up(&mut self, rounds: &mut mpsc::Receiver<Inbound>, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rounds.recv()).await {
                Ok(Some(round)) => {
                    if self.on_fleet(round) {
                        tracing::info!("fleet bans in place");
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(
                        ?wait,
                        "fleet bans not all in yet; starting, they are applied as they come"
                    );
                    return;
                }
            }
        }
    }

    /// Applies a round of remote bans and lifts; returns whether it ended the replay.
    fn on_fleet(&mut self, round: Inbound) -> bool {
        let Inbound {
            bans,
            lifts,
            caught_up,
            done,
        } = round;
        let count = bans.len();
        let took = std::time::Instant::now();
        let result = self.engine.on_remote(bans, &lifts, SystemTime::now());
        if result.applied + result.refused + result.lifted > 0 {
            tracing::info!(
                banned = result.applied,
                refused = result.refused,
                lifted = result.lifted,
                took = ?took.elapsed(),
                "bans from the fleet"
            );
        } else if count > 0 {
            tracing::debug!(?result, "fleet round: nothing new");
        }
        let _ = done.send(());
        self.announce();
        caught_up
    }

    /// Filters a round of line batches through the jails that read them; bans, saves, and
    /// sends host names to the resolver.
    pub fn on_lines(&mut self, batches: &[LineBatch]) {
        let routed: Vec<Vec<usize>> = batches
            .iter()
            .map(|b| {
                b.sources
                    .iter()
                    .flat_map(|&s| self.routes.get(s).into_iter().flatten().copied())
                    .collect()
            })
            .collect();
        let round: Vec<(&LineBatch, &[usize])> = batches
            .iter()
            .zip(&routed)
            .map(|(b, r)| (b, r.as_slice()))
            .collect();
        self.engine.set_backlog(!self.sources.lines.is_empty());
        for name in self.engine.on_lines(&round, SystemTime::now()) {
            self.resolver.ask(name);
        }
        self.announce();
    }

    /// The addresses a failure's host name resolved to: each counts the failure.
    pub fn on_resolved(&mut self, resolved: Resolved) {
        let Resolved { lookup, addrs } = resolved;
        self.engine.on_resolved(&lookup, &addrs, SystemTime::now());
        self.announce();
    }

    /// Someone else removed part of our table (or notifications were lost): put it back.
    pub fn repair(&mut self, by: firewall::RemovedBy) {
        self.engine.repair(by, SystemTime::now());
    }

    pub fn sweep(&mut self, now: SystemTime) {
        self.engine.sweep(now);
        self.sources.restart_stopped(self.engine.ledger());
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
        let warnings = config.warnings();
        let running = crate::config::DaemonConfig {
            history: config.daemon.history,
            readback: config.daemon.readback,
            ..self.started.clone()
        };
        let effective = (
            config.files(),
            crate::config::effective::render_running(&config, &running, self.fleet_config.as_ref()),
        );
        let routing = routing(&config.jails);
        let routes = routing.routes.clone();
        let new_sources = if routing.reads_the_same(&self.sources.routing) {
            None
        } else {
            match Sources::start(
                routing.clone(),
                config.daemon.readback,
                self.engine.ledger(),
                self.filters.prepare(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    return Response::Error {
                        kind: ErrorKind::Config,
                        message: e.to_string(),
                    };
                }
            }
        };
        let crate::engine::Reloaded {
            added,
            removed,
            lifted,
            restored,
        } = match self.engine.reload(
            config.jails,
            config.daemon.history,
            &self.own,
            SystemTime::now(),
        ) {
            Ok(changes) => changes,
            Err(e) => {
                tracing::error!(error = %e, "reload refused by the kernel, the running configuration stays");
                return engine_error(e);
            }
        };
        match new_sources {
            Some(sources) => self.sources = sources,
            None => self.sources.routing.routes = routes.clone(),
        }
        self.routes = routes;
        self.filters.set(
            &self.routes,
            self.engine.jails().iter().map(|j| &j.config().filter),
        );
        self.effective = effective;
        if config.fleet != self.fleet_config {
            tracing::warn!(
                "[fleet] changed: the link keeps its running settings until the daemon restarts"
            );
        }
        // The old notifiers finish what they queued, then stop.
        let stats = self.notifications.stats().clone();
        self.notifications = Notifications::start(&config.notify, stats);
        self.fit_to_listeners();
        let jails: Vec<String> = self
            .engine
            .jails()
            .iter()
            .map(|j| j.name().to_owned())
            .collect();
        tracing::info!(
            ?jails,
            ?added,
            ?removed,
            lifted,
            restored,
            "configuration reloaded"
        );
        if lifted > 0 {
            tracing::warn!(
                lifted,
                jails = ?removed,
                "bans of removed jails left the kernel; the state store keeps them, and enabling the jail again puts the unexpired ones back"
            );
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Response::Reloaded {
            jails,
            added,
            removed,
            lifted: lifted as u64,
            restored: restored as u64,
            warnings,
        }
    }

    /// Answers one control request.
    pub fn handle(&mut self, request: Request) -> Response {
        let now = SystemTime::now();
        let result = match request {
            Request::List { jail } => {
                self.engine
                    .list(jail.as_deref(), now)
                    .map(|bans| Response::Bans {
                        bans: bans.iter().map(ban_info).collect(),
                    })
            }
            Request::Ban { jail, target, time } => self
                .engine
                .manual_ban(&jail, target, time, now)
                .map(|banned| Response::Banned {
                    jail,
                    target,
                    time: banned.time,
                    covered_by: banned.covered_by,
                    already: banned.already,
                }),
            Request::Unban { target, jail } => {
                self.engine
                    .unban(target, jail.as_deref(), now)
                    .map(|removed| Response::Unbanned {
                        removed: removed.iter().map(ban_info).collect(),
                    })
            }
            Request::UnbanAll { jail } => {
                self.engine
                    .unban_all(jail.as_deref(), now)
                    .map(|removed| Response::Unbanned {
                        removed: removed.iter().map(ban_info).collect(),
                    })
            }
            Request::UnbanOrigin { origin } => {
                self.engine
                    .unban_origin(&origin, now)
                    .map(|removed| Response::Unbanned {
                        removed: removed.iter().map(ban_info).collect(),
                    })
            }
            Request::Status { jail } => self.status(jail.as_deref(), now),
            Request::Reload => Ok(self.reload()),
            Request::Config => Ok(Response::Config {
                files: self.effective.0.clone(),
                toml: self.effective.1.clone(),
            }),
            Request::LogLevel { level } => Ok(match crate::logging::set_level(&level) {
                Ok(()) => {
                    tracing::info!(level = level.as_str(), "log level changed");
                    Response::LogLevel { level }
                }
                Err(e) => Response::Error {
                    kind: ErrorKind::Config,
                    message: e.to_string(),
                },
            }),
        };
        self.announce();
        result.unwrap_or_else(engine_error)
    }

    /// The sources jail `j` reads, as `banctl status` names them.
    fn sources_of(&self, j: usize) -> Vec<String> {
        let names = self.sources.names();
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, jails)| jails.contains(&j))
            .filter_map(|(i, _)| names.get(i).cloned())
            .collect()
    }

    fn status(&mut self, jail: Option<&str>, now: SystemTime) -> Result<Response, EngineError> {
        let mut jails = Vec::new();
        // Counted by the ledger: listing 100,000 elements to count them takes a second.
        let active = self.engine.active_by_jail(now);
        // One jail asked for by name: its bans too.
        let mut bans = match jail {
            Some(name) => Some(self.engine.list(Some(name), now)?),
            None => None,
        };
        for j in self.engine.selected(jail)? {
            let name = self.engine.jails()[j].name().to_owned();
            let active_bans = active.get(&name).copied().unwrap_or(0) as usize;
            let (dropped_packets, dropped_bytes) = self.engine.dropped(j)?;
            let jail = &self.engine.jails()[j];
            let c = jail.config();
            let sources = self.sources_of(j);
            jails.push(JailStatus {
                name: c.name.clone(),
                filter: c.filter_name.clone(),
                source_states: sources.iter().map(|s| source_state(s)).collect(),
                sources,
                ports: c.ports.iter().map(ToString::to_string).collect(),
                protocol: c.protocol.to_string(),
                maxretry: c.maxretry,
                findtime_s: c.findtime.as_secs(),
                bantime: c.bantime,
                bantime_s: match c.bantime {
                    crate::duration::BanTime::Finite(d) => Some(d.as_secs()),
                    crate::duration::BanTime::Permanent => None,
                },
                tracked: jail.tracked(),
                active_bans,
                dropped_packets,
                dropped_bytes,
                failures_total: jail.counters().failures,
                bans_total: jail.counters().bans,
                ignoreip: c.ignoreip.iter().map(ToString::to_string).collect(),
                ignoreself: c.ignoreself,
                escalation: c
                    .escalation
                    .as_ref()
                    .map(crate::config::Escalation::describe),
                bans: bans.take().map(|bans| bans.iter().map(ban_info).collect()),
            });
        }
        let fleet = self.fleet.as_ref().map(|f| {
            let mut status = f.status();
            status.refused = self
                .engine
                .remote_counts()
                .refused
                .into_iter()
                .map(|(origin, why, n)| (format!("{origin}:{}", why.as_str()), n))
                .collect();
            Box::new(status)
        });
        Ok(Response::Status { jails, fleet })
    }
}

/// A source's state as `banctl status` shows it: a file pattern's from the filesystem now, a
/// journal's from its reader.
fn source_state(name: &str) -> String {
    match name.strip_prefix("file:") {
        Some(pattern) => crate::source::path_state(pattern).to_string(),
        None => "following".to_owned(),
    }
}

/// An engine's refusal as a control response.
fn engine_error(e: EngineError) -> Response {
    let kind = match &e {
        EngineError::UnknownJail(_) => ErrorKind::UnknownJail,
        EngineError::TooBroad { .. } => ErrorKind::TooBroad,
        EngineError::Ignored { .. } => ErrorKind::Ignored,
        EngineError::NotBanned { .. } => ErrorKind::NotBanned,
        EngineError::Enforcer(_) | EngineError::Ledger(_) => ErrorKind::Firewall,
    };
    Response::Error {
        kind,
        message: e.to_string(),
    }
}

/// A listed ban as the control protocol shows it.
fn ban_info(b: &Listed) -> BanInfo {
    BanInfo {
        ban_count: b.count,
        origin: b.origin.as_ref().map(crate::ban::Origin::to_text),
        ..element_info(&b.jail, &b.element)
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

pub fn element_info(jail: &str, e: &Element) -> BanInfo {
    BanInfo {
        jail: jail.to_owned(),
        address: e.net,
        expires_in_s: e.expires_in.map(|d| d.as_secs()),
        bantime_s: e.timeout.map(|d| d.as_secs()),
        ban_count: None,
        origin: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Failure;

    /// Each batch gets the failures of the filters of the jails reading its sources, once per
    /// filter build, as each jail would find them itself.
    #[test]
    fn a_batch_is_prepared_for_the_jails_reading_its_sources() {
        let config = Config::parse(
            std::path::Path::new("t"),
            "[defaults]\nlogpath = \"/dev/null\"\n\
             [jails.a]\nfailregex = ['^fail <HOST>$']\n\
             [jails.b]\nfailregex = ['^denied <HOST> by \\S+$']\n\
             [jails.c]\nfailregex = ['^<HOST>$']\n",
        )
        .unwrap();
        let filters: Vec<&Filter> = config.jails.iter().map(|j| &j.filter).collect();
        assert!(
            filters[2].candidate_search().is_none(),
            "c looks at every line"
        );
        let hooked = SourceFilters::default();
        hooked.set(
            &[vec![0, 1], vec![1], vec![2], vec![1, 0]],
            filters.iter().copied(),
        );
        let prepare = hooked.prepare();
        let lines: crate::source::Lines = [
            "fail 192.0.2.1",
            "denied 192.0.2.2 by x",
            "nothing",
            "fail 192.0.2.3 denied 192.0.2.4 by y",
            "denied",
        ]
        .into_iter()
        .collect();
        let own = |j: usize| {
            let s = filters[j].candidate_search().unwrap();
            let listed = lines.candidates(|b, from| filters[j].next_candidate(b, from));
            (
                s.id(),
                failures_in(&lines, listed, |l| filters[j].examine(l)),
            )
        };
        // What the hook finds for a batch of `lines` from `sources`.
        let prepared = |sources: &[usize]| {
            let mut batch = LineBatch {
                sources: sources.to_vec(),
                lines: lines.clone(),
                read_at: SystemTime::UNIX_EPOCH,
                timing: crate::source::Timing::Live,
                resume: None,
                cut: 0,
                examined: Vec::new(),
            };
            prepare(&mut batch);
            batch.examined
        };
        for (sources, expect) in [
            (vec![0], vec![own(0), own(1)]),
            (vec![1], vec![own(1)]),
            (vec![2], vec![]),
            (vec![0, 3], vec![own(0), own(1)]),
            (vec![9], vec![]),
        ] {
            assert_eq!(prepared(&sources), expect, "sources {sources:?}");
        }
        let addr = |a: &str| Failure::Addr(a.parse().unwrap());
        assert_eq!(own(0).1, [(0, addr("192.0.2.1"))]);
        assert_eq!(own(1).1, [(1, addr("192.0.2.2"))]);
        // Set again (a reload): the filters of the jails as they are now.
        hooked.set(&[vec![1]], filters.iter().copied());
        assert_eq!(prepared(&[0]), [own(1)]);
    }
}
