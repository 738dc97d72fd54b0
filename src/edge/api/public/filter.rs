//! `GET /v1/filter`: the GP's own routing filter for the public inspector
//! (issue 7, `assets/inspector/`), as much of it as the operator allows.
//!
//! Why not always the full snapshot: with the bits, anyone can test any
//! phone number offline for "may be on this GP", at any rate and without
//! an account — an enumeration aid against draft §8.1's design (queries
//! come from authorized APs, one SII at a time, rate limited: draft §11.2).
//! Peers get the full filter over the signed GP-to-GP API anyway; the
//! public has no need for it. So `PUBLIC_FILTER` chooses:
//!
//! - `off` (the default, and production's): 404 problem `public-filter-off`.
//! - `summary`: JSON with the parameters, version, age, fill, estimates and
//!   a coarse fill map (at most [`SUMMARY_GROUPS`] groups of at least
//!   [`SUMMARY_MIN_GROUP_BITS`] bits): enough to judge the filter's health,
//!   nothing to test an SII against. Groups are coarse so that watching
//!   one group's count does not reveal when a given SII was added.
//! - `full`: the GLF2 snapshot bytes (local and demo GPs), or the summary
//!   when the client accepts JSON but not `application/octet-stream`.
use crate::edge::config::{GpConfig, PublicFilter as Mode};
use crate::edge::rpc::filter::{FilterClient, Manifest};

use crate::core::filter::{Filter, HashScheme, Layout};
use crate::edge::http::error::{ApiError, ApiResult, OrInternal};
use crate::edge::http::request::Request;
use crate::edge::http::respond::json_ok;
use serde_json::{json, Value};
use worker::{Env, Response};

/// Most groups in a summary's fill map.
pub const SUMMARY_GROUPS: u64 = 256;
/// Fewest bits per summary group: 64 blocks, about 3,000 SIIs at 10 bits
/// per SII, so one group's count moves with thousands of people.
pub const SUMMARY_MIN_GROUP_BITS: u64 = 64 * 512;

/// `GET /v1/filter`.
pub async fn get(req: &Request, env: &Env, cfg: &GpConfig) -> ApiResult<Response> {
    let (mode, gp_id) = (cfg.public_filter, cfg.id.as_str());
    if mode == Mode::Off {
        return Err(ApiError::client(
            404,
            "public-filter-off",
            "Public filter view is off",
            "this GP does not publish its routing filter (its operator set \
             PUBLIC_FILTER=off); peers fetch it over the GP-to-GP API",
        ));
    }
    let Some(bytes) = FilterClient::new(env).snapshot_bytes().await? else {
        // Too large for one snapshot: the summary from the manifest, with
        // a fill map by partition.
        if mode == Mode::Full && !wants_json(req) {
            return Err(ApiError::client(
                413,
                "filter-too-large",
                "Filter too large for one snapshot",
                "this GP's filter is larger than one snapshot may be; ask for the JSON \
                 summary (Accept: application/json)",
            ));
        }
        let m = FilterClient::new(env).manifest().await?;
        return json_ok(&manifest_summary(&m, gp_id, mode == Mode::Full)?);
    };
    if mode == Mode::Full && !wants_json(req) {
        let mut resp = Response::from_bytes(bytes).internal("filter response")?;
        let h = resp.headers_mut();
        h.set("Content-Type", "application/octet-stream")
            .internal("set header")?;
        h.set("Cache-Control", "no-store").internal("set header")?;
        h.set(
            "Content-Disposition",
            &format!("inline; filename=\"{}.glf2\"", file_stem(gp_id)),
        )
        .internal("set header")?;
        return Ok(resp);
    }
    // Our own stored snapshot failing to decode is a bug, not the client's.
    let filter = Filter::from_bytes(&bytes)
        .map_err(|e| ApiError::Internal(format!("own filter snapshot: {e}")))?;
    json_ok(&summary(&filter, gp_id, mode == Mode::Full))
}

/// JSON only for a client that accepts JSON but not the bytes.
fn wants_json(req: &Request) -> bool {
    let accept = req
        .headers()
        .get("Accept")
        .ok()
        .flatten()
        .unwrap_or_default();
    accept.contains("application/json") && !accept.contains("application/octet-stream")
}

/// The summary of a filter too large for one snapshot, from its manifest:
/// the fill map has one group per partition.
fn manifest_summary(m: &Manifest, gp_id: &str, full_available: bool) -> ApiResult<Value> {
    let p = m
        .params
        .params()
        .map_err(|e| ApiError::Internal(format!("own filter params: {e}")))?;
    let bits = p.bits as f64;
    let ones = m.bits_set as f64;
    let estimated = if ones >= bits {
        Value::Null
    } else {
        json!(-(bits / f64::from(p.k)) * (1.0 - ones / bits).ln())
    };
    Ok(json!({
        "gp": gp_id,
        "view": "summary",
        "full_snapshot_available": full_available,
        "version": m.version,
        "created_at_ms": m.created_at_ms,
        "bits": p.bits,
        "log2_bits": p.log2_bits,
        "k": p.k,
        "layout": p.layout.name(),
        "hash": p.hash.name(),
        "bits_set": m.bits_set,
        "fill_ratio": ones / bits,
        "estimated_siis": estimated,
        "estimated_fp_rate": p.fp_from_ones(m.bits_set),
        "fill_map": {
            "group_bits": p.bits >> m.partition_bits,
            "ones": m.partitions.iter().map(|x| x.bits_set).collect::<Vec<_>>(),
        },
    }))
}

/// A file name made of the GP id's safe characters.
fn file_stem(gp_id: &str) -> String {
    let s: String = gp_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{s}-filter")
}

/// The public summary: no bits, a coarse fill map.
fn summary(f: &Filter, gp_id: &str, full_available: bool) -> Value {
    let h = f.header();
    let p = &h.params;
    let groups = (f.local_bits() / SUMMARY_MIN_GROUP_BITS).clamp(1, SUMMARY_GROUPS);
    let map = f.fill_map(groups);
    json!({
        "gp": gp_id,
        "view": "summary",
        "full_snapshot_available": full_available,
        "version": h.version,
        "created_at_ms": h.created_at_ms,
        "bits": p.bits,
        "log2_bits": p.log2_bits,
        "k": p.k,
        "layout": match p.layout { Layout::Blocked512 => "blocked512", Layout::Plain => "plain" },
        "hash": match p.hash { HashScheme::Sha256High => "sha256-high", HashScheme::Sha256Low => "sha256-low" },
        "bits_set": f.count_ones(),
        "fill_ratio": f.fill_ratio(),
        "estimated_siis": finite_or_null(f.estimated_items()),
        "estimated_fp_rate": f.estimated_fp_rate(),
        "fill_map": {
            "group_bits": map.group_bits,
            "ones": map.ones,
        },
    })
}

/// JSON has no Infinity (a filter with every bit set estimates ∞ SIIs).
fn finite_or_null(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}
