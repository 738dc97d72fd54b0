//! Webhook signatures (Standard Webhooks): `verify` with fuzzed
//! timestamp, signature header and body, and `parse_secret`. Never panics;
//! a header made by `sign` verifies, and fuzzed headers next to it do not
//! stop it from verifying.
#![no_main]

use glados::core::webhook::{parse_secret, sign, verify};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 24] = [5; 24];
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (ts, sigs, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let _ = verify(&KEY, "evt_1", ts, sigs, body.as_bytes(), NOW, 300);
    let good = sign(&KEY, "evt_1", NOW, body.as_bytes());
    let both = format!("{sigs} {good}");
    assert_eq!(
        verify(
            &KEY,
            "evt_1",
            &NOW.to_string(),
            &both,
            body.as_bytes(),
            NOW,
            300
        ),
        Ok(())
    );
    if let Ok(k) = parse_secret(&text) {
        assert!(k.len() >= 16);
    }
});
