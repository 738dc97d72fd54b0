//! ProviderId / UserId / Ssi parsing, and a mapping's tags and label
//! (beyond GLADOS-00): never panics, and what parses prints back to text
//! that parses to the same value.
#![no_main]

use glados::core::ssi::{ProviderId, UserId};
use glados::core::tags::{Label, MappingMeta, Tags};
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
    if let Ok(l) = Label::parse(text) {
        assert_eq!(Label::parse(l.as_str()).as_ref(), Ok(&l));
        assert!(!l.as_str().chars().any(char::is_control));
    }
    let names: Vec<&str> = text.split(',').collect();
    if let Ok(t) = Tags::parse(&names) {
        let json = serde_json::to_string(&t).expect("tags serialize");
        assert_eq!(serde_json::from_str::<Tags>(&json).ok().as_ref(), Some(&t));
    }
    if let Ok(m) = serde_json::from_slice::<MappingMeta>(data) {
        let json = serde_json::to_vec(&m).expect("meta serializes");
        assert_eq!(serde_json::from_slice::<MappingMeta>(&json).ok(), Some(m));
    }
});
