//! Access tokens: `verify` on any text with fixed keys, `verify` on tokens
//! whose payload is the fuzz input but whose MAC is genuine (so the payload
//! parser behind the MAC check is reached), and `TokenKeys::parse` on any
//! `TOKEN_KEYS` text. Never panics; whatever verifies re-issues to a token
//! that verifies to the same claims.
#![no_main]

use glados::core::encoding::{b64_encode, b64url_encode};
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
    match mode % 3 {
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
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(k) = TokenKeys::parse(text) {
                    assert!(!k.signing_kid().is_empty());
                }
            }
        }
    }
});
