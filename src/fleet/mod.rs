//! The fleet link: this host's bans published to, and the fleet's bans read from, a NATS
//! JetStream key-value bucket (see [`wire`] for its keys).
//!
//! The link runs on a thread of its own with its own runtime, so that neither a flood of log
//! lines nor a slow server delays the other. It talks to the daemon's loop over two bounded
//! channels: [`Outgoing`] decisions of this host (queued in the outbox file first, so that
//! an outage or a restart loses none), and [`Inbound`] rounds of remote bans and lifts,
//! each acknowledged once the engine applied it; only then is the stream revision saved,
//! so that a restart replays exactly what was not applied.
//!
//! **Invariant:** the link knows no ban policy (trust, jails, escalation: the engine's) and
//! no kernel; the engine knows nothing of NATS.

pub mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::addr::IpNet;
use crate::config::{Auth, FleetConfig};
use crate::duration::BanTime;
use crate::engine::{RemoteBan, RemoteLift};
use crate::state::Outbox;
use wire::{BanMsg, Decoded, UnbanMsg};

/// Decisions waiting for the link thread; beyond this the daemon's loop never waits: the
/// message is logged and dropped (the outbox behind it is the real queue).
const OUT_QUEUE: usize = 4096;
/// Entries of the bucket folded into one round for the engine.
const ROUND: usize = 4096;
/// Queued decisions sent together before their acks are read.
const FLUSH_BATCH: usize = 1024;
/// How long a publish waits for the stream's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot start the fleet link: {0}")]
    Start(String),
}

/// A decision of this host, for the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Ban {
        jail: String,
        net: IpNet,
        time: BanTime,
        count: u32,
        reason: String,
    },
    Unban {
        net: IpNet,
        jail: Option<String>,
    },
}

/// Remote bans and lifts for the engine; `done` is answered once they are applied.
#[derive(Debug)]
pub struct Inbound {
    pub bans: Vec<RemoteBan>,
    pub lifts: Vec<RemoteLift>,
    /// The last of the initial replay: the fleet's bans are all in.
    pub caught_up: bool,
    pub done: oneshot::Sender<()>,
}

/// What `banctl status` shows of the link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub role: String,
    pub name: String,
    pub connected: bool,
    /// The fleet's bans are in (the initial replay is done).
    pub caught_up: bool,
    /// Stream revision applied up to, and the stream's last one when last seen.
    pub applied: u64,
    pub stream_last: u64,
    /// Local decisions waiting to be published.
    pub queued: u64,
    pub published: u64,
    pub received: u64,
    /// Entries that could not be read (wrong key or value).
    pub unreadable: u64,
    /// Remote bans this host refused, by `origin:reason` (filled in by the daemon from the
    /// engine's counts).
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
    pub last_error: Option<String>,
}

/// The running link. Stopped on drop.
pub struct Fleet {
    out: mpsc::Sender<Outgoing>,
    status: Arc<Mutex<LinkStatus>>,
    stop: Option<oneshot::Sender<()>>,
    publishes: bool,
}

