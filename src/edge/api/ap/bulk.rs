//! `POST /v1/mappings/bulk` (draft §8.3): an authorised AP uploads mappings it verified itself, as NDJSON, idempotently.
use crate::core::tags::MappingMeta;
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::shard::Shard;

use crate::core::bulk::{
    decide_key, lease_left_ms, parse_line, BulkError, BulkSummary, IdempotencyKey, KeyDecision,
    KeyRecord, LineExisting, LineSplitter, IDEMPOTENCY_RENEW_MS, MAX_LINES_PER_UPLOAD,
    MAX_UPLOAD_BYTES,
};
use crate::core::shard::shard_of;
use crate::core::Sii;
use crate::edge::auth::ap as auth;
use crate::edge::config::GpConfig;
use crate::edge::http::body::media_type;
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::http::request::Request;
use crate::edge::http::respond::json_status as respond;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use worker::{Env, Response};

/// Lines per shard request of a bulk upload.
const BULK_BATCH: usize = 2_000;

/// `POST /v1/mappings/bulk` (draft §8.3).
pub async fn bulk(mut req: Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let ap = auth::authenticate(&req, env, cfg).await?;
    if !ap.record.bulk_allowed {
        return Err(BulkError::NotAllowed.into());
    }
    if media_type(&req).as_deref() != Some("application/x-ndjson") {
        return Err(ApiError::from(BulkError::WrongContentType)
            .with_header("Accept-Post", "application/x-ndjson"));
    }
    let key = IdempotencyKey::parse(
        &req.headers()
            .get("Idempotency-Key")
            .ok()
            .flatten()
            .unwrap_or_default(),
    )?;
    let ap_id = ap.record.id.clone();
    let now = crate::edge::clock::now_ms();
    let idem_key = format!("bulk:{}", key.as_str());
    let ap_object = ApClient::new(env, &ap_id);
    let stored = ap_object.idem_get(&idem_key).await?;
    if let Ok(Some(len)) = req.headers().get("Content-Length") {
        if len
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n > MAX_UPLOAD_BYTES as u64)
        {
            return Err(BulkError::TooLarge.into());
        }
    }

    // The body is read as a stream: lines are cut and parsed as chunks
    // arrive (the raw bytes are never buffered), and hashed for the
    // idempotency check. Nothing is written before the whole upload was
    // read, so size limits and the key decision come before any write.
    let count = cfg.mapping_shards;
    let mut summary = BulkSummary::default();
    type Line = (u32, String, String, Option<MappingMeta>);
    let mut per_shard: std::collections::BTreeMap<u32, Vec<Line>> = Default::default();
    let mut splitter = LineSplitter::new();
    let mut hasher = Sha256::new();
    let mut read = 0usize;
    let mut sink = |n: u32, line: Result<&[u8], crate::core::bulk::LineProblem>| match line
        .and_then(parse_line)
    {
        Ok(Some(l)) => per_shard.entry(shard_of(&l.sii, count)).or_default().push((
            n,
            l.sii.to_string(),
            l.user.to_string(),
            l.meta,
        )),
        Ok(None) => {}
        Err(p) => summary.refused(p.at(n)),
    };
    if let Ok(mut stream) = req.stream() {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| crate::edge::http::body::unreadable("the upload", e))?;
            read += chunk.len();
            if read > MAX_UPLOAD_BYTES {
                return Err(BulkError::TooLarge.into());
            }
            hasher.update(&chunk);
            splitter.push(&chunk, &mut sink);
            if splitter.lines() > MAX_LINES_PER_UPLOAD {
                return Err(BulkError::TooLarge.into());
            }
        }
    }
    splitter.finish(&mut sink);
    summary.lines = splitter.lines();
    if summary.lines > MAX_LINES_PER_UPLOAD {
        return Err(BulkError::TooLarge.into());
    }
    let body_sha256: [u8; 32] = hasher.finalize().into();
    let decision = match decide_key(stored.as_ref(), &body_sha256, now) {
        // When to come back: the running upload's lease, renewed while it
        // lives, lapses within IDEMPOTENCY_LEASE_MS once it died.
        Err(BulkError::KeyInUse) => {
            let left = stored.as_ref().map_or(1, |r| lease_left_ms(r, now));
            return Err(ApiError::from(BulkError::KeyInUse)
                .with_header("Retry-After", left.div_ceil(1000).max(1).to_string()));
        }
        d => d?,
    };
    if let KeyDecision::Replay(summary) = decision {
        let mut resp = respond(&json!(summary), 200)?;
        resp.headers_mut()
            .set("Idempotent-Replayed", "true")
            .internal("header")?;
        return Ok(resp);
    }
    ap_object
        .idem_put(
            &idem_key,
            KeyRecord {
                body_sha256,
                // Not the request's start: the body may have taken a while.
                started_ms: crate::edge::clock::now_ms(),
                summary: None,
            },
        )
        .await?;

    let mut batches = Vec::new();
    for (shard, lines) in per_shard {
        for chunk in lines.chunks(BULK_BATCH) {
            batches.push((shard, chunk.to_vec()));
        }
    }
    let work = async {
        // draft §8.2.1 across GPs, as for a code confirmation: a line whose
        // SII is preferred on a peer GP is stored without preference and
        // names that holder. The peers whose filters match are asked in
        // batches (routing::preferred), before anything is written.
        let siis: Vec<Sii> = batches
            .iter()
            .flat_map(|(_, chunk)| chunk.iter())
            .filter_map(|(_, s, _, _)| Sii::parse(s).ok())
            .collect();
        let remote = crate::edge::routing::preferred::preferred_on_peers(env, cfg, &siis).await;
        let remote = &remote;
        futures_util::future::join_all(batches.into_iter().map(|(shard, chunk)| {
            let ap_id = ap_id.clone();
            async move {
                let lines = chunk
                    .iter()
                    .map(|(_, s, u, _)| (s.clone(), u.clone()))
                    .collect();
                let holders = chunk
                    .iter()
                    .map(|(_, s, _, _)| remote.get(s).cloned())
                    .collect();
                let metas = chunk.iter().map(|(_, _, _, m)| m.clone()).collect();
                let reply = Shard::at(env, cfg, shard)
                    .bulk(&ap_id, lines, holders, metas, now)
                    .await;
                (chunk, reply)
            }
        }))
        .await
    };
    // The key's lease is renewed while the shards write, so it stays held
    // for as long as this upload runs and no longer: a GP killed mid-upload
    // frees it within IDEMPOTENCY_LEASE_MS for the client's retry (it was a
    // fixed 5 minutes of 409s before).
    let (renewing, done) = (std::cell::Cell::new(false), std::cell::Cell::new(false));
    let renew = async {
        loop {
            worker::Delay::from(std::time::Duration::from_millis(IDEMPOTENCY_RENEW_MS)).await;
            renewing.set(true);
            let record = KeyRecord {
                body_sha256,
                started_ms: crate::edge::clock::now_ms(),
                summary: None,
            };
            if let Err(e) = ap_object.idem_put(&idem_key, record).await {
                worker::console_error!("bulk: renewing the idempotency lease: {e:?}");
            }
            renewing.set(false);
            if done.get() {
                break;
            }
        }
    };
    futures_util::pin_mut!(work, renew);
    let results = match futures_util::future::select(work, renew).await {
        futures_util::future::Either::Left((results, renew)) => {
            // A renewal still on its way must land before the summary.
            done.set(true);
            if renewing.get() {
                renew.await;
            }
            results
        }
        futures_util::future::Either::Right(((), work)) => work.await,
    };
    for (chunk, reply) in results {
        for ((n, _, _, _), (effect, met)) in chunk.iter().zip(reply?) {
            if let Some(p) = met {
                summary.met(LineExisting {
                    line: *n,
                    provider: p.ap.to_string(),
                    gp: p.gp,
                });
            }
            match effect {
                Ok(e) => summary.applied(e),
                Err(detail) => summary.refused(crate::core::bulk::LineError {
                    line: *n,
                    problem: "mapping-refused".into(),
                    detail,
                }),
            }
        }
    }
    summary.errors.sort_by_key(|e| e.line);
    summary.existing_lines.sort_by_key(|h| h.line);
    ap_object
        .idem_put(
            &idem_key,
            KeyRecord {
                body_sha256,
                started_ms: now,
                summary: Some(summary.clone()),
            },
        )
        .await?;
    respond(&json!(summary), 200)
}
