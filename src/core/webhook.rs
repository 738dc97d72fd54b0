//! Signed webhooks to APs (and to subscribed GPs), Standard Webhooks style.
//!
//! draft §8.2.1: "Through a webhook, the old provider AP1 will be notified
//! that the mapping has been removed and/or preference established for the
//! new provider." Webhooks are signed (Standard Webhooks:
//! id, timestamp, HMAC signature) and idempotent by id (ARCHITECTURE.md,
//! Invariants 4).
//!
//! Wire format (<https://www.standardwebhooks.com/>, spec v1):
//! - `webhook-id`: the event id; the same on every retry, so a receiver
//!   drops duplicates by it;
//! - `webhook-timestamp`: Unix seconds of *this* attempt;
//! - `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))
//!   where the key is the base64 part of the AP's `whsec_…` secret.
//!
//! The body is a JSON [`Event`]: `{"type", "id", "timestamp", "data"}`.
//! Pure: ids come from caller-supplied random bytes, times are arguments.

use core::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::credentials::WEBHOOK_SECRET_PREFIX;
use super::encoding::{b64_decode, b64_encode, b64url_encode};
use super::mapping::{DisplaceAction, Notification, Party, Remedy, Strike};
use super::verification::ct_eq;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the event id.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's Unix timestamp in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying one or more space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Receivers should refuse timestamps further than this from their clock
/// (Standard Webhooks suggests five minutes), which bounds replays.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// Why a webhook secret or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookError {
    /// The secret is not `whsec_` + base64 of at least 16 bytes.
    BadSecret,
    /// The timestamp header is not a decimal number of seconds.
    BadTimestamp,
    /// The timestamp is further from now than the tolerance (replay?).
    Stale,
    /// No `v1` signature matched.
    NoMatch,
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WebhookError::BadSecret => "webhook secret must be 'whsec_' followed by base64",
            WebhookError::BadTimestamp => "webhook-timestamp is not a number of seconds",
            WebhookError::Stale => "webhook-timestamp is outside the tolerance window",
            WebhookError::NoMatch => "no webhook-signature matched",
        })
    }
}

/// Decodes a `whsec_<base64>` secret (the prefix is optional, as in the
/// reference libraries) into the HMAC key.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let b64 = secret.strip_prefix(WEBHOOK_SECRET_PREFIX).unwrap_or(secret);
    match b64_decode(b64) {
        Ok(k) if k.len() >= 16 => Ok(k),
        _ => Err(WebhookError::BadSecret),
    }
}

/// The `webhook-signature` value for one attempt: `v1,<base64 MAC>` over
/// `"{id}.{timestamp_s}.{body}"`.
pub fn sign(key: &[u8], id: &str, timestamp_s: u64, body: &[u8]) -> String {
    format!("v1,{}", b64_encode(&mac(key, id, timestamp_s, body)))
}

fn mac(key: &[u8], id: &str, timestamp_s: u64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail; an all-zero MAC
    // would simply never verify.
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp_s.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// The three headers to send with `body`, in order.
pub fn headers(key: &[u8], id: &str, timestamp_s: u64, body: &[u8]) -> [(&'static str, String); 3] {
    [
        (HEADER_ID, id.to_owned()),
        (HEADER_TIMESTAMP, timestamp_s.to_string()),
        (HEADER_SIGNATURE, sign(key, id, timestamp_s, body)),
    ]
}

/// Receiver-side check (what an AP, or a GP receiving a signed event, does):
/// the timestamp is within `tolerance_s` of `now_s` and one of the
/// space-separated `v1,` signatures matches in constant time.
pub fn verify(
    key: &[u8],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), WebhookError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::BadTimestamp)?;
    if ts.abs_diff(now_s) > tolerance_s {
        return Err(WebhookError::Stale);
    }
    let want = mac(key, id, ts, body);
    let ok = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| b64_decode(b).ok())
        .any(|got| ct_eq(&got, &want));
    if ok {
        Ok(())
    } else {
        Err(WebhookError::NoMatch)
    }
}

