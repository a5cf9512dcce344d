//! The state store: active bans, ban history and source positions, in SQLite.
//!
//! **Invariant:** the store is what banctl promised, the kernel is what it enforces. The daemon
//! writes a ban to the kernel first and then here, and on start (or when someone removed our
//! table) puts back every unexpired ban of the store that the kernel lacks, with its remaining
//! time. An unban removes the ban here too, so it is never put back.
//!
//! The file lives in the state dir (`banctl.db`), in WAL mode: a crash loses at most the last
//! transaction, never the file. History rows older than `[daemon] history` are purged, so the
//! file stays bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::addr::IpNet;
use crate::ban::{Ban, Origin, Restore, time_left};
mod outbox;
mod window_log;
pub use outbox::{Outbox, Queued};

pub use crate::ban::StoredBan;
use crate::duration::BanTime;
pub use crate::jail::Window;

/// Writes one failure window's row (see the `windows` table).
const PUT_WINDOW: &str =
    "INSERT OR REPLACE INTO windows (jail, addr, last, times) VALUES (?1, ?2, ?3, ?4)";

/// The schema this build writes; older files are migrated on open.
const SCHEMA_VERSION: i64 = 4;
const FILE_NAME: &str = "banctl.db";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("state dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state store {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "state store {path} has schema version {found}; this banctl knows up to {SCHEMA_VERSION}"
    )]
    Schema { path: PathBuf, found: i64 },
}

