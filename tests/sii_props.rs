//! Property tests for SII/SSI normalization: the canonical form is what the
//! routing filter hashes (draft §9), so it must be stable, unique per
//! person, and parsing must never panic on anything a client sends.

use glados::core::country_codes::PERSONAL;
use glados::core::sii::{Sii, SiiError, SiiKind};
use glados::core::ssi::{ProviderId, Ssi, SsiError, UserId};
use proptest::prelude::*;
use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};
use serde::de::IntoDeserializer;
use serde::Deserialize;

/// A valid E.164 number as digits (no '+'): assigned code + subscriber part.
fn e164_digits() -> impl Strategy<Value = String> {
    let nanp = "[2-9][0-9]{2}[2-9][0-9]{6}".prop_map(|s| format!("1{s}"));
    let ru = "[0-9]{10}".prop_map(|s| format!("7{s}"));
    let other = prop::sample::select(
        PERSONAL
            .iter()
            .copied()
            .filter(|&c| c != 1 && c != 7)
            .collect::<Vec<_>>(),
    )
    .prop_flat_map(|cc| {
        let cc = cc.to_string();
        let max = 15 - cc.len();
        (Just(cc), prop::collection::vec(0u8..10, 4..=max))
    })
    .prop_map(|(cc, sub)| {
        let sub: String = sub.iter().map(|d| char::from(b'0' + d)).collect();
        format!("{cc}{sub}")
    });
    prop_oneof![nanp, ru, other]
}

/// Separators people paste between digit groups. Parentheses are left out
/// on purpose: "(0)" is read as a trunk prefix and dropped.
fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", "", "", " ", "-", ".", "/", "\u{a0}", "\u{2013}", "  ",
    ])
}

/// One spelling of `digits`: an international prefix and separators.
fn spell_phone(digits: String) -> impl Strategy<Value = String> {
    let n = digits.len();
    (
        prop::sample::select(vec!["+", "00", "tel:+", "TEL:+", " +", "\u{ff0b}"]),
        prop::collection::vec(separator(), n),
        prop::sample::select(vec!["", " ", ";ext=12", ";isub=1"]),
    )
        .prop_map(move |(prefix, seps, suffix)| {
            let mut s = prefix.to_string();
            for (d, sep) in digits.chars().zip(seps) {
                s.push(d);
                s.push_str(sep);
            }
            // tel: parameters only make sense on a tel: URI.
            if prefix.to_ascii_lowercase().starts_with("tel:") || !suffix.starts_with(';') {
                s.push_str(suffix);
            }
            s
        })
}

fn local_part() -> impl Strategy<Value = String> {
    "[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-z0-9_+-]{1,8}){0,2}"
}

fn domain() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?){0,2}\\.[a-z]{2,6}"
}