/// A fresh event id from 16 caller-supplied random bytes: `evt_` + base64url.
/// Assigned once when the event is enqueued and reused on every retry.
pub fn event_id(random: &[u8; 16]) -> String {
    format!("evt_{}", b64url_encode(random))
}

/// RFC 3339 UTC time with millisecond precision, e.g.
/// `2024-01-20T12:00:00.000Z`, from milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`, unsigned because `ms` is).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Another AP, as named in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyRef {
    /// Provider id.
    pub provider: String,
    /// Its GP, if it is not this GP.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gp: Option<String>,
}

impl From<&Party> for PartyRef {
    fn from(p: &Party) -> Self {
        PartyRef {
            provider: p.ap.to_string(),
            gp: p.gp.clone(),
        }
    }
}

/// The SII's holder, as named in a `mapping.removed` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRef {
    /// Always true: the holder of the SII, not an AP.
    pub holder: bool,
    /// The GP where they acted, if it is not this GP.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gp: Option<String>,
}

/// What an AP is told. The `type` strings are stable API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[non_exhaustive]
pub enum EventData {
    /// Your mapping was deleted because the user chose another app
    /// (draft §8.2.1: "the mapping has been removed"). You may
    /// re-establish it or report the change.
    #[serde(rename = "mapping.replaced")]
    Replaced {
        /// The SII concerned (your user's).
        sii: String,
        /// Your user whose mapping went.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        user: Option<String>,
        /// The app the user chose.
        by: PartyRef,
    },
    /// Your mapping is kept but another app is now preferred (draft §8.2.1:
    /// "preference established for the new provider"). You may prefer back
    /// or report the change.
    #[serde(rename = "mapping.outpreferred")]
    Outpreferred {
        /// The SII concerned.
        sii: String,
        /// Your user.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        user: Option<String>,
        /// The app now preferred.
        by: PartyRef,
    },
    /// An app you displaced undid it (re-established, or preferred back).
    #[serde(rename = "mapping.remedied")]
    Remedied {
        /// The SII concerned.
        sii: String,
        /// The app that undid your change.
        by: PartyRef,
        /// `reestablished` or `preferred-back`.
        remedy: Remedy,
    },
    /// The holder of the SII removed your mapping themselves, having proved
    /// control of it by a code (beyond GLADOS-00: the user's own removal).
    /// With `opted_out` they also opted out of discovery: no mapping can be
    /// made for the SII until they opt back in.
    #[serde(rename = "mapping.removed")]
    Removed {
        /// The SII concerned.
        sii: String,
        /// Your user whose mapping went.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        user: Option<String>,
        /// Who removed it: the holder, at this GP or at `gp`.
        by: HolderRef,
        /// Whether the holder also opted out of discovery.
        opted_out: bool,
    },
    /// A user of another app reported a change you made as malicious
    /// (draft §8.2.1: "this would be a strike against the reputation of the
    /// new provider").
    #[serde(rename = "ap.strike")]
    Strike {
        /// The SII whose change was reported.
        sii: String,
        /// The app whose user reported it.
        reported_by: PartyRef,
        /// Your strike count after this one.
        strikes: u32,
        /// Whether you are now suspended (draft §11.2).
        suspended: bool,
    },
}

