//! Verification codes: `normalize_presented` on any typed text under
//! several policies, and `CodePolicy` from config JSON. Never panics; a
//! normalized code has the policy's length, uses only its alphabet, and
//! normalizes to itself.
#![no_main]

use glados::core::verification::{normalize_presented, CodePolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policies = [
        CodePolicy::default(),
        CodePolicy::new(8, "ABCDEFGHJKMNPQRSTVWXYZ23456789", 600_000, 5).expect("policy"),
        CodePolicy::new(10, "abcdefghijk", 600_000, 3).expect("policy"),
    ];
    for p in &policies {
        if let Some(code) = normalize_presented(p, text) {
            assert_eq!(code.len(), usize::from(p.length()));
            assert!(code.bytes().all(|b| p.alphabet().as_bytes().contains(&b)));
            assert_eq!(
                normalize_presented(p, &code).as_deref(),
                Some(code.as_str())
            );
        }
    }
    if let Ok(p) = serde_json::from_str::<CodePolicy>(text) {
        let json = serde_json::to_string(&p).expect("serialize policy");
        assert_eq!(serde_json::from_str::<CodePolicy>(&json).ok(), Some(p));
    }
});
