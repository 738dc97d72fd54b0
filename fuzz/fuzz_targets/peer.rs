//! Peer GP payloads that change mappings: claims (draft §10), strike
//! notices (§8.2.1) and the SII holder's claims (beyond GLADOS-00), as JSON
//! from a signed peer. Never panics; what
//! deserializes serializes back to itself; a claim is applied to a record
//! holding two local mappings, and a refused claim leaves it unchanged.
#![no_main]

use glados::core::holder::HolderClaim;
use glados::core::mapping::{Claim, SiiRecord, StrikeNotice, VerifiedBy};
use glados::core::ssi::{ProviderId, Ssi};
use glados::core::Sii;
use libfuzzer_sys::fuzz_target;

/// A record for `sii` with mappings of APs `a` (t=1000) and `b` (t=2000).
fn record(sii: &Sii) -> Option<SiiRecord> {
    let mut r = SiiRecord::new(sii.clone());
    for (name, t) in [("a", 1_000), ("b", 2_000)] {
        let ap = ProviderId::parse(name).ok()?;
        let ssi = Ssi::parse(&format!("{name}:user")).ok()?;
        r.create_verified(&ap, ssi, VerifiedBy::Sms, None, t).ok()?;
    }
    Some(r)
}

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes are this GP's clock, the rest the peer's JSON.
    let Some((now, json)) = data.split_first_chunk::<8>() else {
        return;
    };
    let now_ms = u64::from_le_bytes(*now);
    if let Ok(c) = serde_json::from_slice::<Claim>(json) {
        let again = serde_json::to_vec(&c).expect("serialize claim");
        assert_eq!(
            serde_json::from_slice::<Claim>(&again).ok().as_ref(),
            Some(&c)
        );
        if let Some(mut r) = record(&c.sii) {
            let before = r.clone();
            if r.apply_claim(&c, "gp-fuzz", now_ms).is_err() {
                assert_eq!(r, before, "a refused claim changed the record");
            }
        }
    }
    if let Ok(n) = serde_json::from_slice::<StrikeNotice>(json) {
        let again = serde_json::to_vec(&n).expect("serialize notice");
        assert_eq!(
            serde_json::from_slice::<StrikeNotice>(&again).ok().as_ref(),
            Some(&n)
        );
        let _ = n.id_is_valid();
        if let Some(mut r) = record(&n.sii) {
            let _ = r.accept_peer_strike(&n, now_ms);
        }
    }
    if let Ok(h) = serde_json::from_slice::<HolderClaim>(json) {
        let again = serde_json::to_vec(&h).expect("serialize holder claim");
        assert_eq!(
            serde_json::from_slice::<HolderClaim>(&again).ok().as_ref(),
            Some(&h)
        );
        if let Some(mut r) = record(&h.sii) {
            let before = r.clone();
            match r.apply_holder_claim(&h, now_ms) {
                Err(_) => assert_eq!(r, before, "a refused holder claim changed the record"),
                // Applying it again changes nothing more.
                Ok(_) => {
                    let once = r.clone();
                    let _ = r.apply_holder_claim(&h, now_ms);
                    assert_eq!(r.mappings(), once.mappings());
                    assert_eq!(r.is_opted_out(), once.is_opted_out());
                }
            }
        }
    }
});
