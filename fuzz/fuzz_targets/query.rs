//! Query bodies from APs and peer answers from other GPs (JSON). Never
//! panics; a peer answer that deserializes serializes back to the same
//! answer.
#![no_main]

use glados::core::query::{PeerAnswer, QueryBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = serde_json::from_slice::<QueryBody>(data) {
        if let Ok(sii) = q.into_sii() {
            assert!(sii.as_str().is_ascii());
        }
    }
    if let Ok(a) = serde_json::from_slice::<PeerAnswer>(data) {
        let json = serde_json::to_vec(&a).expect("serialize answer");
        assert_eq!(
            serde_json::from_slice::<PeerAnswer>(&json).ok().as_ref(),
            Some(&a)
        );
        let _ = a.checked("gp-b.example");
    }
});
