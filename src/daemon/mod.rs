//! The daemon: wires sources → filters/jails → firewall, and answers the control socket.
//!
//! **Invariant:** one task (the loop in [`run`]) owns every jail and the firewall handle.
//! Sources and control connections only send it messages over bounded channels, so no lock
//! guards ban state and a burst of lines becomes one netlink batch.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use tokio::signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::addr::IpNet;
use crate::config::Config;
use crate::config::{SourceChoice, UseDns};
use crate::control::{self, BanInfo, ErrorKind, Incoming, JailStatus, Request, Response};
use crate::duration::BanTime;
use crate::filter::Verdict;
use crate::firewall::{self, Ban, Element, Firewall, FirewallError, Monitor, Overlaps, Restore};
use crate::jail::{Jail, Outcome};
use crate::metrics::{self, Scrape};
use crate::notify::Notifications;
use crate::privilege;
use crate::sd_notify::ServiceManager;
use crate::source::journal::{self, JournalSpec, Start};
use crate::source::{self, FileFollower, FilePosition, LineBatch, Resume, Timing};
use crate::state::{StateError, Store, StoredBan, Window};

mod events;
mod resolve;
use events::Wanted;
use resolve::{Lookup, Resolved, Resolver};

/// Batches of lines waiting for the main loop; sources wait when it is full. A batch holds
/// at most one read (1 MiB) of a file or 1,000 journal entries, so this bounds the memory a
/// flood of lines can take, whatever its rate.
const LINE_QUEUE: usize = 16;
/// Lines folded into one round of bans: enough to make a burst one netlink batch, few enough
/// that control requests and metrics scrapes, served first, never wait long for a round.
const LINES_PER_ROUND: usize = 16 * 1024;
/// How often expired failure windows are dropped (and the sources checked).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often expired bans and old history leave the state store.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often bans that expired in the kernel are announced to notifiers wanting unbans.
const EXPIRY_EVERY: Duration = Duration::from_secs(5);
/// The longest matched line kept as a ban's reason.
const MAX_REASON: usize = 1024;

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
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot watch the ruleset: {0}")]
    Monitor(String),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot start the control and metrics servers: {0}")]
    Servers(String),
}

/// The state the main loop owns.
pub struct Daemon {
    jails: Vec<Jail>,
    /// For each source index, the jails reading it.
    routes: Vec<Vec<usize>>,
    firewall: Firewall,
    /// The host's own addresses, given to every jail.
    own: Arc<[IpNet]>,
    sources: Sources,
    /// Where the configuration is read from again on reload.
    config_path: PathBuf,
    /// Active bans and their history: what the kernel must hold.
    store: Store,
    /// How far back the ban history goes.
    history: Duration,
    /// The `[[notify]]` entries' delivery tasks (replaced on reload, their counts kept).
    notifications: Notifications,
    /// Up to when expired bans were announced to the notifiers that want unbans.
    expiry_checked: SystemTime,
    /// For metrics: netlink requests that failed, and repairs of our table.
    netlink_errors: u64,
    repairs: u64,
    /// Host names of jails with `usedns = "yes"`, resolved off the loop.
    resolver: Resolver,
    /// What the store still lacks (see [`Unsaved`]).
    unsaved: Unsaved,
}

/// What the rounds since the last successful save changed: their bans, where their sources
/// resume, and the failure windows their lines changed. Saved together in one transaction
/// ([`Daemon::save`]), so that a crash never leaves a position ahead of the failures and
/// bans of the lines before it; a save that fails (a full disk) is retried with the next
/// round, and nothing is dropped meanwhile.
#[derive(Debug, Default)]
struct Unsaved {
    bans: Vec<StoredBan>,
    positions: HashMap<String, String>,
    /// (jail name, window key).
    windows: HashSet<(String, IpAddr)>,
    /// The last save failed (so the next failure is not logged again).
    failing: bool,
}

/// The running log sources: files (one task for all logpath patterns) and journals (a thread
/// each). A source's index is its position in `routing.sources()`.
///
/// Each generation of sources has its own channel: when a reload replaces them, the batches
/// the old ones had queued go with the old channel, unprocessed and so not counted as read;
/// the new sources read those lines again from the saved positions, routed the new way.
struct Sources {
    routing: Routing,
    /// Whether sources without a saved position read back their existing lines.
    readback: bool,
    task: JoinHandle<Result<(), source::SourceError>>,
    journals: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::Sender<LineBatch>,
    lines: mpsc::Receiver<LineBatch>,
}

