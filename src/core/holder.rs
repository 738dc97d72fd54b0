//! The SII holder's own removal and opt-out (issue 16 item 3, beyond
//! GLADOS-00).
//!
//! GLADOS-00 lets only APs change mappings. The MIMI discovery
//! requirements ask that the recipient can remove mappings of their
//! identifier (R9, R10) and that "opted out" is an answer distinct from
//! "no mapping" (R5). So a person who proves control of an SII — a code
//! sent to it, with the same send limits as an AP's creation — may remove
//! every mapping of it across the federation, or opt it out of discovery
//! (every mapping removed, new ones refused, queries answering
//! `opted_out`) until they opt back in.
//!
//! Here: the actions, the claim that carries one to peer GPs, the short
//! token that proves control between the code and the action, and the code
//! message. The record rules are `SiiRecord::holder_act` and
//! `SiiRecord::apply_holder_claim` (`core::mapping`). Pure: keys, clock
//! and entropy come in as arguments.

use core::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::creation::{display_app_name, CodeMessage};
use super::encoding::{b64url_decode, b64url_encode};
use super::mapping::GpId;
use super::sii::Sii;
use super::verification::ct_eq;
use super::Problem;

type HmacSha256 = Hmac<Sha256>;

/// What the holder asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolderAction {
    /// Remove every mapping of the SII (new ones may be made later).
    Remove,
    /// Remove every mapping and refuse new ones; queries answer
    /// `opted_out` until [`HolderAction::OptIn`].
    OptOut,
    /// End an opt-out.
    OptIn,
}

/// The reserved "AP" id under which holder verifications are kept in the
/// SII's shard and holder sends are counted. Not a valid provider id, so
/// no enrolled AP can collide with it.
pub const HOLDER: &str = "~holder";

/// A holder's action, carried from the GP where they acted to every peer
/// GP whose filter may hold the SII (`POST /peer/v1/holder-claims`), from
/// that GP's durable outbox. The receiving GP applies it with
/// `SiiRecord::apply_holder_claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderClaim {
    /// The SII concerned.
    pub sii: Sii,
    /// The GP where the holder proved control (the sender).
    pub from_gp: GpId,
    /// What they asked for.
    pub action: HolderAction,
    /// When (sender's clock): mappings created later than a removal are
    /// left alone, and an older action never undoes a newer one.
    pub at_ms: u64,
}

/// Version tag and first segment of a holder token.
pub const TOKEN_PREFIX: &str = "ght1";
/// How long a holder token lasts: enough to look and decide, short
/// enough that a forgotten browser tab is not a standing credential.
pub const TOKEN_TTL_S: u64 = 900;
/// Longest holder token looked at.
pub const MAX_TOKEN_LEN: usize = 1024;
/// The label the holder-token MAC key is derived under from an access-token
/// key, so an AP token's MAC can never pass for a holder token's.
pub const TOKEN_KEY_LABEL: &[u8] = b"glados/holder-token/v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    exp: u64,
    sii: String,
}

fn mac(key: &[u8], signed: &str) -> [u8; 32] {
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    m.update(signed.as_bytes());
    m.finalize().into_bytes().into()
}

/// A token proving that its bearer received the code sent to `sii`:
/// `ght1.<kid>.<b64url({"exp","sii"})>.<b64url(HMAC-SHA256)>`, under the
/// key `key` (derived with [`TOKEN_KEY_LABEL`]) named `kid`.
pub fn issue_token(kid: &str, key: &[u8], sii: &Sii, now_s: u64) -> String {
    let body = TokenBody {
        exp: now_s.saturating_add(TOKEN_TTL_S),
        sii: sii.as_str().to_owned(),
    };
    let payload = b64url_encode(&serde_json::to_vec(&body).unwrap_or_default());
    let signed = format!("{TOKEN_PREFIX}.{kid}.{payload}");
    let tag = b64url_encode(&mac(key, &signed));
    format!("{signed}.{tag}")
}

/// Checks a holder token: shape, key, MAC (constant time), expiry; the SII
/// it proves control of.
pub fn verify_token(
    token: &str,
    key_for: impl Fn(&str) -> Option<Vec<u8>>,
    now_s: u64,
) -> Result<Sii, HolderError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(HolderError::BadToken);
    }
    let Some([TOKEN_PREFIX, kid, payload, tag]) = super::token::four_parts(token) else {
        return Err(HolderError::BadToken);
    };
    let key = key_for(kid).ok_or(HolderError::BadToken)?;
    let signed = format!("{TOKEN_PREFIX}.{kid}.{payload}");
    let tag = b64url_decode(tag).map_err(|_| HolderError::BadToken)?;
    if !ct_eq(&tag, &mac(&key, &signed)) {
        return Err(HolderError::BadToken);
    }
    let body: TokenBody = b64url_decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(HolderError::BadToken)?;
    if now_s >= body.exp {
        return Err(HolderError::TokenExpired);
    }
    Sii::parse(&body.sii).map_err(|_| HolderError::BadToken)
}