impl Fleet {
    /// Starts the link thread; remote rounds arrive on `inbound` (none for a reporter).
    pub fn start(
        config: FleetConfig,
        state_dir: PathBuf,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Fleet, FleetError> {
        let outbox = Outbox::open(&state_dir, config.queue)?;
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let (stop, stopped) = oneshot::channel();
        let status = Arc::new(Mutex::new(LinkStatus {
            role: config.role.as_str().to_owned(),
            name: config.name.clone(),
            queued: outbox.len().unwrap_or(0),
            ..LinkStatus::default()
        }));
        let runtime = crate::thread_runtime().map_err(|e| FleetError::Start(e.to_string()))?;
        let publishes = config.role.publishes();
        let link = Link {
            config,
            outbox,
            inbound,
            status: status.clone(),
            warned: false,
        };
        std::thread::Builder::new()
            .name("banctl-fleet".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = link.run(out_rx) => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| FleetError::Start(e.to_string()))?;
        Ok(Fleet {
            out,
            status,
            stop: Some(stop),
            publishes,
        })
    }

    /// Hands a decision of this host to the link; never waits.
    pub fn send(&self, decision: Outgoing) {
        if !self.publishes {
            return;
        }
        if let Err(e) = self.out.try_send(decision) {
            tracing::error!(error = %e, "fleet link not keeping up: a decision was not published");
        }
    }

    pub fn status(&self) -> LinkStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Link {
    config: FleetConfig,
    outbox: Outbox,
    inbound: mpsc::Sender<Inbound>,
    status: Arc<Mutex<LinkStatus>>,
    /// A publish failure was logged (one warning per outage, not one per message).
    warned: bool,
}

impl Link {
    fn set(&self, f: impl FnOnce(&mut LinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    async fn run(mut self, mut out_rx: mpsc::Receiver<Outgoing>) {
        let client = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "fleet: cannot set up the NATS client; no fleet");
                self.set(|s| s.last_error = Some(e));
                return;
            }
        };
        let js = jetstream::new(client.clone());
        let mut backoff = Duration::from_millis(200);
        loop {
            let kv = tokio::select! {
                kv = self.bucket(&js) => kv,
                Some(o) = out_rx.recv() => { self.queue_all(vec![o]); continue; }
            };
            let kv = match kv {
                Ok(kv) => kv,
                Err(e) => {
                    if !self.warned {
                        tracing::warn!(error = %e, servers = ?self.config.servers, "fleet: servers unreachable; local bans go on and are queued");
                        self.warned = true;
                    }
                    self.set(|s| {
                        s.connected = false;
                        s.last_error = Some(e.clone());
                    });
                    self.wait_queueing(&mut out_rx, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            self.set(|s| s.connected = true);
            self.flush(&js).await;
            if let Err(e) = self.follow(&client, &js, &kv, &mut out_rx).await {
                tracing::warn!(error = %e, "fleet: following the bucket stopped; starting again");
                self.set(|s| {
                    s.connected = false;
                    s.last_error = Some(e);
                });
                self.wait_queueing(&mut out_rx, Duration::from_millis(500))
                    .await;
            }
        }
    }

    /// Sleeps `time`, queueing decisions meanwhile.
    async fn wait_queueing(&mut self, out_rx: &mut mpsc::Receiver<Outgoing>, time: Duration) {
        let sleep = tokio::time::sleep(time);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                Some(o) = out_rx.recv() => self.queue_all(vec![o]),
            }
        }
    }

    async fn connect(&self) -> Result<async_nats::Client, String> {
        let c = &self.config;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("banctl {}", c.name))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // At once the first time (a daemon's start waits for the fleet's bans), then
            // backing off to 5 s.
            .reconnect_delay_callback(|attempt| match attempt {
                0 | 1 => Duration::ZERO,
                n => Duration::from_millis((50 * 2u64.pow(n.min(7) as u32)).min(5_000)),
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "fleet: the NATS server reports an error")
                    }
                    async_nats::Event::Disconnected => tracing::debug!("fleet: disconnected"),
                    async_nats::Event::Connected => tracing::debug!("fleet: connected"),
                    other => tracing::debug!(event = %other, "fleet: client event"),
                }
            });
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        options = match &c.auth {
            Auth::None => options,
            Auth::Credentials(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Auth::NkeySeed(path) => options.nkey(read(path)?),
            Auth::Password { user, file } => options.user_and_password(user.clone(), read(file)?),
        };
        if let Some(tls) = &c.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        options
            .connect(c.servers.as_slice())
            .await
            .map_err(|e| e.to_string())
    }

    /// The bucket, its stream created if missing (where this host may create it).
    async fn bucket(&self, js: &jetstream::Context) -> Result<kv::Store, String> {
        let name = format!("KV_{}", self.config.bucket);
        if let Err(e) = js.get_stream(&name).await {
            tracing::debug!(error = %e, "fleet: no stream yet; creating it");
            // `create_key_value` of the client needs servers newer than 2.9: the stream a
            // bucket is, made by hand.
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![format!("$KV.{}.>", self.config.bucket)],
                max_messages_per_subject: 1,
                max_age: self.config.keep,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_secs(120),
                num_replicas: self.config.replicas,
                ..Default::default()
            };
            js.create_stream(config)
                .await
                .map_err(|e| format!("creating stream {name}: {e}"))?;
        }
        tokio::time::timeout(
            Duration::from_secs(5),
            js.get_key_value(&self.config.bucket),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("bucket {}: {e}", self.config.bucket))
    }

    /// Replays what this host has not applied, then follows the bucket live, publishing
    /// queued decisions as they come. Returns when the watch ends.
    async fn follow(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        kv: &kv::Store,
        out_rx: &mut mpsc::Receiver<Outgoing>,
    ) -> Result<(), String> {
        let applied = self.outbox.applied(&self.config.bucket).unwrap_or(0);
        let last = js
            .get_stream(format!("KV_{}", self.config.bucket))
            .await
            .map(|s| s.cached_info().state.last_sequence)
            .map_err(|e| e.to_string())?;
        self.set(|s| {
            s.applied = applied;
            s.stream_last = last;
        });
        let enforces = self.config.role.enforces();
        let mut watch = if applied == 0 {
            kv.watch_with_history(">").await
        } else {
            kv.watch_all_from_revision(applied + 1).await
        }
        .map_err(|e| e.to_string())?;
        let mut caught_up = last <= applied;
        let replay = std::time::Instant::now();
        if caught_up && enforces {
            self.hand_over(Vec::new(), applied, true).await?;
        }
        let mut round: Vec<Decoded> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let Some(entry) = entry else {
                        return Err("the bucket's watch ended".into());
                    };
                    let entry = entry.map_err(|e| e.to_string())?;
                    let mut revision = entry.revision;
                    let mut reached = self.take(entry, &mut round, last);
                    // Whatever else has arrived joins the round.
                    while round.len() < ROUND {
                        match futures_util::FutureExt::now_or_never(watch.next()) {
                            Some(Some(Ok(entry))) => {
                                revision = entry.revision;
                                reached |= self.take(entry, &mut round, last);
                            }
                            Some(Some(Err(e))) => return Err(e.to_string()),
                            Some(None) => return Err("the bucket's watch ended".into()),
                            None => break,
                        }
                    }
                    // During the replay, the round grows until it reaches the stream's end.
                    if !caught_up && !reached && round.len() < ROUND * 64 {
                        continue;
                    }
                    let done = !caught_up && reached;
                    caught_up |= reached;
                    let entries = std::mem::take(&mut round);
                    if done {
                        tracing::debug!(entries = entries.len(), took = ?replay.elapsed(), "fleet: replay read");
                    }
                    if enforces {
                        self.hand_over(entries, revision, done).await?;
                    } else if let Err(e) = self.outbox.set_applied(&self.config.bucket, revision) {
                        tracing::error!(error = %e, "fleet: saving the applied revision");
                    }
                }
                Some(o) = out_rx.recv() => {
                    // A burst of decisions: one outbox transaction, one pipelined flush.
                    let mut all = vec![o];
                    while let Ok(more) = out_rx.try_recv() {
                        all.push(more);
                    }
                    self.queue_all(all);
                    self.flush(js).await;
                }
                _ = tick.tick() => {
                    let connected =
                        client.connection_state() == async_nats::connection::State::Connected;
                    self.set(|s| s.connected = connected);
                    self.flush(js).await;
                }
            }
        }
    }

    /// Reads one entry into the round; returns whether it reaches `last` (the stream's end
    /// when the watch began).
    fn take(&mut self, entry: kv::Entry, round: &mut Vec<Decoded>, last: u64) -> bool {
        let deleted = matches!(
            entry.operation,
            kv::Operation::Delete | kv::Operation::Purge
        );
        let stored_at = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(
                u64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or_default(),
            );
        match wire::decode(&entry.key, &entry.value, deleted, stored_at) {
            Ok(Some(d)) => round.push(d),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fleet: unreadable entry ignored");
                self.set(|s| s.unreadable += 1);
            }
        }
        self.set(|s| {
            s.received += 1;
            s.stream_last = s.stream_last.max(entry.revision);
        });
        entry.revision >= last || entry.delta == 0
    }

    /// Gives a round to the engine, waits until it is applied, then saves the revision.
    async fn hand_over(
        &mut self,
        entries: Vec<Decoded>,
        revision: u64,
        caught_up: bool,
    ) -> Result<(), String> {
        let (bans, lifts) = wire::settle(entries);
        let (done, applied) = oneshot::channel();
        let round = Inbound {
            bans,
            lifts,
            caught_up,
            done,
        };
        self.inbound
            .send(round)
            .await
            .map_err(|_| "the daemon stopped".to_owned())?;
        applied
            .await
            .map_err(|_| "the daemon dropped a round".to_owned())?;
        if let Err(e) = self.outbox.set_applied(&self.config.bucket, revision) {
            tracing::error!(error = %e, "fleet: saving the applied revision");
        }
        self.set(|s| {
            s.applied = s.applied.max(revision);
            s.caught_up |= caught_up;
        });
        Ok(())
    }

    /// Writes decisions to the outbox, in one transaction (they are published from there).
    fn queue_all(&mut self, decisions: Vec<Outgoing>) {
        let messages: Vec<(String, String, Option<Vec<u8>>)> =
            decisions.iter().filter_map(|d| self.message(d)).collect();
        match self.outbox.push_all(&messages) {
            Ok(0) => {}
            Ok(dropped) => tracing::warn!(
                dropped,
                "fleet: the outbox is full; the oldest decisions were dropped"
            ),
            Err(e) => tracing::error!(error = %e, "fleet: queueing decisions"),
        }
        self.set(|s| s.queued = self.outbox.len().unwrap_or(s.queued));
    }

    /// A decision as (key, message id, payload).
    fn message(&self, decision: &Outgoing) -> Option<(String, String, Option<Vec<u8>>)> {
        let name = &self.config.name;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let (key, payload) = match decision {
            Outgoing::Ban {
                jail,
                net,
                time,
                count,
                reason,
            } => {
                let msg = BanMsg {
                    v: wire::VERSION,
                    jail: jail.clone(),
                    net: *net,
                    bantime_s: match time {
                        BanTime::Finite(d) => Some(d.as_secs().max(1)),
                        BanTime::Permanent => None,
                    },
                    count: *count,
                    reason: crate::jail::clip(reason).to_owned(),
                };
                (wire::ban_key(name, jail, net), serde_json::to_vec(&msg))
            }
            Outgoing::Unban { net, jail } => {
                let msg = UnbanMsg {
                    v: wire::VERSION,
                    net: *net,
                    jail: jail.clone(),
                };
                (wire::unban_key(name, net), serde_json::to_vec(&msg))
            }
        };
        match payload {
            Ok(p) => {
                let msg_id = format!("{key}@{stamp}");
                Some((key, msg_id, Some(p)))
            }
            Err(e) => {
                tracing::error!(error = %e, "fleet: encoding a decision");
                None
            }
        }
    }

    /// Publishes what the outbox holds, oldest first; stops at the first failure (kept for
    /// the next try).
    async fn flush(&mut self, js: &jetstream::Context) {
        loop {
            let batch = match self.outbox.pending(FLUSH_BATCH) {
                Ok(b) if b.is_empty() => break,
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "fleet: reading the outbox");
                    return;
                }
            };
            // Sent together, acknowledged in order.
            let mut acks = Vec::with_capacity(batch.len());
            for q in &batch {
                let subject = format!("$KV.{}.{}", self.config.bucket, q.key);
                let mut publish = jetstream::message::PublishMessage::build().message_id(&q.msg_id);
                publish = match &q.payload {
                    Some(p) => publish.payload(p.clone().into()),
                    None => publish.header("KV-Operation", "DEL"),
                };
                acks.push((q.id, js.send_publish(subject, publish).await));
            }
            let mut done = Vec::with_capacity(acks.len());
            let mut failed = None;
            for (id, ack) in acks {
                let result = match ack {
                    Ok(fut) => match tokio::time::timeout(ACK_TIMEOUT, fut).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!(
                            "no acknowledgement within {ACK_TIMEOUT:?}: the server is unreachable or refuses this host's subject ($KV.{}.{}.>: check its permissions)",
                            self.config.bucket, self.config.name
                        )),
                    },
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => done.push(id),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // What the stream acknowledged leaves the outbox (a later retry of the rest is
            // deduplicated by its message id).
            if let Err(e) = self.outbox.done(&done) {
                tracing::error!(error = %e, "fleet: clearing the outbox");
            }
            let published = done.len() as u64;
            self.set(|s| s.published += published);
            if let Some(e) = failed {
                if !self.warned {
                    tracing::warn!(error = %e, "fleet: publishing failed; decisions stay queued and are retried");
                    self.warned = true;
                }
                self.set(|s| {
                    s.last_error = Some(e);
                    s.queued = self.outbox.len().unwrap_or(s.queued);
                });
                return;
            }
            if self.warned {
                tracing::info!("fleet: publishing again; the queue is going out");
                self.warned = false;
            }
            self.set(|s| s.queued = self.outbox.len().unwrap_or(0));
        }
    }
}
