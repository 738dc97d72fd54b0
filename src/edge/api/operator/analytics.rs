//! The operator's view of one AP: analytics and webhook replay.
use crate::edge::rpc::ap::ApClient;
use crate::edge::rpc::registry::Registry;

use crate::core::webhook::rfc3339_ms;
use crate::edge::http::error::{ApiError, ApiResult};
use crate::edge::http::request::Request;
use crate::edge::http::respond::json_status as respond;
use serde_json::{json, Value};
use worker::{Env, Response};

/// `GET /admin/v1/aps/{id}/analytics` (draft §11.2: "Glados can
/// additionally use analytics to look for odd patterns in registrations,
/// including clearly fake or genreated email addresses, overlaps with
/// existing email addresses and so on").
pub async fn analytics(req: Request, env: &Env, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    let record = match Registry::new(env).get(id).await? {
        Some(ap) => ap.record,
        None => {
            return Err(ApiError::client(
                404,
                "no-such-ap",
                "No such AP",
                format!("no AP with id {id:?} is enrolled here"),
            ))
        }
    };
    let (a, outbox) = ApClient::new(env, id).stats().await?;
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            Value::Null
        } else {
            json!(num as f64 / den as f64)
        }
    };
    respond(
        &json!({
            "ap": record.id,
            "enrolled_users": record.enrolled_users,
            "strikes": record.strikes,
            "suspended": record.suspended,
            "codes_sent": a.codes_sent,
            "verified": a.verified,
            "wrong_codes": a.wrong_codes,
            "failed_verification_ratio": ratio(a.wrong_codes, a.wrong_codes + a.verified),
            "unconfirmed_ratio": ratio(a.codes_sent.saturating_sub(a.verified), a.codes_sent),
            "peak_codes_per_minute": a.peak_codes_per_minute,
            "sequential_numbers": a.sequential,
            "sequential_ratio": ratio(a.sequential, a.codes_sent),
            "mappings_created": a.mappings_created,
            "mappings_removed": a.mappings_removed,
            "overlapping": a.overlapping,
            "overlap_ratio": ratio(a.overlapping, a.mappings_created),
            "webhooks": {
                "queued": outbox.queued,
                "dead_lettered": outbox.dead,
                "delivered": outbox.delivered,
                "oldest_queued_at": outbox.oldest_queued_ms.map(rfc3339_ms),
                "last_error": outbox.last_error,
            },
        }),
        200,
    )
}

/// `POST /admin/v1/aps/{id}/webhooks/replay`: requeues the AP's
/// dead-lettered webhooks (the retry horizon passed, e.g. because its
/// endpoint was down for longer), with a fresh horizon.
pub async fn replay(req: Request, env: &Env, id: &str) -> ApiResult<Response> {
    crate::edge::auth::operator::check_admin(&req, env)?;
    if Registry::new(env).get(id).await?.is_none() {
        return Err(ApiError::client(
            404,
            "no-such-ap",
            "No such AP",
            format!("no AP with id {id:?} is enrolled here"),
        ));
    }
    let events = ApClient::new(env, id).replay().await?;
    respond(&json!({ "ap": id, "requeued": events }), 200)
}