impl EventData {
    /// The event for a local AP from a core [`Notification`], if it is one
    /// addressed to an AP of this GP (claims and remote remedies go to GPs).
    /// `user` is the displaced AP's user id when the glue knows it.
    pub fn from_notification(n: &Notification, user: Option<String>) -> Option<EventData> {
        match n {
            Notification::Displaced {
                sii, by, action, ..
            } => Some(match action {
                DisplaceAction::Replaced => EventData::Replaced {
                    sii: sii.to_string(),
                    user,
                    by: by.into(),
                },
                DisplaceAction::Outpreferred => EventData::Outpreferred {
                    sii: sii.to_string(),
                    user,
                    by: by.into(),
                },
            }),
            Notification::Remedied {
                to,
                sii,
                by_ap,
                remedy,
            } if to.gp.is_none() => Some(EventData::Remedied {
                sii: sii.to_string(),
                by: PartyRef {
                    provider: by_ap.to_string(),
                    gp: None,
                },
                remedy: *remedy,
            }),
            Notification::Removed {
                sii,
                at_gp,
                opted_out,
                ..
            } => Some(EventData::Removed {
                sii: sii.to_string(),
                user,
                by: HolderRef {
                    holder: true,
                    gp: at_gp.clone(),
                },
                opted_out: *opted_out,
            }),
            _ => None,
        }
    }

    /// The event telling the struck AP about a strike recorded against it.
    pub fn from_strike(s: &Strike, strikes: u32, suspended: bool) -> EventData {
        EventData::Strike {
            sii: s.sii.to_string(),
            reported_by: PartyRef {
                provider: s.reported_by.to_string(),
                gp: s.reported_by_gp.clone(),
            },
            strikes,
            suspended,
        }
    }

    /// The stable `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::Replaced { .. } => "mapping.replaced",
            EventData::Outpreferred { .. } => "mapping.outpreferred",
            EventData::Remedied { .. } => "mapping.remedied",
            EventData::Removed { .. } => "mapping.removed",
            EventData::Strike { .. } => "ap.strike",
        }
    }
}

/// One webhook body: `{"type", "data", "id", "timestamp"}` (field order
/// as serialized: type, data, id, timestamp).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Type and payload.
    #[serde(flatten)]
    pub data: EventData,
    /// Same as the `webhook-id` header.
    pub id: String,
    /// When the event happened (RFC 3339), not when it was delivered.
    pub timestamp: String,
}

