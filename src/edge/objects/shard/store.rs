//! The shard's SQLite tables: records, pending verifications, send counters,
//! and the hourly sweep of dead rows.

use super::MappingShard;
use crate::core::mapping::SiiRecord;
use crate::core::sii::Sii;
use crate::core::tags::MappingMeta;
use crate::core::verification::{PendingVerification, WindowCounter, SEND_WINDOW_MS};
use crate::edge::http::error::{ApiResult, OrInternal};
use crate::edge::objects::dec;
use crate::edge::objects::enc;
use crate::edge::objects::Schema;
use serde::{Deserialize, Serialize};
use worker::SqlStorage;

#[derive(Deserialize)]
pub(super) struct RecordRow {
    pub(super) record: String,
}

#[derive(Deserialize)]
pub(super) struct PendingRow {
    pub(super) salt: String,
    pub(super) sii: String,
    pub(super) ap: String,
    pub(super) user: String,
    pub(super) row: String,
}

#[derive(Deserialize)]
pub(super) struct CounterRow {
    pub(super) counter: String,
}

/// A pending row's `row` column: the verification and what the AP
/// attached to the mapping it will create (tags, label). Flattened, so
/// rows written before tags existed read with no tags.
#[derive(Serialize, Deserialize)]
pub(super) struct PendingData {
    #[serde(flatten)]
    pub(super) pv: PendingVerification,
    #[serde(default, skip_serializing_if = "MappingMeta::is_empty")]
    pub(super) meta: MappingMeta,
}

/// A pending row as carried to `Abort` to be put back.
#[derive(Serialize, Deserialize)]
pub(super) struct PrevRow {
    pub(super) salt: String,
    pub(super) sii: String,
    pub(super) ap: String,
    pub(super) user: String,
    pub(super) row: String,
}

pub(super) fn dec_prev(s: &str) -> ApiResult<PendingRow> {
    let p: PrevRow = dec(s)?;
    Ok(PendingRow {
        salt: p.salt,
        sii: p.sii,
        ap: p.ap,
        user: p.user,
        row: p.row,
    })
}

