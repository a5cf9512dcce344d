//! The fleet's side of the state: local decisions waiting to be published (bounded, oldest
//! dropped first) and the stream revision applied up to. Its own file (`fleet.db`) and
//! connection, used by the fleet link's thread only, so it never waits on the main store.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::StateError;

const FILE_NAME: &str = "fleet.db";

/// A message waiting to be published: put `payload` at `key` (deduplicated by `msg_id`),
/// or delete `key` when `payload` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: i64,
    pub key: String,
    pub msg_id: String,
    pub payload: Option<Vec<u8>>,
}

pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    bound: usize,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir`, holding at most `bound` messages.
    pub fn open(dir: &Path, bound: usize) -> Result<Outbox, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let sql = |source| StateError::Sql {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS outbox (
                 id INTEGER PRIMARY KEY,
                 key TEXT NOT NULL,
                 msg_id TEXT NOT NULL,
                 payload BLOB          -- NULL: delete the key
             );
             CREATE TABLE IF NOT EXISTS applied (
                 bucket TEXT PRIMARY KEY,
                 revision INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(sql)?;
        Ok(Outbox { conn, path, bound })
    }

    fn sql(&self, source: rusqlite::Error) -> StateError {
        StateError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Queues a message; returns how many of the oldest were dropped to stay in bound.
    pub fn push(
        &mut self,
        key: &str,
        msg_id: &str,
        payload: Option<&[u8]>,
    ) -> Result<usize, StateError> {
        self.push_all(&[(
            key.to_owned(),
            msg_id.to_owned(),
            payload.map(<[u8]>::to_vec),
        )])
    }

    /// Queues messages (key, message id, payload) in one transaction; returns how many of the
    /// oldest were dropped to stay in bound.
    pub fn push_all(
        &mut self,
        messages: &[(String, String, Option<Vec<u8>>)],
    ) -> Result<usize, StateError> {
        let tx = self.conn.transaction().map_err(|e| StateError::Sql {
            path: self.path.clone(),
            source: e,
        })?;
        let result = (|| {
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO outbox (key, msg_id, payload) VALUES (?1, ?2, ?3)",
                )?;
                for (key, msg_id, payload) in messages {
                    insert.execute(params![key, msg_id, payload])?;
                }
            }
            let dropped = tx.execute(
                "DELETE FROM outbox WHERE id <= (SELECT max(id) FROM outbox) - ?1",
                params![i64::try_from(self.bound).unwrap_or(i64::MAX)],
            )?;
            tx.commit()?;
            Ok(dropped)
        })();
        result.map_err(|e| self.sql(e))
    }

    /// The oldest `limit` messages waiting.
    pub fn pending(&self, limit: usize) -> Result<Vec<Queued>, StateError> {
        let read = || -> rusqlite::Result<Vec<Queued>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, key, msg_id, payload FROM outbox ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(Queued {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    msg_id: r.get(2)?,
                    payload: r.get(3)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| self.sql(e))
    }

    /// Forgets messages once the stream has them, in one transaction.
    pub fn done(&mut self, ids: &[i64]) -> Result<(), StateError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in ids {
                    delete.execute(params![id])?;
                }
            }
            tx.commit()
        })();
        result.map_err(|e| self.sql(e))
    }

    pub fn len(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    pub fn is_empty(&self) -> Result<bool, StateError> {
        self.len().map(|n| n == 0)
    }

    /// The stream revision of `bucket` applied up to (0: none).
    pub fn applied(&self, bucket: &str) -> Result<u64, StateError> {
        self.conn
            .query_row(
                "SELECT revision FROM applied WHERE bucket = ?1",
                params![bucket],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|r| r.map_or(0, |r| u64::try_from(r).unwrap_or(0)))
            .map_err(|e| self.sql(e))
    }

    pub fn set_applied(&mut self, bucket: &str, revision: u64) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO applied (bucket, revision) VALUES (?1, ?2)
                 ON CONFLICT (bucket) DO UPDATE SET revision = excluded.revision",
                params![bucket, i64::try_from(revision).unwrap_or(i64::MAX)],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_order_bound_and_revision_across_reopening() {
        let dir = std::env::temp_dir().join(format!("banctl-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut out = Outbox::open(&dir, 3).unwrap();
        for i in 0..5 {
            let dropped = out
                .push(&format!("k{i}"), &format!("m{i}"), Some(b"v"))
                .unwrap();
            assert_eq!(dropped, usize::from(i >= 3));
        }
        out.push("gone", "m5", None).unwrap();
        let keys: Vec<String> = out
            .pending(10)
            .unwrap()
            .into_iter()
            .map(|q| q.key)
            .collect();
        assert_eq!(keys, ["k3", "k4", "gone"]);
        out.set_applied("banctl", 42).unwrap();
        let first = out.pending(1).unwrap().remove(0);
        out.done(&[first.id]).unwrap();
        drop(out);
        let out = Outbox::open(&dir, 3).unwrap();
        assert_eq!(out.len().unwrap(), 2);
        assert_eq!(out.pending(10).unwrap()[1].payload, None);
        assert_eq!(out.applied("banctl").unwrap(), 42);
        assert_eq!(out.applied("other").unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
