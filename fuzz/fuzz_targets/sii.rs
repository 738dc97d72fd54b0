//! Sii::parse on any text: never panics; a parsed SII is ASCII, and its
//! canonical form parses back to itself (normalization is idempotent).
#![no_main]

use glados::core::query::QueryBody;
use glados::core::shard::shard_of;
use glados::core::Sii;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sii) = Sii::parse(text) {
        assert!(sii.as_str().is_ascii(), "canonical form not ASCII: {sii:?}");
        let again = Sii::parse(sii.as_str())
            .unwrap_or_else(|e| panic!("canonical {:?} does not parse: {e}", sii.as_str()));
        assert_eq!(again, sii, "normalization is not idempotent for {text:?}");
        assert_eq!(again.hash(), sii.hash());
        assert!(shard_of(&sii, 16) < 16);
        // The same SII inside a query body decodes to the same SII.
        let body = serde_json::json!({ "sii": text }).to_string();
        let q: QueryBody = serde_json::from_str(&body).expect("query body");
        assert_eq!(q.into_query().ok().map(|q| q.sii), Some(sii));
    }
});
