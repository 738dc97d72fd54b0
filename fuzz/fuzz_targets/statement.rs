//! Signed mapping statements and published key sets (issue 16), as an AP
//! gets them from GPs: compact JWS text and JWK Set JSON. Never panics;
//! what reads as a statement is canonical (its claims re-sign to a
//! statement that reads the same); claims that deserialize sign and
//! verify; a fuzzed statement never verifies under a key that did not
//! sign it.
#![no_main]

use glados::core::statement::{self, Claims, Expect, StatementKey};
use glados::core::Sii;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = StatementKey::from_seed(&[9; 32]);
    let sii = Sii::parse("+14155550100").expect("a valid SII");
    let keys = |_: &str, kid: &str| (kid == key.kid()).then(|| key.public());
    let expect = |now_s| Expect {
        sii: &sii,
        now_s,
        nonce: None,
        max_age_s: None,
    };
    let _ = statement::parse_jwks(data);
    let _ = statement::parse_key_list(&String::from_utf8_lossy(data));
    if let Ok(text) = core::str::from_utf8(data) {
        // Arbitrary text: read and verify must refuse without panicking;
        // nothing fuzzed carries a valid signature of this key.
        if let Ok(u) = statement::read(text) {
            let again = key.sign(&u.claims).expect("claims that read sign");
            let back = statement::read(&again).expect("a signed statement reads");
            assert_eq!(back.claims, u.claims);
        }
        assert!(statement::verify(text, &expect(0), keys).is_err());
    }
    // Arbitrary claims JSON: signed by the key, read back equal, verified
    // up to what the claims themselves decide (SII, time, nonce).
    if let Ok(c) = serde_json::from_slice::<Claims>(data) {
        let Ok(s) = key.sign(&c) else {
            return;
        };
        match statement::read(&s) {
            Ok(u) => assert_eq!(u.claims, c),
            Err(e) => assert!(
                matches!(e, statement::StatementError::UnsupportedVersion(_) | statement::StatementError::TooLong),
                "a signed statement did not read: {e}"
            ),
        }
        let _ = statement::verify(&s, &expect(c.iat), keys);
    }
});