impl Event {
    /// An event that happened at `at_ms`.
    pub fn new(data: EventData, id: String, at_ms: u64) -> Event {
        Event {
            data,
            id,
            timestamp: rfc3339_ms(at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mapping::Party;
    use crate::core::ssi::ProviderId;
    use crate::core::Sii;

    // The Standard Webhooks reference test vector (used by every official
    // library's test-suite).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn standard_webhooks_test_vector() {
        let key = parse_secret(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), SIG);
        let h = headers(&key, ID, TS, BODY);
        assert_eq!(h[0], ("webhook-id", ID.to_owned()));
        assert_eq!(h[1], ("webhook-timestamp", "1614265330".to_owned()));
        assert_eq!(h[2], ("webhook-signature", SIG.to_owned()));
    }

    #[test]
    fn verify_accepts_good_and_refuses_tampered_stale_and_garbage() {
        let key = parse_secret(SECRET).unwrap();
        let ok = |sigs: &str, body: &[u8], now: u64| {
            verify(&key, ID, "1614265330", sigs, body, now, DEFAULT_TOLERANCE_S)
        };
        assert_eq!(ok(SIG, BODY, TS), Ok(()));
        // Several signatures (key rotation): any one matching is enough.
        assert_eq!(ok(&format!("v1,AAAA {SIG}"), BODY, TS + 10), Ok(()));
        assert_eq!(
            ok(SIG, br#"{"test": 2432232315}"#, TS),
            Err(WebhookError::NoMatch)
        );
        assert_eq!(ok(SIG, BODY, TS + 301), Err(WebhookError::Stale));
        assert_eq!(ok(SIG, BODY, TS - 301), Err(WebhookError::Stale));
        assert_eq!(ok("v2,abc", BODY, TS), Err(WebhookError::NoMatch));
        assert_eq!(
            verify(&key, ID, "soon", SIG, BODY, TS, 300),
            Err(WebhookError::BadTimestamp)
        );
        // Another id under the same signature does not verify.
        assert_eq!(
            verify(&key, "msg_other", "1614265330", SIG, BODY, TS, 300),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn secrets_must_be_base64_of_enough_bytes() {
        assert_eq!(parse_secret("whsec_!!!"), Err(WebhookError::BadSecret));
        assert_eq!(parse_secret("whsec_AAAA"), Err(WebhookError::BadSecret));
        // Same key with or without the prefix.
        assert_eq!(
            parse_secret(SECRET),
            parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        );
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        // Leap day and end of a leap year.
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }

    #[test]
    fn event_ids_are_distinct_and_url_safe() {
        let a = event_id(&[0xff; 16]);
        let b = event_id(&[0; 16]);
        assert_ne!(a, b);
        assert!(a.starts_with("evt_") && !a.contains('/') && !a.contains('+'));
    }

    fn sii() -> Sii {
        Sii::parse("+14155550100").unwrap()
    }

    #[test]
    fn displaced_notification_becomes_a_stable_json_event() {
        let n = Notification::Displaced {
            to_ap: ProviderId::parse("old").unwrap(),
            sii: sii(),
            by: Party {
                ap: ProviderId::parse("new").unwrap(),
                gp: None,
            },
            action: DisplaceAction::Replaced,
        };
        let data = EventData::from_notification(&n, Some("u1".into())).unwrap();
        assert_eq!(data.kind(), "mapping.replaced");
        let e = Event::new(data, "evt_x".into(), 0);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"type":"mapping.replaced","data":{"sii":"+14155550100","user":"u1","by":{"provider":"new"}},"id":"evt_x","timestamp":"1970-01-01T00:00:00.000Z"}"#
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_holders_removal_becomes_a_mapping_removed_event() {
        let n = Notification::Removed {
            to_ap: ProviderId::parse("old").unwrap(),
            sii: sii(),
            at_gp: Some("gp-a".into()),
            opted_out: true,
        };
        let data = EventData::from_notification(&n, Some("u1".into())).unwrap();
        assert_eq!(data.kind(), "mapping.removed");
        let json = serde_json::to_string(&Event::new(data, "evt_r".into(), 0)).unwrap();
        assert_eq!(
            json,
            r#"{"type":"mapping.removed","data":{"sii":"+14155550100","user":"u1","by":{"holder":true,"gp":"gp-a"},"opted_out":true},"id":"evt_r","timestamp":"1970-01-01T00:00:00.000Z"}"#
        );
    }

    #[test]
    fn remedied_to_a_remote_party_is_not_a_local_event() {
        let to = |gp: Option<&str>| Party {
            ap: ProviderId::parse("new").unwrap(),
            gp: gp.map(str::to_owned),
        };
        let n = |gp| Notification::Remedied {
            to: to(gp),
            sii: sii(),
            by_ap: ProviderId::parse("old").unwrap(),
            remedy: Remedy::PreferredBack,
        };
        assert!(EventData::from_notification(&n(Some("gp2")), None).is_none());
        let e = EventData::from_notification(&n(None), None).unwrap();
        let json = serde_json::to_value(Event::new(e, "evt_y".into(), 1)).unwrap();
        assert_eq!(json["type"], "mapping.remedied");
        assert_eq!(json["data"]["remedy"], "preferred-back");
        assert_eq!(json["data"]["by"]["provider"], "old");
    }

    #[test]
    fn strike_event() {
        let s = Strike {
            against: Party {
                ap: ProviderId::parse("new").unwrap(),
                gp: None,
            },
            sii: sii(),
            reported_by: ProviderId::parse("old").unwrap(),
            reported_by_gp: Some("gp-a".into()),
            at_ms: 5,
            claim_at_ms: Some(4),
        };
        let json = serde_json::to_value(EventData::from_strike(&s, 3, true)).unwrap();
        assert_eq!(json["type"], "ap.strike");
        assert_eq!(json["data"]["strikes"], 3);
        assert_eq!(json["data"]["suspended"], true);
        assert_eq!(json["data"]["reported_by"]["provider"], "old");
        assert_eq!(json["data"]["reported_by"]["gp"], "gp-a");
    }
}
