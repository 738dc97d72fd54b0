//! ProviderId / UserId / Ssi parsing: never panics, and what parses
//! prints back to text that parses to the same value.
#![no_main]

use glados::core::ssi::{ProviderId, UserId};
use glados::core::Ssi;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = ProviderId::parse(text) {
        assert_eq!(ProviderId::parse(p.as_str()).as_ref(), Ok(&p));
    }
    if let Ok(u) = UserId::parse(text) {
        assert_eq!(UserId::parse(u.as_str()).as_ref(), Ok(&u));
    }
    if let Ok(s) = Ssi::parse(text) {
        let shown = s.to_string();
        assert_eq!(
            Ssi::parse(&shown).as_ref(),
            Ok(&s),
            "{text:?} shown as {shown:?}"
        );
        let rebuilt = Ssi::new(s.provider().clone(), s.user().clone());
        assert_eq!(rebuilt, s);
    }
});
