//! Query bodies from APs and peer answers from other GPs (JSON). Never
//! panics; a peer answer that deserializes serializes back to the same
//! answer, and checking it (statements included) never panics.
#![no_main]

use glados::core::query::{PeerAnswer, Query, QueryBody};
use glados::core::Sii;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = serde_json::from_slice::<QueryBody>(data) {
        if let Ok(q) = q.into_query() {
            assert!(q.sii.as_str().is_ascii());
            let body = serde_json::to_vec(&q.peer_body()).expect("serialize peer body");
            let back: QueryBody = serde_json::from_slice(&body).expect("peer body parses");
            assert_eq!(back.into_query().ok(), Some(q));
        }
    }
    if let Ok(a) = serde_json::from_slice::<PeerAnswer>(data) {
        let json = serde_json::to_vec(&a).expect("serialize answer");
        assert_eq!(
            serde_json::from_slice::<PeerAnswer>(&json).ok().as_ref(),
            Some(&a)
        );
        let sii = Sii::parse("+14155550100").expect("a valid SII");
        let mut q = Query::plain(sii);
        let _ = a.clone().checked("gp-b.example", &q);
        q.all = true;
        let _ = a.checked("gp-b.example", &q);
    }
});