impl Sources {
    fn start(
        routing: Routing,
        readback: bool,
        store: &Store,
        jails: &[crate::config::JailConfig],
    ) -> Result<Sources, DaemonError> {
        let follower = FileFollower::new(&routing.files, &file_resume(store, readback))?;
        let (tx, lines) = mpsc::channel(LINE_QUEUE);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut journals = Vec::new();
        for (k, spec) in routing.journals.iter().enumerate() {
            let index = routing.files.len() + k;
            let start = match store.position(&spec.key()) {
                Ok(Some(cursor)) => Start::After(cursor),
                other => {
                    if let Err(e) = other {
                        tracing::error!(error = %e, "reading the saved journal position");
                    }
                    // First start: read back the longest findtime of the jails reading it, so
                    // that an attack in progress is counted.
                    let back = routing.routes[index]
                        .iter()
                        .map(|&j| jails[j].findtime)
                        .max()
                        .filter(|_| readback)
                        .unwrap_or_default();
                    Start::Since(
                        SystemTime::now()
                            .checked_sub(back)
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    )
                }
            };
            tracing::info!(source = spec.key(), ?start, "following the journal");
            journals.push(journal::spawn(
                spec.clone(),
                index,
                start,
                tx.clone(),
                stop.clone(),
            )?);
        }
        let task = tokio::spawn(source::run_files(follower, tx.clone()));
        Ok(Sources {
            routing,
            readback,
            task,
            journals,
            stop,
            tx,
            lines,
        })
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.task.abort();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The journal threads notice within their wait (500 ms); nothing waits for them.
        self.journals.clear();
    }
}

/// Which sources the jails read, and which jails read each source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Routing {
    /// Logpath patterns: sources `0..files.len()`.
    files: Vec<String>,
    /// Journals: the sources after the files.
    journals: Vec<JournalSpec>,
    /// For each source index, the indexes of the jails reading it.
    routes: Vec<Vec<usize>>,
}

impl Routing {
    /// How `banctl status` names each source, by index.
    fn names(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|f| format!("file:{f}"))
            .chain(self.journals.iter().map(JournalSpec::key))
            .collect()
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
    file_routes.extend(journal_routes);
    Routing {
        files,
        journals,
        routes: file_routes,
    }
}

/// Where files resume: their positions saved in `store`.
fn file_resume(store: &Store, readback: bool) -> Resume {
    let saved = match store.positions("file:") {
        Ok(saved) => saved,
        Err(e) => {
            tracing::error!(error = %e, "reading the saved file positions: files start at their end");
            Vec::new()
        }
    };
    let saved = saved
        .into_iter()
        .filter_map(|(key, text)| match FilePosition::decode(&text) {
            Some(position) => Some((key, position)),
            None => {
                tracing::warn!(source = key, position = text, "unreadable saved position");
                None
            }
        })
        .collect();
    Resume { saved, readback }
}

/// When a failure on `line` of `batch` happened, or `None` when it never counts: older than
/// findtime, or read back without a timestamp. A failure dated in the future (a skewed clock)
/// counts as now.
fn failure_time(
    config: &crate::config::JailConfig,
    batch: &LineBatch,
    line: &str,
    now: SystemTime,
) -> Option<SystemTime> {
    let at = match batch.timing {
        Timing::Live | Timing::Stamped => batch.read_at,
        Timing::CatchUp => config.dates.find(line, now).map_or(batch.read_at, |f| f.at),
        Timing::ReadBack => config.dates.find(line, now)?.at,
    };
    (at + config.findtime >= now).then(|| at.min(now))
}

/// Runs the daemon until `shutdown` completes. The table and its bans stay in the kernel.
/// SIGHUP (or `banctl reload`) reads `config_path` again.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    privilege::require_net_admin()?;
    let (store, damaged) = Store::open_or_recover(&config.daemon.state_dir)?;
    if let Some(aside) = &damaged {
        tracing::error!(
            moved_to = %aside.display(),
            "the state store was damaged: moved aside, starting a new one; the bans in the kernel are adopted, ban history and saved failures are lost"
        );
    }
    let firewall = Firewall::open()?;
    let monitor = Monitor::open().map_err(|e| DaemonError::Monitor(e.to_string()))?;
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

    let routing = routing(&config.jails);
    let routes = routing.routes.clone();
    let sources = Sources::start(routing, config.daemon.readback, &store, &config.jails)?;

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
    let mut daemon = Daemon {
        jails: jails.collect(),
        routes,
        firewall,
        own,
        sources,
        config_path,
        store,
        history: config.daemon.history,
        notifications: Notifications::start(&config.notify, Arc::default()),
        expiry_checked: SystemTime::now(),
        netlink_errors: 0,
        repairs: 0,
        resolver,
        unsaved: Unsaved::default(),
    };
    daemon.keep_matched_lines();
    daemon.restore_failures(SystemTime::now());
    // Table, rules and every unexpired ban of the store, in one batch, before anything else.
    let (restored, adopted) = daemon.reconcile(SystemTime::now())?;
    tracing::info!(restored, adopted, "ruleset in place");
    let (repair_tx, mut repairs) = mpsc::channel(4);
    watch_ruleset(monitor, repair_tx)?;
    let (ctl_tx, mut requests) = mpsc::channel(64);
    let (scrape_tx, mut scrapes) = mpsc::channel::<Scrape>(8);
    if metrics_listener.is_some() {
        tracing::info!(address = ?config.daemon.metrics, "serving metrics");
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
    tracing::info!(jails = daemon.jails.len(), socket = %config.daemon.socket.display(), "banctl daemon ready");
    manager.ready(&format!("{}; {restored} bans restored", daemon.summary()));

    tokio::pin!(shutdown);
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
            }
            Some(reply) = scrapes.recv() => {
                if reply.send(daemon.snapshot()).is_err() {
                    tracing::debug!("metrics client left before the answer");
                }
            }
            Some(by) = repairs.recv() => daemon.repair(by),
            _ = watchdog.tick(), if manager.watchdog_interval().is_some() => {
                manager.ping();
                manager.status(&daemon.summary());
            }
            Some(()) = hangup.recv() => {
                tracing::info!("SIGHUP: reloading {}", daemon.config_path.display());
                manager.reloading();
                daemon.reload();
                manager.ready(&daemon.summary());
            }
            _ = expiry.tick() => daemon.announce_expired(SystemTime::now()),
            _ = sweep.tick() => daemon.sweep(SystemTime::now()),
            _ = purge.tick() => daemon.purge(SystemTime::now()),
            Some(answer) = resolved.recv() => daemon.on_resolved(answer),
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
                // The runtime has one thread: let the control and metrics servers and the
                // sources move before the next round, or a flood would starve them.
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| DaemonError::Servers(e.to_string()))?;
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
                    let metrics = metrics.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
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

