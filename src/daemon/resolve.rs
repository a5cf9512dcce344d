//! Host names in failures, resolved for jails with `usedns = "yes"`.
//!
//! The daemon's loop never waits for DNS: it queues a [`Lookup`] (a bounded queue; a full one
//! drops the name and says so) and goes on. One task resolves the names in turn, each with a
//! timeout, and hands the addresses back to the loop, which counts the failure for each as if
//! the line had named it. Answers are cached for a few minutes, so a flood of lines naming
//! the same host costs one query.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::addr::canonical;

/// Names waiting for the resolver.
const QUEUE: usize = 256;
/// How long one lookup may take.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long an answer is reused, and how many are kept.
const CACHE_FOR: Duration = Duration::from_secs(300);
const CACHE_ENTRIES: usize = 4096;

/// A failure that named a host, to count for its addresses.
pub use crate::engine::NameFailure as Lookup;

/// A lookup and the addresses its name has (none if it did not resolve).
#[derive(Debug)]
pub struct Resolved {
    pub lookup: Lookup,
    pub addrs: Vec<IpAddr>,
}

/// The loop's end of the resolver.
pub struct Resolver {
    ask: mpsc::Sender<Lookup>,
}

impl Resolver {
    /// Starts the resolving task; its answers arrive on the returned receiver.
    pub fn start() -> (Resolver, mpsc::Receiver<Resolved>) {
        let (ask, mut asked) = mpsc::channel::<Lookup>(QUEUE);
        let (answer, answers) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            let mut cache: HashMap<String, (Instant, Vec<IpAddr>)> = HashMap::new();
            while let Some(lookup) = asked.recv().await {
                let addrs = match cache.get(&lookup.name) {
                    Some((when, addrs)) if when.elapsed() < CACHE_FOR => addrs.clone(),
                    _ => {
                        let addrs = resolve(&lookup.name).await;
                        if cache.len() >= CACHE_ENTRIES {
                            cache.retain(|_, (when, _)| when.elapsed() < CACHE_FOR);
                        }
                        if cache.len() < CACHE_ENTRIES {
                            cache.insert(lookup.name.clone(), (Instant::now(), addrs.clone()));
                        }
                        addrs
                    }
                };
                if answer.send(Resolved { lookup, addrs }).await.is_err() {
                    break;
                }
            }
        });
        (Resolver { ask }, answers)
    }

    /// Queues `lookup`; never waits. A full queue drops it (logged).
    pub fn ask(&self, lookup: Lookup) {
        if let Err(e) = self.ask.try_send(lookup) {
            let lookup = match e {
                mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l) => l,
            };
            tracing::warn!(
                jail = lookup.jail,
                name = lookup.name,
                "resolver busy: host name not resolved"
            );
        }
    }
}

/// The addresses `name` has now, or none (failure or timeout, logged).
async fn resolve(name: &str) -> Vec<IpAddr> {
    if !crate::addr::is_host_name(name) {
        tracing::warn!(name, "not a host name: not resolved");
        return Vec::new();
    }
    match tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(found)) => {
            let mut addrs: Vec<IpAddr> = found.map(|a| canonical(a.ip())).collect();
            addrs.sort_unstable();
            addrs.dedup();
            addrs
        }
        Ok(Err(e)) => {
            tracing::warn!(name, error = %e, "host name not resolved");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(
                name,
                "host name not resolved within {} s",
                TIMEOUT.as_secs()
            );
            Vec::new()
        }
    }
}