/// The shard's tables. `filter_outbox`: SII digests stored here but not
/// yet in the GP's filter; `claim_outbox`: claims (draft §10) not yet
/// acknowledged by their peer GP; `statements`: per SII and AP, the
/// statement of its mapping kept for queries without a nonce
/// (statements.rs).
pub(super) fn schema() -> Schema {
    Schema::new(
        "shard schema",
        "CREATE TABLE IF NOT EXISTS records (sii TEXT PRIMARY KEY, record TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS pending (salt TEXT PRIMARY KEY, sii TEXT NOT NULL, ap TEXT NOT NULL, user TEXT NOT NULL, row TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS pending_by_pair ON pending (sii, ap);
         CREATE TABLE IF NOT EXISTS sends (sii TEXT PRIMARY KEY, counter TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, to_ap TEXT NOT NULL, item TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS filter_outbox (digest TEXT PRIMARY KEY);
         CREATE TABLE IF NOT EXISTS claim_outbox (id TEXT PRIMARY KEY, to_gp TEXT NOT NULL, claim TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS statements (sii TEXT NOT NULL, ap TEXT NOT NULL, basis TEXT NOT NULL, iat INTEGER NOT NULL, jws TEXT NOT NULL, PRIMARY KEY (sii, ap));",
    )
}

/// How often a shard sweeps dead verification rows and stale counters.
const SWEEP_EVERY_MS: u64 = 3_600_000;
impl MappingShard {
    pub(super) fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    pub(super) fn ensure_schema(&self) -> ApiResult<()> {
        self.schema.ensure(&self.sql())
    }

    pub(super) fn load_record(&self, sii: &Sii) -> ApiResult<SiiRecord> {
        let rows: Vec<RecordRow> = self
            .sql()
            .exec(
                "SELECT record FROM records WHERE sii = ?",
                Some(vec![sii.as_str().into()]),
            )
            .internal("select record")?
            .to_array()
            .internal("read record")?;
        match rows.first() {
            Some(r) => dec(&r.record),
            None => Ok(SiiRecord::new(sii.clone())),
        }
    }

    pub(super) fn store_record(&self, r: &SiiRecord) -> ApiResult<()> {
        if r.mappings().is_empty() {
            // No mapping left (removed, opted out): nothing may answer
            // its kept statements again, so they go at once. A changed
            // mapping's statement is never answered (its basis changed)
            // and is replaced by the next query or swept; so is a removed
            // mapping's beside others.
            self.sql()
                .exec(
                    "DELETE FROM statements WHERE sii = ?",
                    Some(vec![r.sii().as_str().into()]),
                )
                .internal("delete statements")?;
        }
        if r.is_empty() {
            self.sql()
                .exec(
                    "DELETE FROM records WHERE sii = ?",
                    Some(vec![r.sii().as_str().into()]),
                )
                .internal("delete record")?;
        } else {
            self.sql()
                .exec(
                    "INSERT OR REPLACE INTO records (sii, record) VALUES (?, ?)",
                    Some(vec![r.sii().as_str().into(), enc(r)?.into()]),
                )
                .internal("store record")?;
        }
        Ok(())
    }

    pub(super) fn pending_for(&self, sii: &str, ap: &str) -> ApiResult<Option<PendingRow>> {
        let rows: Vec<PendingRow> = self
            .sql()
            .exec(
                "SELECT salt, sii, ap, user, row FROM pending WHERE sii = ? AND ap = ?",
                Some(vec![sii.into(), ap.into()]),
            )
            .internal("select pending")?
            .to_array()
            .internal("read pending")?;
        Ok(rows.into_iter().next())
    }

    pub(super) fn pending_by_salt(&self, salt: &str) -> ApiResult<Option<PendingRow>> {
        let rows: Vec<PendingRow> = self
            .sql()
            .exec(
                "SELECT salt, sii, ap, user, row FROM pending WHERE salt = ?",
                Some(vec![salt.into()]),
            )
            .internal("select pending")?
            .to_array()
            .internal("read pending")?;
        Ok(rows.into_iter().next())
    }

    pub(super) fn put_pending(
        &self,
        salt: &str,
        sii: &str,
        ap: &str,
        user: &str,
        row: &str,
    ) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO pending (salt, sii, ap, user, row) VALUES (?, ?, ?, ?, ?)",
                Some(vec![
                    salt.into(),
                    sii.into(),
                    ap.into(),
                    user.into(),
                    row.into(),
                ]),
            )
            .internal("store pending")?;
        Ok(())
    }

    pub(super) fn delete_pending(&self, salt: &str) -> ApiResult<()> {
        self.sql()
            .exec(
                "DELETE FROM pending WHERE salt = ?",
                Some(vec![salt.into()]),
            )
            .internal("delete pending")?;
        Ok(())
    }

    pub(super) fn counter(&self, sii: &str) -> ApiResult<WindowCounter> {
        let rows: Vec<CounterRow> = self
            .sql()
            .exec(
                "SELECT counter FROM sends WHERE sii = ?",
                Some(vec![sii.into()]),
            )
            .internal("select counter")?
            .to_array()
            .internal("read counter")?;
        match rows.first() {
            Some(r) => dec(&r.counter),
            None => Ok(WindowCounter::default()),
        }
    }

    pub(super) fn store_counter(&self, sii: &str, c: &WindowCounter) -> ApiResult<()> {
        self.sql()
            .exec(
                "INSERT OR REPLACE INTO sends (sii, counter) VALUES (?, ?)",
                Some(vec![sii.into(), enc(c)?.into()]),
            )
            .internal("store counter")?;
        Ok(())
    }

    /// Deletes verifications past their expiry (plus a grace hour, so a late
    /// confirmation still gets "expired" rather than "unknown"), send
    /// counters whose windows are over and kept statements past half their
    /// lifetime (never answered again: `statement::reusable`), among them
    /// those of mappings removed since. At most hourly per object instance;
    /// one indexed-less scan of three small tables.
    pub(super) fn sweep(&self) -> ApiResult<()> {
        let now = crate::edge::clock::now_ms();
        if now.saturating_sub(self.swept_at_ms.get()) < SWEEP_EVERY_MS {
            return Ok(());
        }
        self.swept_at_ms.set(now);
        let cutoff = now.saturating_sub(SWEEP_EVERY_MS) as i64;
        self.sql()
            .exec(
                "DELETE FROM pending WHERE json_extract(row, '$.expires_at_ms') < ?",
                Some(vec![cutoff.into()]),
            )
            .internal("sweep pending")?;
        let stale = now.saturating_sub(2 * SEND_WINDOW_MS) as i64;
        self.sql()
            .exec(
                "DELETE FROM sends WHERE json_extract(counter, '$.window_start_ms') < ?",
                Some(vec![stale.into()]),
            )
            .internal("sweep sends")?;
        let ttl_s = crate::edge::config::GpConfig::cached(&self.env)?.statement_ttl_secs;
        let old = (now / 1000).saturating_sub(ttl_s / 2) as i64;
        self.sql()
            .exec(
                "DELETE FROM statements WHERE iat < ?",
                Some(vec![old.into()]),
            )
            .internal("sweep statements")?;
        Ok(())
    }
}
