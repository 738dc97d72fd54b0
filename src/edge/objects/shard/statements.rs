//! Statements kept beside their mappings (ARCHITECTURE.md, "Signed mapping
//! statements"). A query without a nonce is answered the statement this
//! shard signed before, while its basis (signing key, issuer, lifetime and
//! every claim of the mapping: `core::statement::basis`) is the current one
//! and it is in the first half of its lifetime (`statement::reusable`);
//! otherwise the statement is signed here, once, and kept for the next
//! query. A query with a nonce gets a statement of its own, signed by the
//! worker. So a mapping is signed when it is first asked for after it was
//! written, when its preference or anything else it states changes, when
//! the key rotates and twice per lifetime, not once per answer.

use super::MappingShard;
use crate::core::mapping::{Mapping, SiiRecord};
use crate::core::sii::Sii;
use crate::core::statement::reusable;
use crate::edge::config::GpConfig;
use crate::edge::http::error::{ApiResult, OrInternal};
use crate::edge::objects::dec;
use crate::edge::statements;
use serde::Deserialize;

/// A record row with one of its kept statements (`LEFT JOIN`: the
/// statement's columns are null when none is kept).
#[derive(Deserialize)]
struct RecordKeptRow {
    record: String,
    ap: Option<String>,
    basis: Option<String>,
    iat: Option<i64>,
    jws: Option<String>,
}

/// One kept statement.
pub(super) struct Kept {
    ap: String,
    basis: String,
    iat: i64,
    jws: String,
}

impl MappingShard {
    /// The SII's record and the statements kept of its mappings, in one
    /// query (a lookup's only read).
    pub(super) fn load_record_and_kept(&self, sii: &Sii) -> ApiResult<(SiiRecord, Vec<Kept>)> {
        let rows: Vec<RecordKeptRow> = self
            .sql()
            .exec(
                "SELECT r.record, s.ap, s.basis, s.iat, s.jws FROM records r \
                 LEFT JOIN statements s ON s.sii = r.sii WHERE r.sii = ?",
                Some(vec![sii.as_str().into()]),
            )
            .internal("select record and statements")?
            .to_array()
            .internal("read record and statements")?;
        let Some(first) = rows.first() else {
            return Ok((SiiRecord::new(sii.clone()), Vec::new()));
        };
        let record = dec(&first.record)?;
        let kept = rows
            .into_iter()
            .filter_map(|r| {
                Some(Kept {
                    ap: r.ap?,
                    basis: r.basis?,
                    iat: r.iat?,
                    jws: r.jws?,
                })
            })
            .collect();
        Ok((record, kept))
    }

    /// The statement of each of `mappings` (this SII's, as answered): the
    /// kept one if it still holds, else a new one, kept. `None` for each
    /// when this GP has no statement key.
    pub(super) fn statements_of(
        &self,
        sii: &Sii,
        mappings: &[Mapping],
        kept: &[Kept],
    ) -> ApiResult<Vec<Option<String>>> {
        let Some(keys) = statements::keys(&self.env)? else {
            return Ok(vec![None; mappings.len()]);
        };
        let cfg = GpConfig::cached(&self.env)?;
        let now_s = crate::edge::clock::now_ms() / 1000;
        let mut out = Vec::with_capacity(mappings.len());
        for m in mappings {
            let basis = statements::basis(&keys, &cfg, sii, m)?;
            let ap = m.ap().as_str();
            let fresh = kept.iter().find(|k| {
                k.ap == ap
                    && k.basis == basis
                    && reusable(
                        u64::try_from(k.iat).unwrap_or(u64::MAX),
                        cfg.statement_ttl_secs,
                        now_s,
                    )
            });
            if let Some(k) = fresh {
                crate::edge::stats::count(|s| s.statements_kept_answered += 1);
                out.push(Some(k.jws.clone()));
                continue;
            }
            let jws = statements::sign_with(&keys, &cfg, sii, m, None, now_s)?;
            self.sql()
                .exec(
                    "INSERT OR REPLACE INTO statements (sii, ap, basis, iat, jws) VALUES (?, ?, ?, ?, ?)",
                    Some(vec![
                        sii.as_str().into(),
                        ap.into(),
                        basis.into(),
                        (now_s as i64).into(),
                        jws.as_str().into(),
                    ]),
                )
                .internal("keep statement")?;
            out.push(Some(jws));
        }
        Ok(out)
    }
}