/// Who removed part of our table: a process id, or `None` when notifications were lost.
type RemovedBy = Option<u32>;

/// Follows the kernel's nf_tables notifications on a thread of its own and reports every
/// transaction of another process that removed something from our table (or a lost
/// notification, after which the ruleset must be checked).
fn watch_ruleset(mut monitor: Monitor, tx: mpsc::Sender<RemovedBy>) -> Result<(), DaemonError> {
    let ours = |pid: u32| std::path::Path::new(&format!("/proc/self/task/{pid}")).exists();
    let spawned = std::thread::Builder::new()
        .name("banctl-ruleset-watch".into())
        .spawn(move || {
            // Whether the transaction being announced removed something of ours.
            let mut touched = false;
            loop {
                // Every notification is looked at (a datagram may hold several transactions);
                // one report per datagram is enough, since a repair checks everything.
                let mut report = None;
                match monitor.next(Duration::from_secs(1)) {
                    Ok(notes) => {
                        for n in notes {
                            if n.kind == crate::firewall::NFT_MSG_NEWGEN {
                                let theirs = n.pid.is_some_and(|pid| !ours(pid));
                                if std::mem::take(&mut touched) && theirs {
                                    report = Some(n.pid);
                                }
                            } else {
                                touched |= n.is_removal()
                                    && n.family == libc::NFPROTO_INET as u8
                                    && n.table.as_deref() == Some(crate::firewall::layout::TABLE);
                            }
                        }
                    }
                    // The socket overflowed: what happened is unknown, so check everything.
                    Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                        touched = false;
                        report = Some(None);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ruleset watch stopped");
                        return;
                    }
                }
                if let Some(by) = report {
                    if tx.blocking_send(by).is_err() {
                        return;
                    }
                } else if tx.is_closed() {
                    return;
                }
            }
        });
    spawned
        .map(drop)
        .map_err(|e| DaemonError::Monitor(e.to_string()))
}

impl Daemon {
    /// Filters lines through their jails and writes the resulting bans in one batch.
    pub fn on_lines(&mut self, batches: &[LineBatch]) {
        let now = SystemTime::now();
        let mut bans = Vec::new();
        // The failure windows this round changed: saved with the positions, after the bans.
        let mut touched: HashSet<(usize, IpAddr)> = HashSet::new();
        for batch in batches {
            for &source in &batch.sources {
                let routed: Vec<usize> = self.routes.get(source).cloned().unwrap_or_default();
                for j in routed {
                    let counters = self.jails[j].counters_mut();
                    counters.lines += batch.lines.len() as u64;
                    counters.cut += batch.cut;
                    for line in &batch.lines {
                        let jail = &mut self.jails[j];
                        let addr = match jail.examine(line) {
                            Verdict::Matched(hit) => hit.addr,
                            Verdict::Name { name, .. } => {
                                self.on_name(j, name, batch, line, now);
                                continue;
                            }
                            _ => continue,
                        };
                        jail.counters_mut().matched += 1;
                        let Some(at) = failure_time(jail.config(), batch, line, now) else {
                            continue;
                        };
                        self.count(j, addr, at, line, &mut bans, &mut touched);
                    }
                }
            }
        }
        if !bans.is_empty() {
            self.enforce(bans, now);
        }
        // Only once their lines are processed, so a crash re-reads rather than skips.
        self.save_round(batches, &touched);
    }

