//! Client credentials and other identifiers an AP sends: Basic
//! credentials, certificate fingerprints (hex and x5t#S256), webhook URLs,
//! verification handles, Idempotency-Key. Never panics; each parses back
//! from its own encoding.
#![no_main]

use glados::core::bulk::IdempotencyKey;
use glados::core::creation::Handle;
use glados::core::credentials::{
    normalize_fingerprints, parse_basic_credentials, validate_webhook_url, verify_client_secret,
    CertFingerprint,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_basic_credentials(text);
    if let Ok(fp) = CertFingerprint::parse(text) {
        assert_eq!(CertFingerprint::parse(&fp.to_hex()), Ok(fp));
        assert_eq!(CertFingerprint::from_x5t_s256(&fp.to_x5t_s256()), Some(fp));
    }
    if let Some(fp) = CertFingerprint::from_x5t_s256(text) {
        assert_eq!(CertFingerprint::parse(&fp.to_hex()), Ok(fp));
    }
    let _ = normalize_fingerprints(&text.split(',').collect::<Vec<_>>());
    let _ = validate_webhook_url(text, false);
    let _ = validate_webhook_url(text, true);
    let _ = verify_client_secret(text, &[0u8; 32]);
    if let Ok(h) = Handle::parse(text, u32::MAX) {
        assert_eq!(Handle::parse(&h.encode(), h.shard + 1), Ok(h));
        assert!(Handle::parse(&h.encode(), h.shard).is_err());
    }
    if let Ok(k) = IdempotencyKey::parse(text) {
        assert_eq!(IdempotencyKey::parse(k.as_str()).as_ref(), Ok(&k));
    }
});
