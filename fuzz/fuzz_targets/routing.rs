//! The routing table's value format (GLR1, read back from KV): never
//! panics or over-allocates; a value that decodes re-encodes to one that
//! decodes to the same sections, and lookups on it do not panic.
#![no_main]

use glados::core::routing::RoutingValue;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    value(data);
    // Past the checksum, to the decoder's later stages.
    if let Some(body) = data.get(..data.len().saturating_sub(8)) {
        let mut fixed = body.to_vec();
        fixed.extend_from_slice(&Sha256::digest(body)[..8]);
        value(&fixed);
    }
});

fn value(data: &[u8]) {
    if let Ok(v) = RoutingValue::decode(data) {
        let again = RoutingValue::decode(&v.encode()).expect("re-encoded value must decode");
        assert_eq!(again.sections.len(), v.sections.len());
        let digest: [u8; 32] = Sha256::digest(data).into();
        for (a, b) in again.sections.iter().zip(&v.sections) {
            assert_eq!(a.peer, b.peer);
            assert_eq!(a.bits.count_ones(), b.bits.count_ones());
            assert_eq!(a.may_hold(&digest), b.may_hold(&digest));
        }
    }
}
