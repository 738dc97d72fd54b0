//! Mapping creation (draft §8.2): verification handles, what a repeated
//! request does, and the text of the code message.
//!
//! draft §8.2: "Glados will then construct a short lived code, and either
//! email or SMS it to the user. [...] It is important for the security of
//! this solution that the AP - who is only partially trusted here - does
//! not know this prior to the user entering it." So the AP gets a
//! [`Handle`] and an expiry, never the code; the code exists only in the
//! message built here and, hashed, in the SII's shard.

use core::fmt;

use super::encoding::{b64url_decode, b64url_encode};
use super::Problem;

/// The opaque reference the AP confirms with: which shard holds the
/// pending verification, and its random 128-bit salt (which is also its
/// id). Unguessable, so it can sit in a URL; useless without the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    /// Shard index (`core::shard::shard_of`).
    pub shard: u32,
    /// The pending verification's salt.
    pub salt: [u8; 16],
}

/// A handle the GP never issued (wrong shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHandle;

impl fmt::Display for BadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a verification handle issued by this GP")
    }
}

impl Problem for BadHandle {
    fn slug(&self) -> &'static str {
        "no-such-verification"
    }
    fn title(&self) -> &'static str {
        "No such verification"
    }
    fn status(&self) -> u16 {
        404
    }
}

const HANDLE_PREFIX: &str = "vh_";

impl Handle {
    /// `vh_` + base64url(shard as 4 bytes big-endian ‖ salt).
    pub fn encode(&self) -> String {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&self.shard.to_be_bytes());
        b[4..].copy_from_slice(&self.salt);
        format!("{HANDLE_PREFIX}{}", b64url_encode(&b))
    }

    /// Parses what [`Handle::encode`] produced for a GP with `shards`
    /// mapping shards; anything else is [`BadHandle`]. A shard index past
    /// the count was never issued, and following it would create a new
    /// Durable Object (and its tables) per made-up handle.
    pub fn parse(s: &str, shards: u32) -> Result<Handle, BadHandle> {
        let b64 = s.strip_prefix(HANDLE_PREFIX).ok_or(BadHandle)?;
        if b64.len() > 40 {
            return Err(BadHandle);
        }
        let raw = b64url_decode(b64).map_err(|_| BadHandle)?;
        let raw: [u8; 20] = raw.try_into().map_err(|_| BadHandle)?;
        let mut shard = [0u8; 4];
        shard.copy_from_slice(&raw[..4]);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&raw[4..]);
        let shard = u32::from_be_bytes(shard);
        if shard >= shards {
            return Err(BadHandle);
        }
        Ok(Handle { shard, salt })
    }
}

/// A repeated creation request within this long after the code went out
/// is treated as a retry of a request whose answer was lost: same handle,
/// no new message.
pub const RESEND_COOLDOWN_MS: u64 = 30_000;

/// What is open for the same SII and AP when a creation request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenPending<'a> {
    /// The AP's user id it was started for.
    pub user: &'a str,
    /// When its code was last sent.
    pub sent_at_ms: u64,
    /// Whether it is expired, used up or verified.
    pub dead: bool,
}

/// What a creation request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Nothing usable is open: new pending verification, new handle, send.
    Fresh,
    /// Same user, code sent less than [`RESEND_COOLDOWN_MS`] ago: answer
    /// the existing handle and expiry again, send nothing, count nothing.
    Reuse,
    /// Same user, later: send a new code under the same handle. The old
    /// code stops working, the expiry restarts, the attempt count does NOT
    /// reset (resends must not multiply guesses; the per-SII send limit
    /// bounds them further).
    Resend,
}

/// The repeat rule (issue 5: "a repeated request for the same pending pair
/// behaves sensibly"). At most one open verification exists per (SII, AP):
/// a request for another user of the same AP replaces it ([`Repeat::Fresh`]).
pub fn repeat_rule(open: Option<OpenPending<'_>>, user: &str, now_ms: u64) -> Repeat {
    match open {
        Some(p) if !p.dead && p.user == user => {
            if now_ms.saturating_sub(p.sent_at_ms) < RESEND_COOLDOWN_MS {
                Repeat::Reuse
            } else {
                Repeat::Resend
            }
        }
        _ => Repeat::Fresh,
    }
}

/// Longest app name shown in a message.
pub const MAX_APP_NAME_CHARS: usize = 32;

/// The text of one code message.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeMessage {
    /// SMS body: plain GSM-7-friendly ASCII, one segment (≤ 160) for app
    /// names up to [`MAX_APP_NAME_CHARS`] and codes up to 8 characters.
    pub sms: String,
    /// Email subject.
    pub email_subject: String,
    /// Email plain-text body.
    pub email_text: String,
}

impl fmt::Debug for CodeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeMessage(<redacted: contains a code>)")
    }
}