    /// Counts a failure of `addr` at `at` in jail `j`: a ban joins `bans`, a changed failure
    /// window `touched`.
    fn count(
        &mut self,
        j: usize,
        addr: IpAddr,
        at: SystemTime,
        line: &str,
        bans: &mut Vec<Wanted>,
        touched: &mut HashSet<(usize, IpAddr)>,
    ) {
        let jail = &mut self.jails[j];
        match jail.record_line(addr, at, line) {
            Outcome::Ban(ban) => bans.push(Wanted {
                ban,
                address: addr,
                reason: reason(line),
                matched: jail.take_matched(addr),
            }),
            Outcome::Counted { .. } => {}
            Outcome::Ignored => {
                tracing::debug!(jail = jail.name(), line, "ignored address");
                return;
            }
        }
        touched.insert((j, jail.key_of(addr)));
    }

    /// A failure of jail `j` that names host `name`, not an address: per its `usedns`,
    /// nothing, a warning, or a lookup whose answer [`Daemon::on_resolved`] counts.
    fn on_name(&self, j: usize, name: String, batch: &LineBatch, line: &str, now: SystemTime) {
        let jail = &self.jails[j];
        match jail.config().usedns {
            UseDns::No => {}
            UseDns::Warn => tracing::warn!(
                jail = jail.name(),
                name,
                "a failure of a host name, not an address: not resolved nor banned (usedns = \"warn\")"
            ),
            UseDns::Yes => {
                if let Some(at) = failure_time(jail.config(), batch, line, now) {
                    self.resolver.ask(Lookup {
                        jail: jail.name().to_owned(),
                        name,
                        at,
                        line: line.into(),
                    });
                }
            }
        }
    }

    /// The addresses a failure's host name resolved to: each counts the failure.
    pub fn on_resolved(&mut self, resolved: Resolved) {
        let Resolved { lookup, addrs } = resolved;
        // The jail may be gone (a reload) or its mind changed.
        let Some(j) = self
            .jails
            .iter()
            .position(|jail| jail.name() == lookup.jail && jail.config().usedns == UseDns::Yes)
        else {
            return;
        };
        let now = SystemTime::now();
        if lookup.at + self.jails[j].config().findtime < now {
            return;
        }
        let (mut bans, mut touched) = (Vec::new(), HashSet::new());
        for addr in addrs {
            tracing::info!(jail = lookup.jail, name = lookup.name, %addr, "failure of a host name counted for its address");
            self.jails[j].counters_mut().matched += 1;
            self.count(
                j,
                addr,
                lookup.at.min(now),
                &lookup.line,
                &mut bans,
                &mut touched,
            );
        }
        if !bans.is_empty() {
            self.enforce(bans, now);
        }
        self.save_round(&[], &touched);
    }

    /// Saves, in one transaction with what earlier rounds left unsaved, the bans of this
    /// round, where each source of `batches` resumes (its last position) and the failure
    /// windows its lines changed.
    fn save_round(&mut self, batches: &[LineBatch], touched: &HashSet<(usize, IpAddr)>) {
        for (key, position) in batches.iter().filter_map(|b| b.resume.as_ref()) {
            self.unsaved.positions.insert(key.clone(), position.clone());
        }
        for &(j, addr) in touched {
            let jail = self.jails[j].name().to_owned();
            self.unsaved.windows.insert((jail, addr));
        }
        self.save();
    }

    /// Writes what the store lacks ([`Unsaved`]) in one transaction; on failure keeps it
    /// for the next try.
    fn save(&mut self) {
        let Unsaved {
            bans,
            positions,
            windows,
            failing,
        } = &mut self.unsaved;
        if bans.is_empty() && positions.is_empty() && windows.is_empty() {
            return;
        }
        let positions_now: Vec<(&str, &str)> = positions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let jails = &self.jails;
        let windows_now: Vec<Window> = windows
            .iter()
            .filter_map(|(name, addr)| {
                let jail = jails.iter().find(|j| j.name() == name)?;
                Some(Window {
                    jail: jail.name(),
                    addr: *addr,
                    times: jail.window(*addr),
                })
            })
            .collect();
        match self.store.save_round(bans, &positions_now, &windows_now) {
            Ok(()) => {
                if *failing {
                    tracing::warn!("the state store takes writes again: what waited is saved");
                }
                self.unsaved = Unsaved::default();
            }
            Err(e) => {
                if !std::mem::replace(failing, true) {
                    tracing::error!(error = %e, bans = bans.len(), "saving bans, source positions and failures failed: kept, retried with the next round (positions do not advance meanwhile)");
                }
            }
        }
    }

    /// Saves that the jails forgot the failures of these addresses (after a ban or unban).
    fn forget_saved(&mut self, forgotten: &[(usize, Vec<IpAddr>)]) {
        for (j, addrs) in forgotten {
            let jail = self.jails[*j].name().to_owned();
            for &addr in addrs {
                self.unsaved.windows.insert((jail.clone(), addr));
            }
        }
        self.save();
    }