/// The code message to the holder: names the GP and what the code is for,
/// so a person who did not ask knows to ignore it.
pub fn code_message(gp_name: &str, code: &str, ttl_ms: u64) -> CodeMessage {
    let gp = display_app_name(gp_name);
    let minutes = ttl_ms.div_ceil(60_000).max(1);
    CodeMessage {
        sms: format!(
            "{code} is your code to manage how you are found at {gp}. Expires in {minutes} min. Did not ask? Ignore this."
        ),
        email_subject: format!("{code} is your code to manage how you are found at {gp}"),
        email_text: format!(
            "Someone (hopefully you) asked to manage how this address is found by messaging \
             apps through {gp}: to remove it from every app, or to opt out of being found.\n\n\
             Your code: {code}\n\nIt expires in {minutes} minutes. If you did not ask for it, \
             ignore this message: nothing changes without the code."
        ),
    }
}

/// Why a holder request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HolderError {
    /// Not a holder token this GP issued (or tampered with).
    BadToken,
    /// The token's 15 minutes are over.
    TokenExpired,
}

impl fmt::Display for HolderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HolderError::BadToken => {
                "not a holder token issued by this GP; ask for a code again (POST /v1/holder/codes)"
            }
            HolderError::TokenExpired => {
                "the holder token has expired (it lasts 15 minutes); ask for a code again"
            }
        })
    }
}

impl Problem for HolderError {
    fn slug(&self) -> &'static str {
        match self {
            HolderError::BadToken => "invalid-holder-token",
            HolderError::TokenExpired => "holder-token-expired",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            HolderError::BadToken => "Invalid holder token",
            HolderError::TokenExpired => "Holder token expired",
        }
    }
    fn status(&self) -> u16 {
        401
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sii() -> Sii {
        Sii::parse("Alice@Example.com").unwrap()
    }

    #[test]
    fn a_token_proves_control_of_its_sii_until_it_expires() {
        let key = [5u8; 32];
        let keys = |kid: &str| (kid == "k1").then(|| key.to_vec());
        let t = issue_token("k1", &key, &sii(), 1_000);
        assert!(t.starts_with("ght1.k1."));
        assert_eq!(verify_token(&t, keys, 1_000).unwrap(), sii());
        assert_eq!(
            verify_token(&t, keys, 1_000 + TOKEN_TTL_S - 1).unwrap(),
            sii()
        );
        assert_eq!(
            verify_token(&t, keys, 1_000 + TOKEN_TTL_S),
            Err(HolderError::TokenExpired)
        );
        let e = verify_token(&t, keys, 1_000 + TOKEN_TTL_S).unwrap_err();
        assert_eq!((e.slug(), e.status()), ("holder-token-expired", 401));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let key = [5u8; 32];
        let keys = |kid: &str| (kid == "k1").then(|| key.to_vec());
        let t = issue_token("k1", &key, &sii(), 1_000);
        // Another key, another kid, another SII in the payload, junk.
        let other = issue_token("k1", &[6u8; 32], &sii(), 1_000);
        let unknown = issue_token("k2", &key, &sii(), 1_000);
        let parts: Vec<&str> = t.split('.').collect();
        let evil = b64url_encode(br#"{"exp":99999999999,"sii":"bob@example.com"}"#);
        let swapped = format!("{}.{}.{}.{}", parts[0], parts[1], evil, parts[3]);
        for bad in [
            other.as_str(),
            unknown.as_str(),
            swapped.as_str(),
            "",
            "ght1.k1.x",
            "gla1.k1.a.b",
            &"x".repeat(2000),
        ] {
            assert_eq!(
                verify_token(bad, keys, 1_000),
                Err(HolderError::BadToken),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn claims_and_actions_have_a_stable_wire_form() {
        let c = HolderClaim {
            sii: sii(),
            from_gp: "gp-a".into(),
            action: HolderAction::OptOut,
            at_ms: 7,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(
            j,
            r#"{"sii":"alice@example.com","from_gp":"gp-a","action":"opt-out","at_ms":7}"#
        );
        assert_eq!(serde_json::from_str::<HolderClaim>(&j).unwrap(), c);
        assert!(serde_json::from_str::<HolderClaim>(&j.replace("opt-out", "delete")).is_err());
        assert!(serde_json::from_str::<HolderClaim>(&j.replace("}", r#","x":1}"#)).is_err());
    }

    #[test]
    fn the_message_names_the_gp_and_the_purpose() {
        let m = code_message("GP A", "123456", 600_000);
        assert!(m.sms.starts_with("123456 is your code"));
        assert!(m.sms.contains("GP A") && m.sms.contains("10 min"));
        assert!(m.sms.len() <= 160, "{}", m.sms.len());
        assert!(m.email_text.contains("opt out"));
    }
}
