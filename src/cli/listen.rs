//! `glados webhooks listen`: a local receiver for developing against a GP.
//! Each delivery is checked like an AP's server must check it (Standard
//! Webhooks, [`crate::core::webhook::verify`]: the `whsec_` secret, the
//! signature over id, timestamp and body, the timestamp within the
//! tolerance), answered 204 (or 401 when it does not verify, so the GP
//! retries) and printed; repeats of a `webhook-id` are acknowledged and
//! marked as duplicates (receivers deduplicate by id).

use std::collections::HashSet;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Value};

use super::client::clean;
use super::error::Failure;
use crate::core::webhook::{
    parse_secret, verify, DEFAULT_TOLERANCE_S, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};

/// Largest delivery read.
const MAX_BODY_BYTES: u64 = 1 << 20;

/// `glados webhooks listen` arguments.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8791)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The AP's webhook-signing secret (whsec_…), shown at enrollment.
    #[arg(long, env = "GLADOS_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Accepted clock difference, in seconds.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE_S)]
    pub tolerance: u64,
    /// Exit after this many verified deliveries.
    #[arg(long)]
    pub count: Option<u64>,
}

/// What one delivery was.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Verified,
    Duplicate,
    Refused(String),
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One line describing a verified event (its type and the interesting
/// members of its data).
fn describe(event: &Value) -> String {
    let text = |v: &Value| v.as_str().map(clean).unwrap_or_default();
    let data = &event["data"];
    let party = |p: &Value| {
        let provider = text(&p["provider"]);
        match p["gp"].as_str() {
            Some(gp) => format!("{provider} (gp {})", clean(gp)),
            None => provider,
        }
    };
    let mut parts = vec![text(&event["type"]), format!("sii={}", text(&data["sii"]))];
    if data["user"].is_string() {
        parts.push(format!("user={}", text(&data["user"])));
    }
    if data["by"].is_object() {
        parts.push(format!("by={}", party(&data["by"])));
    }
    if data["remedy"].is_string() {
        parts.push(format!("remedy={}", text(&data["remedy"])));
    }
    if data["reported_by"].is_object() {
        parts.push(format!("reported_by={}", party(&data["reported_by"])));
        parts.push(format!("strikes={}", data["strikes"]));
        parts.push(format!("suspended={}", data["suspended"]));
    }
    parts.join(" ")
}

/// Runs the listener until `--count` deliveries verified (or forever).
pub fn run(args: &ListenArgs, json_out: bool) -> Result<u8, Failure> {
    let key =
        parse_secret(args.secret.trim()).map_err(|e| Failure::Usage(format!("--secret: {e}")))?;
    let server = tiny_http::Server::http((args.host.as_str(), args.port)).map_err(|e| {
        Failure::Usage(format!("cannot listen on {}:{}: {e}", args.host, args.port))
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or_else(|| format!("{}:{}", args.host, args.port), |a| a.to_string());
    eprintln!("glados: listening for webhooks on http://{addr}/ (Ctrl-C stops)");
    let mut seen = HashSet::new();
    let mut verified = 0u64;
    for mut req in server.incoming_requests() {
        let mut body = Vec::new();
        let read = req
            .as_reader()
            .take(MAX_BODY_BYTES + 1)
            .read_to_end(&mut body);
        let id = header(&req, HEADER_ID).unwrap_or_default();
        let verdict = if read.is_err() || body.len() as u64 > MAX_BODY_BYTES {
            Verdict::Refused("body unreadable or over 1 MiB".into())
        } else {
            match (
                header(&req, HEADER_TIMESTAMP),
                header(&req, HEADER_SIGNATURE),
            ) {
                (Some(ts), Some(sig)) if !id.is_empty() => {
                    match verify(&key, &id, &ts, &sig, &body, now_s(), args.tolerance) {
                        Ok(()) if !seen.insert(id.clone()) => Verdict::Duplicate,
                        Ok(()) => Verdict::Verified,
                        Err(e) => Verdict::Refused(e.to_string()),
                    }
                }
                _ => Verdict::Refused(
                    "missing webhook-id, webhook-timestamp or webhook-signature".into(),
                ),
            }
        };
        let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let status = if matches!(verdict, Verdict::Refused(_)) {
            401
        } else {
            204
        };
        let path = clean(req.url());
        if json_out {
            let (v, reason) = match &verdict {
                Verdict::Verified => ("verified", None),
                Verdict::Duplicate => ("duplicate", None),
                Verdict::Refused(r) => ("refused", Some(r.clone())),
            };
            let mut line = json!({ "verdict": v, "id": clean(&id), "path": path, "event": event });
            if let (Some(r), Some(o)) = (reason, line.as_object_mut()) {
                o.insert("reason".into(), json!(r));
            }
            println!("{line}");
        } else {
            match &verdict {
                Verdict::Verified => println!("verified {} {}", clean(&id), describe(&event)),
                Verdict::Duplicate => {
                    println!("duplicate {} (already seen; acknowledged)", clean(&id))
                }
                Verdict::Refused(r) => println!("refused {} at {path}: {r}", clean(&id)),
            }
        }
        let _ = req.respond(tiny_http::Response::empty(status));
        if verdict == Verdict::Verified {
            verified += 1;
            if args.count.is_some_and(|c| verified >= c) {
                break;
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_event_type_on_one_line() {
        let e = json!({"type":"mapping.replaced","data":{"sii":"+14155550100","user":"u1","by":{"provider":"new","gp":"gp-b"}},"id":"evt_1","timestamp":"t"});
        assert_eq!(
            describe(&e),
            "mapping.replaced sii=+14155550100 user=u1 by=new (gp gp-b)"
        );
        let s = json!({"type":"ap.strike","data":{"sii":"+14155550100","reported_by":{"provider":"old"},"strikes":2,"suspended":false}});
        assert_eq!(
            describe(&s),
            "ap.strike sii=+14155550100 reported_by=old strikes=2 suspended=false"
        );
        let evil = json!({"type":"x\u{1b}[2J","data":{"sii":"a\nb"}});
        assert!(!describe(&evil).contains('\u{1b}') && !describe(&evil).contains('\n'));
    }
}