/// Whether an SQLite error says the file is damaged or no database at all.
fn damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Records bans (replacing an active ban of the same jail and address), and with `history`
/// adds them to the ban history, inside the caller's transaction.
fn insert_bans(
    tx: &rusqlite::Transaction<'_>,
    bans: &[StoredBan],
    history: bool,
) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT OR REPLACE INTO bans (jail, net, banned_at, bantime, count, reason, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut log = tx.prepare_cached(
        "INSERT INTO history (jail, net, banned_at, bantime) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for b in bans {
        let (net, at, time) = (b.net.to_string(), ms(b.banned_at), time_ms(b.time));
        upsert.execute(params![
            b.jail,
            net,
            at,
            time,
            b.count,
            b.reason,
            b.origin.to_text()
        ])?;
        if history {
            log.execute(params![b.jail, net, at, time])?;
        }
    }
    Ok(())
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Bytes in `window_log` since it was last folded (see `window_log.rs`).
    log_bytes: usize,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A `bantime` column's ban time (NULL: permanent).
fn ban_time(ms: Option<i64>) -> BanTime {
    ms.map_or(BanTime::Permanent, |t| {
        BanTime::Finite(Duration::from_millis(u64::try_from(t).unwrap_or(0)))
    })
}

/// A `net` column's prefix. A row this build cannot read was not written by it: it is
/// skipped (said in the log) rather than failing the whole read.
fn readable_net(jail: &str, net: &str) -> Option<IpNet> {
    let parsed = net.parse::<IpNet>().ok();
    if parsed.is_none() {
        tracing::warn!(jail, net, "state store: unreadable address skipped");
    }
    parsed
}

fn time_ms(time: BanTime) -> Option<i64> {
    match time {
        BanTime::Finite(d) => Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        BanTime::Permanent => None,
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        Store::open_file(&dir.join(FILE_NAME))
    }

    /// An in-memory store, for tests and benches.
    pub fn in_memory() -> Result<Store, StateError> {
        Store::open_file(Path::new(":memory:"))
    }

    /// Opens the store in `dir` like [`Store::open`]; a file that is damaged (not a
    /// database, or whose tables cannot be read) is moved aside as
    /// `banctl.db.damaged-<unix time>` and a new one started, so that the daemon still starts
    /// and protects: the caller puts back what the kernel holds. Returns where the damaged
    /// file went, if one was.
    pub fn open_or_recover(dir: &Path) -> Result<(Store, Option<PathBuf>), StateError> {
        let path = dir.join(FILE_NAME);
        match Store::open(dir) {
            Ok(store) if store.intact() => return Ok((store, None)),
            Ok(_) => {}
            Err(StateError::Sql { source, .. }) if damaged(&source) => {}
            Err(e) => return Err(e),
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = dir.join(format!("{FILE_NAME}.damaged-{stamp}"));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", path.display()));
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            match std::fs::rename(&from, &to) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StateError::Dir {
                        path: from,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok((Store::open(dir)?, Some(aside)))
    }

    /// Whether the tables a start reads can be read (a full `PRAGMA quick_check` would read
    /// every page of a large history at every start; damage found later is logged where it
    /// is met).
    fn intact(&self) -> bool {
        ["bans", "positions", "windows", "window_log"]
            .iter()
            .all(|table| {
                self.conn
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .is_ok()
            })
    }

    fn open_file(path: &Path) -> Result<Store, StateError> {
        let sql = |source| StateError::Sql {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            log_bytes: 0,
        };
        store.migrate()?;
        let logged: i64 = store
            .conn
            .query_row(
                "SELECT coalesce(sum(length(entries)), 0) FROM window_log",
                [],
                |r| r.get(0),
            )
            .map_err(|e| store.sql(e))?;
        store.log_bytes = usize::try_from(logged).unwrap_or(usize::MAX);
        Ok(store)
    }

    fn sql(&self, source: rusqlite::Error) -> StateError {
        StateError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::Schema {
                path: self.path.clone(),
                found,
            });
        }
        if found == 1 {
            // Version 2 records who decided a ban; older rows say it in their reason.
            self.conn
                .execute_batch(
                    "ALTER TABLE bans ADD COLUMN origin TEXT NOT NULL DEFAULT 'failures';
                     UPDATE bans SET origin = 'manual' WHERE reason = 'manual ban';
                     UPDATE bans SET origin = 'kernel' WHERE reason = 'found in the kernel';
                     UPDATE bans SET origin = 'recidive' WHERE reason LIKE '% bans within %';",
                )
                .map_err(|e| self.sql(e))?;
        }
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 2000;
                 CREATE TABLE IF NOT EXISTS bans (
                     jail TEXT NOT NULL,
                     net TEXT NOT NULL,
                     banned_at INTEGER NOT NULL,  -- ms since the epoch
                     bantime INTEGER,             -- ms; NULL: permanent
                     count INTEGER NOT NULL,
                     reason TEXT NOT NULL,
                     origin TEXT NOT NULL DEFAULT 'failures',  -- ban::Origin::to_text
                     PRIMARY KEY (jail, net)
                 ) WITHOUT ROWID;
                 -- When each finite ban ends: the expiry check every few seconds and the
                 -- purge read a range of it instead of every ban (with a million bans, a
                 -- scan took 140 ms each time). Queries must spell the expression as here.
                 CREATE INDEX IF NOT EXISTS bans_by_end ON bans (banned_at + bantime)
                     WHERE bantime IS NOT NULL;
                 CREATE TABLE IF NOT EXISTS history (
                     id INTEGER PRIMARY KEY,
                     jail TEXT NOT NULL,
                     net TEXT NOT NULL,
                     banned_at INTEGER NOT NULL,
                     bantime INTEGER
                 );
                 CREATE INDEX IF NOT EXISTS history_by_net ON history (net, banned_at);
                 CREATE TABLE IF NOT EXISTS positions (
                     source TEXT PRIMARY KEY,
                     position TEXT NOT NULL
                 ) WITHOUT ROWID;
                 -- Failure windows (below maxretry), saved with the positions of the lines
                 -- they came from, so that a restart neither loses nor doubles them. One row
                 -- per address: a changed window is one write.
                 CREATE TABLE IF NOT EXISTS windows (
                     jail TEXT NOT NULL,
                     addr TEXT NOT NULL,
                     last INTEGER NOT NULL,       -- s since the epoch: the newest failure
                     times BLOB NOT NULL,         -- s since the epoch, u32 LE each, oldest first
                     PRIMARY KEY (jail, addr)
                 ) WITHOUT ROWID;
                 -- The windows each round changed, one blob a round (window_log.rs), folded
                 -- into `windows` when it grows and before each purge.
                 CREATE TABLE IF NOT EXISTS window_log (
                     seq INTEGER PRIMARY KEY,
                     entries BLOB NOT NULL
                 );",
            )
            .map_err(|e| self.sql(e))?;
        if found == 1 || found == 2 {
            self.windows_from_failure_rows()?;
        }
        self.conn
            .execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(|e| self.sql(e))
    }

    /// Schema 2 kept a row per failure (`failures`): each address's become one window row.
    fn windows_from_failure_rows(&mut self) -> Result<(), StateError> {
        let migrate = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            let exists: bool = tx.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'failures'",
                [],
                |r| r.get(0),
            )?;
            if exists {
                let rows: Vec<(String, String, u32)> = tx
                    .prepare("SELECT jail, addr, at FROM failures ORDER BY jail, addr, at")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut put = tx.prepare(PUT_WINDOW)?;
                for same in rows.chunk_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1)) {
                    let times: Vec<u32> = same.iter().map(|r| r.2).collect();
                    if let Some((last, blob)) = encode_times(&times) {
                        put.execute(params![same[0].0, same[0].1, last, blob])?;
                    }
                }
                drop(put);
                tx.execute_batch("DROP TABLE failures;")?;
            }
            tx.commit()
        };
        migrate(&mut self.conn).map_err(|e| self.sql(e))
    }

    /// Records new bans (replacing an active ban of the same jail and address) and adds them to
    /// the history, in one transaction.
    pub fn record_bans(&mut self, bans: &[StoredBan]) -> Result<(), StateError> {
        self.write(bans, true)
    }

    /// Records bans found in the kernel but not here (from a crash between the kernel write
    /// and the store write, or added by hand), without counting them in the history.
    pub fn adopt(&mut self, bans: &[StoredBan]) -> Result<(), StateError> {
        self.write(bans, false)
    }

    fn write(&mut self, bans: &[StoredBan], history: bool) -> Result<(), StateError> {
        if bans.is_empty() {
            return Ok(());
        }
        let save = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            insert_bans(&tx, bans, history)?;
            tx.commit()
        };
        save(&mut self.conn).map_err(|e| self.sql(e))
    }

    /// Forgets active bans (an unban). The history keeps them, for escalation.
    pub fn remove(&mut self, items: &[(String, IpNet)]) -> Result<(), StateError> {
        let tx = self.conn.transaction().map_err(|e| StateError::Sql {
            path: self.path.clone(),
            source: e,
        })?;
        let result = (|| {
            let mut delete = tx.prepare_cached("DELETE FROM bans WHERE jail = ?1 AND net = ?2")?;
            for (jail, net) in items {
                delete.execute(params![jail, net.to_string()])?;
            }
            Ok(())
        })();
        result.and_then(|()| tx.commit()).map_err(|e| self.sql(e))
    }

    /// Every ban still in force at `now`, by jail and address.
    pub fn active(&self, now: SystemTime) -> Result<Vec<StoredBan>, StateError> {
        self.bans(
            "SELECT jail, net, banned_at, bantime, count, reason, origin FROM bans
             WHERE bantime IS NULL OR banned_at + bantime > ?1 ORDER BY jail, net",
            &[&ms(now)],
        )
    }

    /// Every ban in force at `now`, as it is put back: what [`Store::active`] gives, through
    /// [`StoredBan::to_restore`], reading only the four columns that takes.
    pub fn restorable(&self, now: SystemTime) -> Result<Vec<Restore>, StateError> {
        let read = || -> rusqlite::Result<Vec<Restore>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT jail, net, banned_at, bantime FROM bans
                 WHERE bantime IS NULL OR banned_at + bantime > ?1 ORDER BY jail, net",
            )?;
            let mut rows = stmt.query([ms(now)])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let jail = row.get_ref(0)?.as_str()?;
                let Some(net) = readable_net(jail, row.get_ref(1)?.as_str()?) else {
                    continue;
                };
                let time = ban_time(row.get(3)?);
                let Some(expires_in) = time_left(from_ms(row.get(2)?), time, now) else {
                    continue;
                };
                out.push(Restore {
                    ban: Ban {
                        jail: jail.to_owned(),
                        net,
                        time,
                    },
                    expires_in,
                });
            }
            Ok(out)
        };
        read().map_err(|e| self.sql(e))
    }

    /// The bans that ran out after `since`, up to `until` (and are not purged yet), oldest
    /// first.
    pub fn expired(
        &self,
        since: SystemTime,
        until: SystemTime,
    ) -> Result<Vec<StoredBan>, StateError> {
        self.bans(EXPIRED, &[&ms(since), &ms(until)])
    }

    /// How many bans each jail has in force at `now`: its rows less those that ended and
    /// wait for the purge (a range of `bans_by_end`). Each status and metrics scrape asks;
    /// counting rows by key reads no ban's times (1M bans: 310 → 75 ms).
    pub fn active_by_jail(&self, now: SystemTime) -> Result<HashMap<String, u64>, StateError> {
        let read = || -> rusqlite::Result<HashMap<String, u64>> {
            let mut counts = HashMap::new();
            let mut rows_of = self
                .conn
                .prepare_cached("SELECT count(*) FROM bans WHERE jail = ?1")?;
            for jail in self
                .conn
                .prepare_cached(JAILS)?
                .query_map([], |r| r.get(0))?
            {
                let jail: String = jail?;
                let rows: u64 = rows_of.query_row([&jail], |r| r.get(0))?;
                counts.insert(jail, rows);
            }
            let mut ended = self.conn.prepare_cached(ENDED_JAILS)?;
            let mut ended = ended.query([ms(now)])?;
            while let Some(row) = ended.next()? {
                if let Some(n) = counts.get_mut(row.get_ref(0)?.as_str()?) {
                    *n = n.saturating_sub(1);
                }
            }
            counts.retain(|_, n| *n > 0);
            Ok(counts)
        };
        read().map_err(|e| self.sql(e))
    }

    /// The bans a query of `jail, net, banned_at, bantime, count, reason, origin` rows
    /// selects.
    fn bans(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<StoredBan>, StateError> {
        let read = || -> rusqlite::Result<Vec<StoredBan>> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (jail, net, at, time, count, reason, origin) = row?;
                let Some(net) = readable_net(&jail, &net) else {
                    continue;
                };
                out.push(StoredBan {
                    jail,
                    net,
                    banned_at: from_ms(at),
                    time: ban_time(time),
                    count,
                    reason,
                    origin: Origin::from_text(&origin),
                });
            }
            Ok(out)
        };
        read().map_err(|e| self.sql(e))
    }

    /// How many bans are in force at `now`: all rows less those that ended (as
    /// [`Store::active_by_jail`]; SQLite counts a table's rows without reading them, 1M bans:
    /// 140 → 20 ms, at each watchdog ping).
    pub fn active_count(&self, now: SystemTime) -> Result<u64, StateError> {
        let read = || -> rusqlite::Result<u64> {
            let rows: u64 = self
                .conn
                .query_row("SELECT count(*) FROM bans", [], |r| r.get(0))?;
            let ended: u64 = self
                .conn
                .prepare_cached(ENDED_COUNT)?
                .query_row([ms(now)], |r| r.get(0))?;
            // A subset of the rows, read in the same breath: never more, but no panic if so.
            Ok(rows.saturating_sub(ended))
        };
        read().map_err(|e| self.sql(e))
    }

    /// The ban number of `net`'s ban in `jail` if one is in force at `now` (an expired row
    /// waiting for the hourly purge does not count).
    pub fn ban_count(
        &self,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Result<Option<u32>, StateError> {
        self.conn
            .query_row(
                "SELECT count FROM bans WHERE jail = ?1 AND net = ?2
                 AND (bantime IS NULL OR banned_at + bantime > ?3)",
                params![jail, net.to_string(), ms(now)],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// `net`'s ban in `jail` if one is in force at `now`.
    pub fn in_force(
        &self,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Result<Option<StoredBan>, StateError> {
        let found = self.bans(
            "SELECT jail, net, banned_at, bantime, count, reason, origin FROM bans
             WHERE jail = ?1 AND net = ?2 AND (bantime IS NULL OR banned_at + bantime > ?3)",
            &[&jail, &net.to_string(), &ms(now)],
        )?;
        Ok(found.into_iter().next())
    }

    /// How many times `net` was banned since `since`: in `jails` (all jails when empty).
    pub fn previous_bans(
        &self,
        net: &IpNet,
        jails: &[&str],
        since: SystemTime,
    ) -> Result<u32, StateError> {
        let count = || -> rusqlite::Result<u32> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT jail FROM history WHERE net = ?1 AND banned_at >= ?2")?;
            let rows = stmt.query_map(params![net.to_string(), ms(since)], |r| {
                r.get::<_, String>(0)
            })?;
            let mut n = 0;
            for jail in rows {
                let jail = jail?;
                if jails.is_empty() || jails.contains(&jail.as_str()) {
                    n += 1;
                }
            }
            Ok(n)
        };
        count().map_err(|e| self.sql(e))
    }

    /// Drops expired active bans, bans of jails that no longer exist (`keep_jails`), and history
    /// older than `history`. Returns how many rows went.
    pub fn purge(
        &mut self,
        now: SystemTime,
        history: Duration,
        keep_jails: &[&str],
    ) -> Result<usize, StateError> {
        let purge = || -> rusqlite::Result<usize> {
            let mut n = self.conn.execute(PURGE_ENDED, [ms(now)])?;
            let oldest = now.checked_sub(history).unwrap_or(UNIX_EPOCH);
            n += self
                .conn
                .execute("DELETE FROM history WHERE banned_at < ?1", [ms(oldest)])?;
            let mut jails = self.conn.prepare_cached(JAILS)?;
            let gone: Vec<String> = jails
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter(|j| !keep_jails.contains(&j.as_str()))
                .collect();
            // A disabled jail's bans wait for it to come back, as long as the history.
            for jail in gone {
                n += self.conn.execute(
                    "DELETE FROM bans WHERE jail = ?1 AND banned_at < ?2",
                    params![jail, ms(oldest)],
                )?;
            }
            Ok(n)
        };
        purge().map_err(|e| self.sql(e))
    }

    /// The saved position of a log source.
    pub fn position(&self, source: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT position FROM positions WHERE source = ?1",
                [source],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every saved position whose source key starts with `prefix`.
    pub fn positions(&self, prefix: &str) -> Result<Vec<(String, String)>, StateError> {
        let query = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut stmt = self.conn.prepare(
                "SELECT source, position FROM positions WHERE substr(source, 1, ?2) = ?1",
            )?;
            let rows = stmt.query_map(
                params![prefix, i64::try_from(prefix.len()).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            rows.collect()
        };
        query().map_err(|e| self.sql(e))
    }

    pub fn save_position(&mut self, source: &str, position: &str) -> Result<(), StateError> {
        self.save_round(&[], &[(source, position)], &[])
    }

    /// Saves one round, in one transaction: new bans (recorded and added to the history, as
    /// [`Store::record_bans`]), where sources resume, and the failure windows that the lines
    /// before those positions changed (an empty window deletes the address's failures). So
    /// a crash at any point leaves either the whole round or none of it: lines are neither
    /// counted twice nor lost, and a ban is never recorded twice.
    pub fn save_round(
        &mut self,
        bans: &[StoredBan],
        positions: &[(&str, &str)],
        windows: &[Window<'_>],
    ) -> Result<(), StateError> {
        let log_bytes = self.log_bytes;
        let save = |conn: &mut Connection| -> rusqlite::Result<usize> {
            let tx = conn.transaction()?;
            insert_bans(&tx, bans, true)?;
            {
                let mut position = tx.prepare_cached(
                    "INSERT OR REPLACE INTO positions (source, position) VALUES (?1, ?2)",
                )?;
                for (source, at) in positions {
                    position.execute([source, at])?;
                }
            }
            let mut logged = log_bytes;
            if !windows.is_empty() {
                let entries = window_log::encode_round(windows);
                tx.prepare_cached("INSERT INTO window_log (entries) VALUES (?1)")?
                    .execute([&entries])?;
                logged += entries.len();
            }
            if logged > window_log::FOLD_BYTES {
                window_log::fold(&tx)?;
                logged = 0;
            }
            tx.commit()?;
            Ok(logged)
        };
        self.log_bytes = save(&mut self.conn).map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The saved failure windows: (jail, address, failure times in Unix seconds, oldest first),
    /// by jail and address text.
    pub fn failures(&self) -> Result<Vec<(String, IpAddr, Vec<u32>)>, StateError> {
        window_log::saved(&self.conn).map_err(|e| self.sql(e))
    }

    /// Drops the windows whose newest failure is at or before their jail's window start, and
    /// those of jails not listed, once the log of rounds is folded into them.
    pub fn purge_failures(&mut self, windows: &[(&str, u32)]) -> Result<usize, StateError> {
        let purge = |conn: &mut Connection| -> rusqlite::Result<usize> {
            let tx = conn.transaction()?;
            window_log::fold(&tx)?;
            let mut n = 0;
            let jails: Vec<String> = tx
                .prepare("SELECT DISTINCT jail FROM windows")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for jail in jails {
                n += match windows.iter().find(|(j, _)| *j == jail) {
                    // A window whose newest failure is out is gone; older times inside
                    // one that is not are dropped when it is restored.
                    Some((_, start)) => tx.execute(
                        "DELETE FROM windows WHERE jail = ?1 AND last <= ?2",
                        params![jail, start],
                    )?,
                    None => tx.execute("DELETE FROM windows WHERE jail = ?1", [jail])?,
                };
            }
            tx.commit()?;
            Ok(n)
        };
        let purged = purge(&mut self.conn).map_err(|e| self.sql(e))?;
        self.log_bytes = 0;
        Ok(purged)
    }
}

/// Where log sources find their saved positions; a store that cannot be read gives none
/// (the sources then start as on a first start), and says so.
impl crate::source::Positions for Store {
    fn position(&self, key: &str) -> Option<String> {
        Store::position(self, key).unwrap_or_else(|e| {
            tracing::error!(error = %e, source = key, "reading a saved position");
            None
        })
    }

    fn positions(&self, prefix: &str) -> Vec<(String, String)> {
        Store::positions(self, prefix).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the saved positions: sources start as new");
            Vec::new()
        })
    }
}

/// The state store is the engine's ledger.
impl crate::engine::Ledger for Store {
    type Error = StateError;

    fn save_round(
        &mut self,
        bans: &[StoredBan],
        positions: &[(&str, &str)],
        windows: &[Window<'_>],
    ) -> Result<(), StateError> {
        Store::save_round(self, bans, positions, windows)
    }

    fn adopt(&mut self, bans: &[StoredBan]) -> Result<(), StateError> {
        Store::adopt(self, bans)
    }

    fn remove(&mut self, items: &[(String, IpNet)]) -> Result<(), StateError> {
        Store::remove(self, items)
    }

    fn active(&self, now: SystemTime) -> Result<Vec<StoredBan>, StateError> {
        Store::active(self, now)
    }

    fn restorable(&self, now: SystemTime) -> Result<Vec<Restore>, StateError> {
        Store::restorable(self, now)
    }

    fn expired(&self, since: SystemTime, until: SystemTime) -> Result<Vec<StoredBan>, StateError> {
        Store::expired(self, since, until)
    }

    fn active_by_jail(&self, now: SystemTime) -> Result<HashMap<String, u64>, StateError> {
        Store::active_by_jail(self, now)
    }

    fn active_count(&self, now: SystemTime) -> Result<u64, StateError> {
        Store::active_count(self, now)
    }

    fn ban_count(
        &self,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Result<Option<u32>, StateError> {
        Store::ban_count(self, jail, net, now)
    }

    fn in_force(
        &self,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Result<Option<StoredBan>, StateError> {
        Store::in_force(self, jail, net, now)
    }

    fn previous_bans(
        &self,
        net: &IpNet,
        jails: &[&str],
        since: SystemTime,
    ) -> Result<u32, StateError> {
        Store::previous_bans(self, net, jails, since)
    }

    fn purge(
        &mut self,
        now: SystemTime,
        history: Duration,
        jails: &[&str],
    ) -> Result<usize, StateError> {
        Store::purge(self, now, history, jails)
    }

    fn failures(&self) -> Result<crate::engine::SavedFailures, StateError> {
        Store::failures(self)
    }

    fn purge_failures(&mut self, windows: &[(&str, u32)]) -> Result<usize, StateError> {
        Store::purge_failures(self, windows)
    }
}

/// The bans that ended in a span of time: read through `bans_by_end`.
const EXPIRED: &str = "SELECT jail, net, banned_at, bantime, count, reason, origin FROM bans
     WHERE bantime IS NOT NULL AND banned_at + bantime > ?1 AND banned_at + bantime <= ?2
     ORDER BY banned_at + bantime";

/// The jail of each ban that ended and waits for the purge: a range of `bans_by_end`.
const ENDED_JAILS: &str =
    "SELECT jail FROM bans WHERE bantime IS NOT NULL AND banned_at + bantime <= ?1";

/// How many bans ended and wait for the purge: a range of `bans_by_end`.
const ENDED_COUNT: &str =
    "SELECT count(*) FROM bans WHERE bantime IS NOT NULL AND banned_at + bantime <= ?1";

/// The jails that have bans, one step down the primary key each (not a scan of the bans).
const JAILS: &str = "WITH RECURSIVE jails(name) AS (
         SELECT min(jail) FROM bans
         UNION ALL
         SELECT (SELECT min(jail) FROM bans WHERE jail > name) FROM jails WHERE name IS NOT NULL
     ) SELECT name FROM jails WHERE name IS NOT NULL";

/// Forgets the bans that ended: a range of `bans_by_end`.
const PURGE_ENDED: &str =
    "DELETE FROM bans WHERE bantime IS NOT NULL AND banned_at + bantime <= ?1";

/// A window's failure times as stored: oldest first (lines caught up may come out of date
/// order), 4 bytes each, little-endian; with the newest, which the purge goes by. `None` for
/// an empty window.
fn encode_times(times: &[u32]) -> Option<(u32, Vec<u8>)> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let last = *sorted.last()?;
    Some((last, sorted.iter().flat_map(|t| t.to_le_bytes()).collect()))
}

/// The times [`encode_times`] wrote; `None` for a blob it cannot have written.
fn decode_times(blob: &[u8]) -> Option<Vec<u32>> {
    let (chunks, rest) = blob.as_chunks::<4>();
    (rest.is_empty() && !chunks.is_empty())
        .then(|| chunks.iter().map(|c| u32::from_le_bytes(*c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(jail: &str, net: &str, at: u64, secs: Option<u64>) -> StoredBan {
        StoredBan {
            jail: jail.into(),
            net: net.parse().unwrap(),
            banned_at: UNIX_EPOCH + Duration::from_secs(at),
            time: secs.map_or(BanTime::Permanent, |s| {
                BanTime::Finite(Duration::from_secs(s))
            }),
            count: 1,
            reason: "test".into(),
            origin: Origin::Failures,
        }
    }

    /// A new empty directory for one test's store.
    fn empty_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("banctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A version-1 file (no `origin` column) is migrated: who decided each ban is read from
    /// its reason.
    #[test]
    fn version_1_stores_gain_the_origin_of_their_bans() {
        let dir = empty_dir("v1");
        let conn = Connection::open(dir.join(FILE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TABLE bans (jail TEXT NOT NULL, net TEXT NOT NULL, banned_at INTEGER NOT NULL,
                 bantime INTEGER, count INTEGER NOT NULL, reason TEXT NOT NULL,
                 PRIMARY KEY (jail, net)) WITHOUT ROWID;
             INSERT INTO bans VALUES ('a', '192.0.2.1', 0, NULL, 1, 'manual ban');
             INSERT INTO bans VALUES ('a', '192.0.2.2', 0, NULL, 1, 'found in the kernel');
             INSERT INTO bans VALUES ('r', '192.0.2.3', 0, NULL, 1, '3 bans within 1d');
             INSERT INTO bans VALUES ('a', '192.0.2.4', 0, NULL, 1, 'sshd[1]: Failed password');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&dir).unwrap();
        let origins: Vec<String> = store
            .active(SystemTime::now())
            .unwrap()
            .iter()
            .map(|b| b.origin.to_text())
            .collect();
        assert_eq!(origins, ["manual", "kernel", "failures", "recidive"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What a restart reads is what the bans in force give, put back: at every moment around
    /// their ends (to the millisecond), for permanent and finite bans, IPv4 and IPv6, and an
    /// unreadable row skipped by both.
    #[test]
    fn restorable_bans_are_the_active_ones_put_back() {
        let dir = empty_dir("restorable");
        let mut store = Store::open(&dir).unwrap();
        store
            .record_bans(&[
                ban("web", "192.0.2.1", 100, Some(60)),
                ban("web", "192.0.2.10", 100, None),
                ban("web", "2001:db8::/64", 130, Some(60)),
                ban("ssh", "192.0.2.2", 100, Some(30)),
                ban("ssh", "192.0.2.3", 0, Some(1)),
            ])
            .unwrap();
        store
            .conn
            .execute(
                "INSERT INTO bans VALUES ('web', 'not an address', 0, NULL, 1, 'x', 'failures')",
                [],
            )
            .unwrap();
        for ms in [
            0, 100_000, 129_999, 130_000, 130_001, 159_999, 160_000, 190_000, 200_000,
        ] {
            let now = UNIX_EPOCH + Duration::from_millis(ms);
            let active: Vec<Restore> = store
                .active(now)
                .unwrap()
                .iter()
                .filter_map(|b| b.to_restore(now))
                .collect();
            assert_eq!(store.restorable(now).unwrap(), active, "at {ms} ms");
        }
        assert_eq!(store.restorable(at(140)).unwrap().len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Windows are saved whole, replaced whole, emptied away and purged by their newest
    /// failure; their times come back oldest first.
    #[test]
    fn failure_windows_round_trip_and_purge() {
        let dir = empty_dir("windows");
        let mut store = Store::open(&dir).unwrap();
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let c: IpAddr = "198.51.100.1".parse().unwrap();
        let window = |jail, addr, times| Window { jail, addr, times };
        store
            .save_round(
                &[],
                &[("f", "1")],
                &[
                    window("ssh", a, &[10, 20, 30]),
                    window("ssh", b, &[5]),
                    // Caught-up lines may come out of date order: 9 is the newest.
                    window("ssh", c, &[9, 3]),
                    window("web", a, &[40]),
                ],
            )
            .unwrap();
        store
            .save_round(
                &[],
                &[("f", "2")],
                &[window("ssh", a, &[20, 30, 31]), window("web", a, &[])],
            )
            .unwrap();
        assert_eq!(
            store.failures().unwrap(),
            [
                ("ssh".to_owned(), a, vec![20, 30, 31]),
                ("ssh".to_owned(), c, vec![3, 9]),
                ("ssh".to_owned(), b, vec![5]),
            ]
        );
        drop(store);
        let mut store = Store::open(&dir).unwrap();
        assert_eq!(store.purge_failures(&[("ssh", 5)]).unwrap(), 1);
        assert_eq!(
            store.failures().unwrap(),
            [
                ("ssh".to_owned(), a, vec![20, 30, 31]),
                ("ssh".to_owned(), c, vec![3, 9]),
            ]
        );
        assert_eq!(store.purge_failures(&[]).unwrap(), 2);
        assert!(store.failures().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Folding the log of rounds into the table changes no saved window, whenever it comes:
    /// after each round, or never before the store is read again.
    #[test]
    fn folding_the_log_changes_no_saved_window() {
        let dir = empty_dir("fold");
        let mut store = Store::open(&dir).unwrap();
        let addr = |i: u32| IpAddr::from((0xc000_0200 + i % 7).to_be_bytes());
        let jails = ["ssh", "web"];
        let mut rounds: Vec<Vec<(&str, IpAddr, Vec<u32>)>> = Vec::new();
        for r in 0..40u32 {
            rounds.push(
                (0..5u32)
                    .map(|i| {
                        let n = (r * 7 + i * 3) % 4; // 0: the window was emptied
                        let times = (0..n).map(|k| r * 10 + k).rev().collect();
                        (jails[((r + i) % 2) as usize], addr(r * 5 + i), times)
                    })
                    .collect(),
            );
        }
        let save = |store: &mut Store, round: &[(&str, IpAddr, Vec<u32>)]| {
            let windows: Vec<Window> = round
                .iter()
                .map(|(jail, addr, times)| Window {
                    jail,
                    addr: *addr,
                    times,
                })
                .collect();
            store.save_round(&[], &[], &windows).unwrap();
        };
        for round in &rounds {
            save(&mut store, round);
        }
        let unfolded = store.failures().unwrap();
        assert!(!unfolded.is_empty());
        // The same rounds into a second store, folding after each one.
        let dir2 = empty_dir("fold2");
        let mut folded = Store::open(&dir2).unwrap();
        for round in &rounds {
            save(&mut folded, round);
            let tx = folded.conn.transaction().unwrap();
            window_log::fold(&tx).unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(folded.failures().unwrap(), unfolded);
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.failures().unwrap(), unfolded);
        let logged: i64 = folded
            .conn
            .query_row("SELECT count(*) FROM window_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(logged, 0);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir2).unwrap();
    }

    /// Schema 2's row per failure becomes a window per address; the old table is gone.
    #[test]
    fn version_2_failure_rows_become_windows() {
        let dir = empty_dir("v2");
        let conn = Connection::open(dir.join(FILE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TABLE failures (jail TEXT NOT NULL, addr TEXT NOT NULL, at INTEGER NOT NULL);
             INSERT INTO failures VALUES ('ssh', '192.0.2.1', 30);
             INSERT INTO failures VALUES ('ssh', '192.0.2.1', 10);
             INSERT INTO failures VALUES ('web', '192.0.2.1', 7);
             INSERT INTO failures VALUES ('ssh', '2001:db8::1', 20);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&dir).unwrap();
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        assert_eq!(
            store.failures().unwrap(),
            [
                ("ssh".to_owned(), a, vec![10, 30]),
                ("ssh".to_owned(), b, vec![20]),
                ("web".to_owned(), a, vec![7]),
            ]
        );
        let (version, old): (i64, i64) = store
            .conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT count(*) FROM sqlite_master WHERE name = 'failures')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((version, old), (SCHEMA_VERSION, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_a_new_store_started() {
        let dir = empty_dir("damaged");
        std::fs::write(dir.join(FILE_NAME), vec![0x5a; 8192]).unwrap();
        let (mut store, aside) = Store::open_or_recover(&dir).unwrap();
        let aside = aside.expect("the damaged file is moved aside");
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 8192]);
        store
            .record_bans(&[ban("ssh", "192.0.2.1", 1000, None)])
            .unwrap();
        assert_eq!(store.active(SystemTime::now()).unwrap().len(), 1);
        drop(store);
        let (store, aside) = Store::open_or_recover(&dir).unwrap();
        assert_eq!(
            (aside, store.active(SystemTime::now()).unwrap().len()),
            (None, 1)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bans_expire_replace_and_survive_reopening() {
        let dir = empty_dir("state");
        let mut store = Store::open(&dir).unwrap();
        store
            .record_bans(&[
                ban("ssh", "192.0.2.1", 1000, Some(60)),
                ban("ssh", "2001:db8::/64", 1000, None),
                ban("web", "192.0.2.1", 1000, Some(10)),
            ])
            .unwrap();
        // Replacing: the same jail and address again, later.
        store
            .record_bans(&[ban("ssh", "192.0.2.1", 1030, Some(60))])
            .unwrap();
        drop(store);
        let mut store = Store::open(&dir).unwrap();
        let active = store.active(at(1020)).unwrap();
        let nets: Vec<String> = active
            .iter()
            .map(|b| format!("{} {}", b.jail, b.net))
            .collect();
        assert_eq!(nets, ["ssh 192.0.2.1", "ssh 2001:db8::/64"]);
        assert_eq!(active[0].banned_at, at(1030));
        assert_eq!(
            active[0].remaining(at(1080)),
            Some(Some(Duration::from_secs(10)))
        );
        assert_eq!(active[1].remaining(at(99_999)), Some(None));
        let web = "192.0.2.1".parse().unwrap();
        assert_eq!(store.ban_count("web", &web, at(1005)).unwrap(), Some(1));
        assert_eq!(
            store.ban_count("web", &web, at(1010)).unwrap(),
            None,
            "expired"
        );
        assert_eq!(
            store
                .previous_bans(&"192.0.2.1".parse().unwrap(), &["ssh"], at(0))
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .previous_bans(&"192.0.2.1".parse().unwrap(), &[], at(1001))
                .unwrap(),
            1
        );
        store
            .remove(&[("ssh".into(), "2001:db8::/64".parse().unwrap())])
            .unwrap();
        // History older than 100 s before t=1100 goes; the removed jail's bans too.
        store
            .purge(at(1100), Duration::from_secs(95), &["web"])
            .unwrap();
        assert!(store.active(at(1020)).unwrap().is_empty());
        assert_eq!(
            store
                .previous_bans(&"192.0.2.1".parse().unwrap(), &[], at(0))
                .unwrap(),
            1,
            "only the ban at t=1030 is within 95 s of t=1100"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn active_counts_agree_with_the_bans_in_force() {
        let dir = empty_dir("active-counts");
        let mut store = Store::open(&dir).unwrap();
        store
            .record_bans(&[
                ban("sshd", "192.0.2.1", 1000, Some(60)),
                ban("sshd", "192.0.2.2", 1000, Some(600)),
                ban("sshd", "192.0.2.0/24", 1010, None),
                ban("nginx", "2001:db8::1", 1000, Some(60)),
                ban("postfix", "198.51.100.7", 1030, Some(30)),
                ban("zz", "203.0.113.9", 900, Some(100)),
            ])
            .unwrap();
        // Before, at and after each end (a ban is in force up to, not at, its end).
        for secs in [999, 1000, 1059, 1060, 1061, 1599, 1600, 5000] {
            let now = at(secs);
            let mut expected: HashMap<String, u64> = HashMap::new();
            for b in store.active(now).unwrap() {
                *expected.entry(b.jail).or_default() += 1;
            }
            assert_eq!(store.active_by_jail(now).unwrap(), expected, "at {secs}");
            let total: u64 = expected.values().sum();
            assert_eq!(store.active_count(now).unwrap(), total, "at {secs}");
        }
        let empty_store = empty_dir("active-counts-empty");
        let empty = Store::open(&empty_store).unwrap();
        assert!(empty.active_by_jail(at(1)).unwrap().is_empty());
        assert_eq!(empty.active_count(at(1)).unwrap(), 0);
        for dir in [dir, empty_store] {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn ended_bans_are_found_through_the_expiry_index_not_a_scan() {
        let dir = empty_dir("expiry-index");
        let store = Store::open(&dir).unwrap();
        let plan = |sql: &str| -> Vec<String> {
            let mut explain = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let times = (1..=explain.parameter_count()).map(|n| n as i64);
            explain
                .query_map(rusqlite::params_from_iter(times), |r| r.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        for sql in [EXPIRED, PURGE_ENDED, ENDED_JAILS, ENDED_COUNT] {
            let plan = plan(sql);
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX bans_by_end")),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN")),
                "{sql}: {plan:?}"
            );
        }
        // The jails with bans: steps down the primary key, not a scan of the bans.
        let jails = plan(JAILS);
        assert!(
            jails.iter().any(|step| step.contains("USING PRIMARY KEY")),
            "{jails:?}"
        );
        assert!(
            !jails.iter().any(|step| step.starts_with("SCAN bans")),
            "{jails:?}"
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn positions_round_trip() {
        let mut store = Store::in_memory().unwrap();
        assert_eq!(store.position("file:/var/log/auth.log").unwrap(), None);
        store.save_position("file:/var/log/auth.log", "a").unwrap();
        store.save_position("file:/var/log/auth.log", "b").unwrap();
        assert_eq!(
            store.position("file:/var/log/auth.log").unwrap().as_deref(),
            Some("b")
        );
    }
}
