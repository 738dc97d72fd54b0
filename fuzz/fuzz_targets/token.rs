//! Access tokens: `verify` on any text with fixed keys, `verify` on tokens
//! whose payload is the fuzz input but whose MAC is genuine (so the payload
//! parser behind the MAC check is reached), and `TokenKeys::parse` on any
//! `TOKEN_KEYS` text; and the same for the SII holder's tokens (beyond
//! GLADOS-00). Never panics; whatever verifies re-issues to a token that
//! verifies to the same claims (holder: the same SII).
#![no_main]

use glados::core::encoding::{b64_encode, b64url_encode};
use glados::core::holder;
use glados::core::token::{issue, verify, TokenKeys};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY1: [u8; 32] = [7; 32];
const KEY2: [u8; 32] = [9; 32];
const NOW: u64 = 1_800_000_000;

fn keys() -> TokenKeys {
    let spec = format!("k1:{},k2:{}", b64_encode(&KEY1), b64_encode(&KEY2));
    TokenKeys::parse(&spec).expect("fixed keys")
}

fn check(keys: &TokenKeys, token: &str) {
    if let Ok(claims) = verify(keys, token, NOW) {
        assert!(claims.expires_at > NOW);
        let again = issue(keys, &claims);
        assert_eq!(verify(keys, &again, NOW).as_ref(), Ok(&claims));
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let holder_key = |kid: &str| {
        keys.derived(Some(kid), holder::TOKEN_KEY_LABEL)
            .map(|(_, k)| k.to_vec())
    };
    let check_holder = |token: &str| {
        if let Ok(sii) = holder::verify_token(token, holder_key, NOW) {
            let (kid, key) = keys.derived(None, holder::TOKEN_KEY_LABEL).expect("a key");
            let again = holder::issue_token(&kid, &key, &sii, NOW);
            assert_eq!(holder::verify_token(&again, holder_key, NOW).as_ref(), Ok(&sii));
        }
    };
    match mode % 5 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check(&keys, text);
            }
        }
        1 => {
            let signed = format!("gla1.k1.{}", b64url_encode(rest));
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&KEY1) else {
                return;
            };
            mac.update(signed.as_bytes());
            let token = format!("{signed}.{}", b64url_encode(&mac.finalize().into_bytes()));
            check(&keys, &token);
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_holder(text);
            }
        }
        4 => {
            // A holder token whose payload is the input, under a genuine MAC.
            let Some((kid, key)) = keys.derived(None, holder::TOKEN_KEY_LABEL) else {
                return;
            };
            let signed = format!("ght1.{kid}.{}", b64url_encode(rest));
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
                return;
            };
            mac.update(signed.as_bytes());
            check_holder(&format!("{signed}.{}", b64url_encode(&mac.finalize().into_bytes())));
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(k) = TokenKeys::parse(text) {
                    assert!(!k.signing_kid().is_empty());
                }
            }
        }
    }
});