/// Makes an operator-set app name safe to put into a message: ASCII
/// printable only (anything else becomes `?`), whitespace collapsed,
/// at most [`MAX_APP_NAME_CHARS`] characters; empty → "your app".
pub fn display_app_name(name: &str) -> String {
    let mut out = String::new();
    for w in name.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(
            w.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
        );
    }
    let out: String = out.chars().take(MAX_APP_NAME_CHARS).collect();
    if out.trim().is_empty() {
        "your app".to_owned()
    } else {
        out.trim_end().to_owned()
    }
}

/// Builds the message carrying `code`. The code comes first (phones show
/// the beginning in notifications and offer autofill); the message names
/// the app that asked, so a user who did not ask knows what to ignore, and
/// tells them not to share the code (the AP itself never sees it).
pub fn code_message(app_name: &str, gp_name: &str, code: &str, ttl_ms: u64) -> CodeMessage {
    let app = display_app_name(app_name);
    let gp = display_app_name(gp_name);
    let minutes = ttl_ms.div_ceil(60_000).max(1);
    let sms = format!(
        "{code} is your {app} code. Expires in {minutes} min. Don't share it. Not you? Ignore this."
    );
    let email_subject = format!("{code} is your {app} verification code");
    let email_text = format!(
        "Your verification code for {app} is:\n\n    {code}\n\n\
         Enter it in {app} within {minutes} minutes. Do not share it with anyone; \
         {app} will never ask you to send it.\n\n\
         It links this address to your {app} account in the GLADOS directory \
         so that people using other apps can reach you there. If you did not \
         ask for it, ignore this email and nothing will change.\n\n\
         -- {gp} (GLADOS directory)\n"
    );
    CodeMessage {
        sms,
        email_subject,
        email_text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_refuse_garbage() {
        let h = Handle {
            shard: 513,
            salt: [7; 16],
        };
        let s = h.encode();
        assert!(s.starts_with("vh_") && s.len() == 3 + 27);
        assert_eq!(Handle::parse(&s, 514), Ok(h));
        // Issue 14 item 8: a shard this GP does not have was never issued.
        assert_eq!(Handle::parse(&s, 513), Err(BadHandle));
        assert_eq!(Handle::parse(&s, 0), Err(BadHandle));
        for bad in [
            "",
            "vh_",
            "vh_!!!",
            "xx_AAAA",
            &format!("{s}A"),
            &"vh_A".repeat(30),
        ] {
            assert_eq!(Handle::parse(bad, u32::MAX), Err(BadHandle), "{bad}");
        }
        assert_eq!(
            (BadHandle.slug(), BadHandle.status()),
            ("no-such-verification", 404)
        );
    }

    #[test]
    fn repeat_rule_reuses_then_resends_and_replaces_other_users() {
        let open = |user, sent_at_ms, dead| {
            Some(OpenPending {
                user,
                sent_at_ms,
                dead,
            })
        };
        assert_eq!(repeat_rule(None, "u1", 0), Repeat::Fresh);
        assert_eq!(
            repeat_rule(open("u1", 1_000, false), "u1", 1_000 + 29_999),
            Repeat::Reuse
        );
        assert_eq!(
            repeat_rule(open("u1", 1_000, false), "u1", 1_000 + 30_000),
            Repeat::Resend
        );
        assert_eq!(
            repeat_rule(open("u1", 1_000, true), "u1", 1_001),
            Repeat::Fresh
        );
        assert_eq!(
            repeat_rule(open("u1", 1_000, false), "u2", 1_001),
            Repeat::Fresh
        );
    }

    #[test]
    fn sms_fits_one_segment_and_starts_with_the_code() {
        let m = code_message(&"W".repeat(80), "GP", "12345678", 600_000);
        assert!(m.sms.starts_with("12345678 is your "));
        assert!(m.sms.len() <= 160, "{} chars: {}", m.sms.len(), m.sms);
        assert!(m.sms.is_ascii());
        assert!(m.sms.contains("Expires in 10 min"));
        let m = code_message("Example Chat", "GLADOS DE", "493021", 90_000);
        assert_eq!(
            m.sms,
            "493021 is your Example Chat code. Expires in 2 min. Don't share it. Not you? Ignore this."
        );
        assert_eq!(
            m.email_subject,
            "493021 is your Example Chat verification code"
        );
        assert!(m.email_text.contains("\n    493021\n"));
        assert!(m.email_text.contains("GLADOS DE"));
        assert_eq!(format!("{m:?}"), "CodeMessage(<redacted: contains a code>)");
    }

    #[test]
    fn app_names_are_sanitized() {
        assert_eq!(display_app_name("  Ex\u{7}ample \n Chat "), "Ex?ample Chat");
        assert_eq!(display_app_name("Bücher"), "B?cher");
        assert_eq!(display_app_name(""), "your app");
        assert_eq!(display_app_name(&"x".repeat(40)).len(), MAX_APP_NAME_CHARS);
    }
}