    /// How many times `net` was banned since `since`, in `scope` (all jails when empty):
    /// the history, plus bans not saved yet.
    fn previous_bans(&self, net: &IpNet, scope: &[&str], since: SystemTime) -> u32 {
        let saved = self
            .store
            .previous_bans(net, scope, since)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "reading the ban history; counting none");
                0
            });
        let unsaved = self
            .unsaved
            .bans
            .iter()
            .filter(|b| b.net == *net && b.banned_at >= since)
            .filter(|b| scope.is_empty() || scope.contains(&b.jail.as_str()))
            .count();
        saved + u32::try_from(unsaved).unwrap_or(u32::MAX)
    }

    /// Gives the jails back the failures saved before a restart.
    fn restore_failures(&mut self, now: SystemTime) {
        let saved = match self.store.failures() {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!(error = %e, "reading saved failures: counting starts from zero");
                return;
            }
        };
        let mut restored = 0;
        for (name, addr, times) in saved {
            if let Some(jail) = self.jails.iter_mut().find(|j| j.name() == name) {
                jail.restore(addr, times, now);
                restored += 1;
            }
        }
        tracing::info!(addresses = restored, "failure windows restored");
    }

    /// Escalates, writes (one batch), records and announces bans, then any recidive bans they
    /// cause.
    fn enforce(&mut self, mut bans: Vec<Wanted>, now: SystemTime) {
        // Addresses rotating inside one prefix all ask for the same ban: keep the first.
        let mut seen = HashSet::new();
        bans.retain(|w| seen.insert((w.ban.jail.clone(), w.ban.net)));
        let mut why = Vec::with_capacity(bans.len());
        let bans = bans
            .into_iter()
            .map(|w| {
                why.push((w.address, w.matched));
                (w.ban, w.reason)
            })
            .collect();
        let stored = self.escalate(bans, now);
        if let Err(e) = self.commit(&stored) {
            tracing::error!(error = %e, count = stored.len(), "writing bans failed");
            return;
        }
        self.announce_bans(&stored, why, "failures");
        let recidive = self.recidive(&stored, now);
        if !recidive.is_empty() {
            let stored = self.escalate(recidive, now);
            if let Err(e) = self.commit(&stored) {
                tracing::error!(error = %e, count = stored.len(), "writing recidive bans failed");
                return;
            }
            self.announce_bans(&stored, Vec::new(), "recidive");
        }
    }

    /// Gives each ban its escalated time and its ban number, from the history.
    fn escalate(&self, bans: Vec<(Ban, String)>, now: SystemTime) -> Vec<StoredBan> {
        let since = now
            .checked_sub(self.history)
            .unwrap_or(std::time::UNIX_EPOCH);
        bans.into_iter()
            .map(|(mut ban, reason)| {
                let escalation = self
                    .jails
                    .iter()
                    .find(|j| j.name() == ban.jail)
                    .and_then(|j| j.config().escalation.as_ref());
                let scope: Vec<&str> = match escalation {
                    Some(e) if e.across_jails => Vec::new(),
                    _ => vec![ban.jail.as_str()],
                };
                let previous = self.previous_bans(&ban.net, &scope, since);
                if let Some(e) = escalation {
                    ban.time = e.bantime(ban.time, previous);
                }
                StoredBan {
                    jail: ban.jail,
                    net: ban.net,
                    banned_at: now,
                    time: ban.time,
                    count: previous + 1,
                    reason,
                }
            })
            .collect()
    }

    /// Writes bans to the kernel (one batch), then to the store. A ban that a wider one in
    /// force covers is recorded, not written: it is put back when the wider one ends (see
    /// [`Daemon::uncover`]); narrower bans that a new one covers leave the kernel and stay in
    /// the store the same way.
    fn commit(&mut self, stored: &[StoredBan]) -> Result<Overlaps, FirewallError> {
        let bans: Vec<Ban> = stored.iter().map(StoredBan::to_ban).collect();
        let overlaps = match self.write_bans(&bans) {
            Ok(overlaps) => overlaps,
            Err(e) => {
                self.netlink_errors += 1;
                return Err(e);
            }
        };
        for &(i, wider) in &overlaps.covered {
            let b = &stored[i];
            tracing::info!(jail = b.jail.as_str(), address = %b.net, covered_by = %wider, "ban already covered by a wider ban: nothing to write");
        }
        for (jail, net) in &overlaps.replaced {
            tracing::info!(jail = jail.as_str(), address = %net, "ban replaced in the kernel by a wider ban");
        }
        for b in stored {
            tracing::info!(jail = b.jail.as_str(), address = %b.net, bantime = %b.time, ban = b.count, "ban");
            if let Some(jail) = self.jails.iter_mut().find(|j| j.name() == b.jail) {
                jail.counters_mut().bans += 1;
            }
        }
        // Saved with the round's positions and failures (the kernel enforces them already).
        self.unsaved.bans.extend_from_slice(stored);
        Ok(overlaps)
    }

    /// Bans by recidive jails: an address banned `maxretry` times within their `findtime`, in
    /// any other jail, counted from the history (which already holds `new`).
    fn recidive(&self, new: &[StoredBan], now: SystemTime) -> Vec<(Ban, String)> {
        let mut out = Vec::new();
        let others: Vec<&str> = self
            .jails
            .iter()
            .filter(|j| !j.config().recidive)
            .map(Jail::name)
            .collect();
        for jail in self.jails.iter().filter(|j| j.config().recidive) {
            let c = jail.config();
            let since = now.checked_sub(c.findtime).unwrap_or(std::time::UNIX_EPOCH);
            for b in new.iter().filter(|b| others.contains(&b.jail.as_str())) {
                let active = self.store.ban_count(&c.name, &b.net, now).map(|count| {
                    count.or_else(|| {
                        let unsaved = self.unsaved.bans.iter();
                        unsaved
                            .filter(|u| u.jail == c.name && u.net == b.net)
                            .map(|u| u.count)
                            .next_back()
                    })
                });
                let bans = self.previous_bans(&b.net, &others, since);
                match (active, bans) {
                    (Ok(None), n) if n >= c.maxretry && !jail.ignores(&b.net) => {
                        let ban = Ban {
                            jail: c.name.clone(),
                            net: b.net,
                            time: c.bantime,
                        };
                        let why = format!(
                            "{n} bans within {}",
                            crate::duration::format_duration(c.findtime)
                        );
                        if !out.iter().any(|(o, _): &(Ban, String)| o == &ban) {
                            out.push((ban, why));
                        }
                    }
                    (Err(e), _) => {
                        tracing::error!(error = %e, jail = c.name.as_str(), "reading the ban history")
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Puts the kernel in line with the configuration and the store, in one batch: the layout,
    /// plus every unexpired ban of the store that the kernel lacks, with its remaining time.
    /// Bans found in the kernel but not in the store are adopted. Returns (restored, adopted).
    fn reconcile(&mut self, now: SystemTime) -> Result<(usize, usize), DaemonError> {
        // Before the purge below forgets them.
        self.announce_expired(now);
        let names: Vec<&str> = self.jails.iter().map(Jail::name).collect();
        self.store.purge(now, self.history, &names)?;
        let stored = self.store.active(now)?;
        let kernel = self.firewall.snapshot(&names)?;
        // Sets, not scans: after a restart both sides may hold 100,000 bans.
        let in_kernel: HashSet<(&str, IpNet)> = kernel
            .iter()
            .flat_map(|(jail, elems)| elems.iter().map(move |e| (jail.as_str(), e.net)))
            .collect();
        let in_store: HashSet<(&str, IpNet)> =
            stored.iter().map(|b| (b.jail.as_str(), b.net)).collect();
        let restore: Vec<Restore> = stored
            .iter()
            .filter(|b| !in_kernel.contains(&(b.jail.as_str(), b.net)))
            .filter_map(|b| {
                b.remaining(now).map(|left| Restore {
                    ban: b.to_ban(),
                    expires_in: left,
                })
            })
            .collect();
        let adopt: Vec<StoredBan> = kernel
            .iter()
            .flat_map(|(jail, elems)| elems.iter().map(move |e| (jail, e)))
            .filter(|(jail, e)| !in_store.contains(&(jail.as_str(), e.net)))
            .map(|(jail, e)| adopted(jail, e, now))
            .collect();
        // Store bans inside a wider ban stay out of the kernel while it lasts.
        let fitted = firewall::fit(&kernel, &restore);
        let rules: Vec<_> = self.jails.iter().map(|j| j.config().rules()).collect();
        self.firewall.apply_layout(&rules, &fitted.fits)?;
        if !fitted.wider.is_empty() {
            self.firewall.restore(&fitted.wider)?;
        }
        self.store.adopt(&adopt)?;
        Ok((fitted.fits.len() + fitted.wider.len(), adopt.len()))
    }

    /// Someone else removed part of our table (or notifications were lost): put it back.
    pub fn repair(&mut self, by: RemovedBy) {
        match self.reconcile(SystemTime::now()) {
            Ok((restored, _)) => match by {
                Some(pid) => {
                    self.repairs += 1;
                    tracing::warn!(
                        pid,
                        restored,
                        "another process removed parts of table inet banctl: layout and bans repaired"
                    )
                }
                None => tracing::info!(restored, "ruleset checked after lost notifications"),
            },
            Err(e) => {
                self.netlink_errors += 1;
                tracing::error!(error = %e, "repairing the ruleset failed");
            }
        }
    }

    /// One line for `systemctl status`: jails and bans in force.
    fn summary(&self) -> String {
        let bans = match self.store.active_count(SystemTime::now()) {
            Ok(n) => n.to_string(),
            Err(_) => "?".to_owned(),
        };
        format!("{} jails, {bans} active bans", self.jails.len())
    }

    fn purge(&mut self, now: SystemTime) {
        // Before the purge forgets them.
        self.announce_expired(now);
        let names: Vec<&str> = self.jails.iter().map(Jail::name).collect();
        match self.store.purge(now, self.history, &names) {
            Ok(n) => tracing::debug!(rows = n, "state store purged"),
            Err(e) => tracing::error!(error = %e, "purging the state store"),
        }
        let windows: Vec<(&str, u32)> = self
            .jails
            .iter()
            .map(|j| (j.name(), j.window_start_at(now)))
            .collect();
        match self.store.purge_failures(&windows) {
            Ok(n) => tracing::debug!(rows = n, "expired failures purged"),
            Err(e) => tracing::error!(error = %e, "purging saved failures"),
        }
    }

    /// Writes bans; if the kernel lost our table or sets, restores the layout and retries once.
    fn write_bans(&mut self, bans: &[Ban]) -> Result<Overlaps, FirewallError> {
        match self.firewall.ban(bans) {
            Err(FirewallError::Netlink(e))
                if e.errno() == Some(libc::ENOENT) && self.layout_incomplete() =>
            {
                tracing::warn!("banctl's table or sets were missing: restoring the layout");
                let rules: Vec<_> = self.jails.iter().map(|j| j.config().rules()).collect();
                self.firewall.apply_layout(&rules, &[])?;
                self.firewall.ban(bans)
            }
            other => other,
        }
    }

    /// Whether a configured jail's sets are missing from the kernel (or cannot be listed).
    fn layout_incomplete(&mut self) -> bool {
        match self.firewall.jails_in_kernel() {
            Ok(present) => self
                .jails
                .iter()
                .any(|j| !present.iter().any(|p| p == j.name())),
            Err(_) => true,
        }
    }

    pub fn sweep(&mut self, now: SystemTime) {
        for jail in &mut self.jails {
            jail.sweep(now);
        }
        // A save that failed is tried again even when no line comes.
        self.save();
        if self.sources.task.is_finished() {
            tracing::error!("log file sources stopped; restarting them");
            let resume = file_resume(&self.store, self.sources.readback);
            match FileFollower::new(&self.sources.routing.files, &resume) {
                Ok(follower) => {
                    let tx = self.sources.tx.clone();
                    self.sources.task = tokio::spawn(source::run_files(follower, tx));
                }
                Err(e) => tracing::error!(error = %e, "cannot restart log file sources"),
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
        let routing = routing(&config.jails);
        let routes = routing.routes.clone();
        let same = routing.files == self.sources.routing.files
            && routing.journals == self.sources.routing.journals;
        let new_sources = if same {
            self.sources.routing.routes = routes.clone();
            None
        } else {
            match Sources::start(routing, config.daemon.readback, &self.store, &config.jails) {
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
        if let Err(e) = self.firewall.apply_layout(&rules, &[]) {
            tracing::error!(error = %e, "reload refused by the kernel, the running configuration stays");
            return self.firewall_failed(e);
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
        self.history = config.daemon.history;
        // The old notifiers finish what they queued, then stop.
        let stats = self.notifications.stats().clone();
        self.notifications = Notifications::start(&config.notify, stats);
        self.keep_matched_lines();
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

    /// A failed netlink request as a control response, counted in the metrics.
    fn firewall_failed(&mut self, e: FirewallError) -> Response {
        self.netlink_errors += 1;
        Self::firewall_error(e)
    }

    fn firewall_error(e: FirewallError) -> Response {
        Response::Error {
            kind: ErrorKind::Firewall,
            message: e.to_string(),
        }
    }

    fn bans_of(&mut self, j: usize) -> Result<Vec<BanInfo>, Response> {
        let jail = self.jails[j].name().to_owned();
        let elements = self
            .firewall
            .list(&jail)
            .map_err(|e| self.firewall_failed(e))?;
        let now = SystemTime::now();
        Ok(elements
            .into_iter()
            .map(|e| {
                let mut info = ban_info(&jail, &e);
                info.ban_count = self
                    .store
                    .ban_count(&jail, &e.net, now)
                    .unwrap_or_else(|err| {
                        tracing::error!(error = %err, "reading the state store");
                        None
                    });
                info
            })
            .collect())
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
        let ban = Ban {
            jail: jail.to_owned(),
            net: target,
            time: time.unwrap_or(config.bantime),
        };
        let now = SystemTime::now();
        let mut stored = self.escalate(vec![(ban, "manual ban".to_owned())], now);
        if let (Some(time), Some(b)) = (time, stored.first_mut()) {
            // An explicit --time is taken as given, never escalated.
            b.time = time;
        }
        // `commit` counted the netlink error.
        let overlaps = self.commit(&stored).map_err(Self::firewall_error)?;
        self.announce_bans(&stored, Vec::new(), "manual");
        let forgotten = self.jails[j].forget(&target);
        self.forget_saved(&[(j, forgotten)]);
        let time = stored.first().map_or(BanTime::Permanent, |b| b.time);
        tracing::info!(jail, address = %target, bantime = %time, "manual ban");
        Ok(Response::Banned {
            jail: jail.to_owned(),
            target,
            time,
            covered_by: overlaps.covered.first().map(|&(_, wider)| wider),
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
        // Bans the target covers that wait in the store under a wider ban go too.
        let jails: Vec<String> = self
            .selected(jail)?
            .into_iter()
            .map(|j| self.jails[j].name().to_owned())
            .collect();
        let waiting = self.waiting(&jails, |net| target.covers(net));
        if removed.is_empty() && waiting.is_empty() {
            let scope = jail.map_or("any jail".to_owned(), |j| format!("jail {j}"));
            return Err(Response::Error {
                kind: ErrorKind::NotBanned,
                message: format!("{target} is not banned in {scope}"),
            });
        }
        self.lift(&removed, &waiting)?;
        Ok(Response::Unbanned { removed })
    }

    /// Active store bans of `jails` whose prefix `pick` takes (those a wider ban keeps out
    /// of the kernel among them).
    fn waiting(&self, jails: &[String], pick: impl Fn(&IpNet) -> bool) -> Vec<(String, IpNet)> {
        match self.store.active(SystemTime::now()) {
            Ok(active) => active
                .into_iter()
                .filter(|b| jails.contains(&b.jail) && pick(&b.net))
                .map(|b| (b.jail, b.net))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading the state store");
                Vec::new()
            }
        }
    }

    /// Removes every ban of the selected jails in one batch.
    fn unban_all(&mut self, jail: Option<&str>) -> Result<Response, Response> {
        let mut removed = Vec::new();
        let mut jails = Vec::new();
        for j in self.selected(jail)? {
            removed.extend(self.bans_of(j)?);
            jails.push(self.jails[j].name().to_owned());
        }
        let waiting = self.waiting(&jails, |_| true);
        self.lift(&removed, &waiting)?;
        Ok(Response::Unbanned { removed })
    }

    /// Deletes the given bans in one batch and forgets the addresses' failures; `waiting`
    /// (bans a wider one kept out of the kernel) leave the store only. Store bans that a
    /// lifted ban covered and that are not lifted go back into the kernel.
    fn lift(&mut self, bans: &[BanInfo], waiting: &[(String, IpNet)]) -> Result<(), Response> {
        let items: Vec<(String, IpNet)> =
            bans.iter().map(|b| (b.jail.clone(), b.address)).collect();
        if !items.is_empty() {
            self.firewall
                .unban(&items)
                .map_err(|e| self.firewall_failed(e))?;
        }
        // Gone from the store too, so that no repair or restart puts them back.
        let gone: Vec<(String, IpNet)> = items.iter().chain(waiting).cloned().collect();
        if let Err(e) = self.store.remove(&gone) {
            tracing::error!(error = %e, "removing unbanned addresses from the state store");
        }
        let lifted: Vec<(&str, IpNet)> = items.iter().map(|(j, n)| (j.as_str(), *n)).collect();
        self.uncover(&lifted, SystemTime::now());
        let mut forgotten = Vec::new();
        for b in bans {
            for (j, jail) in self.jails.iter_mut().enumerate() {
                forgotten.push((j, jail.forget(&b.address)));
            }
            tracing::info!(jail = b.jail.as_str(), address = %b.address, "unban");
        }
        self.forget_saved(&forgotten);
        self.announce_unbans(bans);
        Ok(())
    }

    /// The sources jail `j` reads, as `banctl status` names them.
    fn sources_of(&self, j: usize) -> Vec<String> {
        let names = self.sources.routing.names();
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, jails)| jails.contains(&j))
            .filter_map(|(i, _)| names.get(i).cloned())
            .collect()
    }

    fn status(&mut self, jail: Option<&str>) -> Result<Response, Response> {
        let mut jails = Vec::new();
        for j in self.selected(jail)? {
            let active_bans = self.bans_of(j)?.len();
            let name = self.jails[j].name().to_owned();
            let dropped = self
                .firewall
                .dropped(&name)
                .map_err(|e| self.firewall_failed(e))?;
            let jail = &self.jails[j];
            let c = jail.config();
            jails.push(JailStatus {
                name: c.name.clone(),
                filter: c.filter_name.clone(),
                sources: self.sources_of(j),
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
        ban_count: None,
    }
}

impl StoredBan {
    fn to_ban(&self) -> Ban {
        Ban {
            jail: self.jail.clone(),
            net: self.net,
            time: self.time,
        }
    }
}

/// A ban found in the kernel that the store does not know, as the store will keep it.
fn adopted(jail: &str, e: &Element, now: SystemTime) -> StoredBan {
    let (time, banned_at) = match (e.timeout, e.expires_in) {
        (Some(timeout), Some(left)) => (
            BanTime::Finite(timeout),
            now.checked_sub(timeout.saturating_sub(left)).unwrap_or(now),
        ),
        _ => (BanTime::Permanent, now),
    };
    StoredBan {
        jail: jail.to_owned(),
        net: e.net,
        banned_at,
        time,
        count: 1,
        reason: "found in the kernel".to_owned(),
    }
}

/// A matched line as a ban's reason, cut to a bounded length on a character boundary.
fn reason(line: &str) -> String {
    let mut end = line.len().min(MAX_REASON);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}
