//! The filter wire formats: a snapshot (GLF2) and an additions batch.
//! Never panics; a snapshot that decodes re-encodes to bytes that decode
//! to the same filter; an additions batch that decodes re-encodes to the
//! very same bytes (the decoder accepts only the canonical encoding).
//! Each input is also tried with its last 8 bytes replaced by the right
//! checksum, so mutated snapshots get past the checksum to the decoder's
//! last stage.
#![no_main]

use glados::core::filter::{decode_additions, encode_additions, Filter};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn with_checksum(data: &[u8]) -> Option<Vec<u8>> {
    let body = data.get(..data.len().checked_sub(8)?)?;
    let mut out = body.to_vec();
    out.extend_from_slice(Sha256::digest(body).get(..8)?);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    snapshot(data);
    if let Some(fixed) = with_checksum(data) {
        snapshot(&fixed);
    }
    additions(data);
});

fn snapshot(data: &[u8]) {
    if let Ok(f) = Filter::from_bytes(data) {
        let bytes = f.to_bytes();
        let g = Filter::from_bytes(&bytes).expect("re-encoded snapshot must decode");
        assert_eq!(g.header(), f.header());
        assert_eq!(g.partition_id(), f.partition_id());
        assert_eq!(g.bitmap_bytes(), f.bitmap_bytes());
        assert_eq!(g.count_ones(), f.count_ones());
        assert_eq!(g.to_bytes(), bytes, "encoding is not stable");
        // The compact (sparse when smaller) encoding decodes to the same.
        let c = Filter::from_bytes(&f.to_bytes_compact()).expect("compact snapshot must decode");
        assert_eq!(c.bitmap_bytes(), f.bitmap_bytes());
        assert_eq!(c.partition_id(), f.partition_id());
        // Queries on a decoded filter must not panic either.
        let mut digest = [0u8; 32];
        for (d, s) in digest.iter_mut().zip(data.iter().rev()) {
            *d = *s;
        }
        if f.covers(&digest) {
            let _ = f.contains(&digest);
            let _ = f.fp_rate_at(&digest);
        }
        let _ = f.fill_map(64);
        let _ = f.estimated_fp_rate();
        let _ = f.estimated_items();
        let _ = f.diff(&g);
    }
}

fn additions(data: &[u8]) {
    if let Ok(batch) = decode_additions(data) {
        assert!(
            batch.indices.windows(2).all(|w| w[0] < w[1]),
            "not ascending"
        );
        let again = encode_additions(batch.version, &batch.indices);
        assert_eq!(again, data, "decoded batch does not re-encode to its bytes");
    }
}