/// Randomly uppercases ASCII letters.
fn recase(s: &str, mask: &[bool]) -> String {
    s.chars()
        .zip(mask.iter().cycle())
        .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_strings(s in any::<String>()) {
        let _ = Sii::parse(&s);
        let _ = Ssi::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_sii_like_strings(
        s in "[+0-9 ().@a-zA-Z:;_\\-\u{a0}\u{ff10}-\u{ff19}éü例。\"<>\\[\\]]{0,40}"
    ) {
        let _ = Sii::parse(&s);
    }

    #[test]
    fn normalizing_is_idempotent(s in prop_oneof![
        e164_digits().prop_flat_map(spell_phone),
        (local_part(), domain(), "[A-Za-zÄÜ]{0,3}").prop_map(|(l, d, x)| format!(" {l}@{x}{d} ")),
        "[+0-9 ().@a-zA-Z\\-ü]{0,30}",
    ]) {
        if let Ok(sii) = Sii::parse(&s) {
            let again = Sii::parse(sii.as_str()).unwrap();
            prop_assert_eq!(&again, &sii);
            prop_assert_eq!(again.hash(), sii.hash());
            prop_assert!(sii.as_str().is_ascii());
        }
    }

    #[test]
    fn phone_spellings_agree(
        (digits, a, b) in e164_digits().prop_flat_map(|d| {
            (Just(d.clone()), spell_phone(d.clone()), spell_phone(d))
        })
    ) {
        let sa = Sii::parse(&a).map_err(|e| TestCaseError::fail(format!("{a:?}: {e}")))?;
        let sb = Sii::parse(&b).map_err(|e| TestCaseError::fail(format!("{b:?}: {e}")))?;
        prop_assert_eq!(sa.as_str(), format!("+{digits}"));
        prop_assert_eq!(&sa, &sb);
        prop_assert_eq!(sa.kind(), SiiKind::Phone);
        prop_assert_eq!(Sii::parse(sa.as_str()).unwrap(), sa);
    }

    #[test]
    fn phones_without_international_prefix_are_rejected(digits in "[1-9][0-9]{6,14}") {
        prop_assert_eq!(Sii::parse(&digits), Err(SiiError::PhoneMissingCountryCode));
    }

    #[test]
    fn phones_over_15_digits_are_rejected(digits in "[1-9][0-9]{15,30}") {
        let n = digits.len();
        prop_assert_eq!(Sii::parse(&format!("+{digits}")), Err(SiiError::PhoneTooLong { digits: n }));
    }

    #[test]
    fn email_spellings_agree(
        local in local_part(),
        dom in domain(),
        mask in prop::collection::vec(any::<bool>(), 1..8),
        pad in "[ \t]{0,2}",
    ) {
        let canonical = format!("{local}@{dom}");
        let spelled = format!("{pad}{}{pad}", recase(&canonical, &mask));
        let a = Sii::parse(&canonical).map_err(|e| TestCaseError::fail(format!("{canonical:?}: {e}")))?;
        let b = Sii::parse(&spelled).map_err(|e| TestCaseError::fail(format!("{spelled:?}: {e}")))?;
        prop_assert_eq!(a.as_str(), canonical.as_str());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.kind(), SiiKind::Email);
    }

    #[test]
    fn idn_domains_fold_case_before_encoding(local in "[a-z]{1,8}", label in "[a-zäöüéß]{1,12}") {
        let lower = Sii::parse(&format!("{local}@{label}.de")).unwrap();
        let upper = Sii::parse(&format!("{local}@{}.DE", label.to_uppercase())).ok();
        // ß uppercases to "SS", a different label; compare only exact round trips.
        if label.to_uppercase().to_lowercase() == label {
            prop_assert_eq!(upper.as_ref(), Some(&lower));
        }
        prop_assert!(lower.as_str().is_ascii());
        prop_assert_eq!(lower.as_str().starts_with(&format!("{local}@xn--")),
            !label.is_ascii());
    }

    #[test]
    fn ssi_string_form_round_trips(
        provider in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,5})?",
        user in "[!-~]{1,40}",
    ) {
        let ssi = Ssi::new(ProviderId::parse(&provider).unwrap(), UserId::parse(&user).unwrap());
        let parsed = Ssi::parse(&ssi.to_string()).unwrap();
        prop_assert_eq!(parsed.provider().as_str(), provider.as_str());
        prop_assert_eq!(parsed.user().as_str(), user.as_str());
        prop_assert_eq!(parsed, ssi);
    }
}

#[test]
fn sii_deserialize_normalizes_and_validates() {
    let d: StrDeserializer<DeError> = "+1 (415) 555-0100".into_deserializer();
    assert_eq!(Sii::deserialize(d).unwrap().as_str(), "+14155550100");

    let d: StrDeserializer<DeError> = "020 7946 0958".into_deserializer();
    let err = Sii::deserialize(d).unwrap_err().to_string();
    assert!(err.contains("no country code"), "{err}");

    let d: StrDeserializer<DeError> = "Bob@Example.org".into_deserializer();
    assert_eq!(Sii::deserialize(d).unwrap().as_str(), "bob@example.org");
}

#[test]
fn sii_serializes_as_canonical_string() {
    let s = Sii::parse(" Bob@EXAMPLE.org").unwrap();
    assert_eq!(String::from(s), "bob@example.org");
}

#[test]
fn ssi_deserializes_from_object_and_validates_parts() {
    let ok = MapDeserializer::<_, DeError>::new(
        [("provider", "signal.org"), ("user", "u:1")].into_iter(),
    );
    let ssi = Ssi::deserialize(ok).unwrap();
    assert_eq!(ssi.to_string(), "signal.org:u:1");

    let bad =
        MapDeserializer::<_, DeError>::new([("provider", "Signal"), ("user", "u1")].into_iter());
    let err = Ssi::deserialize(bad).unwrap_err().to_string();
    assert!(err.contains("provider id contains 'S'"), "{err}");

    let bad_user = MapDeserializer::<_, DeError>::new(
        [("provider", "signal"), ("user", "has space")].into_iter(),
    );
    assert!(Ssi::deserialize(bad_user).is_err());

    let d: StrDeserializer<DeError> = "".into_deserializer();
    assert!(UserId::deserialize(d).is_err());
}

#[test]
fn ssi_error_is_a_problem() {
    use glados::core::Problem;
    let e: SsiError = Ssi::parse("nocolon").unwrap_err();
    assert_eq!(
        (e.slug(), e.title(), e.status()),
        ("invalid-ssi", "Invalid SSI", 400)
    );
}
