//! ITU-T E.164 country codes, as a compact embedded table.
//!
//! Why embedded and hand-kept: the full `phonenumber` crate (libphonenumber
//! metadata) adds ~1.8 MB to the wasm bundle; validating the country code
//! catches most pasting mistakes for a few hundred bytes.
//!
//! Source: "List of ITU-T Recommendation E.164 assigned country codes"
//! (ITU-T Operational Bulletin, complement to E.164). Country codes form a
//! prefix-free set: at most one of the 1-, 2- and 3-digit prefixes of a
//! number is an assigned code, which is what makes [`lookup`] unambiguous.
//!
//! What is deliberately NOT in [`PERSONAL`] although the ITU lists it:
//! - spare/unassigned codes (e.g. 0, 210, 214, 259, 280–289, 292–296, 422,
//!   424–429, 671, 684, 693–699, 801–807, 83x, 851, 854, 857–859, 871–877,
//!   884, 885, 887, 889, 89x, 969, 978, 990, 999);
//! - +379 (reserved for Vatican City, not in service: the Vatican uses
//!   +39 06 698) and +388 (former shared European code, ETNS withdrawn);
//! - non-personal global services, see [`SERVICES`]: an SII is "a mobile
//!   phone number" (draft §2), and those numbers cannot receive the
//!   verification SMS of draft §8.2 nor belong to one person.
//!
//! Global services that do reach a person's handset are accepted:
//! +870 (Inmarsat), +881 (global mobile satellite: Iridium, Globalstar),
//! +882 and +883 (international networks, e.g. Thuraya, roaming SIMs).

/// Assigned country codes whose numbers can belong to a person, sorted.
///
/// `u16` keeps the table at ~450 bytes; binary search keeps lookup O(log n).
pub const PERSONAL: &[u16] = &[
    1, // NANP: US, Canada, much of the Caribbean (+1 671 Guam, +1 684 Am. Samoa)
    7, // Russia, Kazakhstan
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, //
    51, 52, 53, 54, 55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, //
    81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98, //
    211, 212, 213, 216, 218, // 210, 214, 215, 217, 219 spare
    220, 221, 222, 223, 224, 225, 226, 227, 228, 229, //
    230, 231, 232, 233, 234, 235, 236, 237, 238, 239, //
    240, 241, 242, 243, 244, 245, 246, 247, 248, 249, //
    250, 251, 252, 253, 254, 255, 256, 257, 258, // 259 spare
    260, 261, 262, 263, 264, 265, 266, 267, 268, 269, //
    // 280-289 spare
    290, 291, 297, 298, 299, // 292-296 spare
    350, 351, 352, 353, 354, 355, 356, 357, 358, 359, //
    370, 371, 372, 373, 374, 375, 376, 377, 378, // 379 reserved
    380, 381, 382, 383, 385, 386, 387, 389, // 384 spare, 388 withdrawn
    420, 421, 423, // 422, 424-429 spare
    500, 501, 502, 503, 504, 505, 506, 507, 508, 509, //
    590, 591, 592, 593, 594, 595, 596, 597, 598, 599, //
    670, 672, 673, 674, 675, 676, 677, 678, 679, // 671 spare (now +1 671)
    680, 681, 682, 683, 685, 686, 687, 688, 689, // 684 spare (now +1 684)
    690, 691, 692, // 693-699 spare
    850, 852, 853, 855, 856, //
    870, // Inmarsat
    880, 881, 882, 883, 886, // 881 satellite, 882/883 international networks
    960, 961, 962, 963, 964, 965, 966, 967, 968, //
    970, 971, 972, 973, 974, 975, 976, 977, //
    992, 993, 994, 995, 996, //
    997, // Kazakhstan, assigned 2023, migrating from +7
    998,
];

/// Assigned global-service codes that are not personal phone numbers, with
/// the ITU's name for them, so the error can say what the user typed.
pub const SERVICES: &[(u16, &str)] = &[
    (800, "International Freephone"),
    (808, "International Shared Cost Service"),
    (878, "Universal Personal Telecommunications (reserved)"),
    (888, "OCHA disaster relief telecommunications"),
    (979, "International Premium Rate Service"),
    (991, "ITPCS trial service"),
];

/// How a number's leading digits resolve against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountryCode {
    /// An assigned code for personal numbers: the code and its digit count.
    Personal { code: u16, len: usize },
    /// An assigned global service that is not a person's number.
    Service { code: u16, name: &'static str },
    /// No assigned code is a prefix of the digits.
    Unassigned,
}

/// Finds the country code at the start of `digits` (ASCII digits only,
/// without the `+`). Never panics: non-digits simply match nothing.
pub fn lookup(digits: &str) -> CountryCode {
    let mut code: u16 = 0;
    for (i, b) in digits.bytes().take(3).enumerate() {
        if !b.is_ascii_digit() {
            break;
        }
        code = code * 10 + u16::from(b - b'0');
        // A leading 0 is never a country code (E.164: "0" is reserved).
        if code == 0 {
            return CountryCode::Unassigned;
        }
        if PERSONAL.binary_search(&code).is_ok() {
            return CountryCode::Personal { code, len: i + 1 };
        }
        if let Some(&(c, name)) = SERVICES.iter().find(|(c, _)| *c == code) {
            return CountryCode::Service { code: c, name };
        }
    }
    CountryCode::Unassigned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(PERSONAL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn table_is_prefix_free() {
        // E.164 country codes never prefix each other; lookup relies on it.
        let all: Vec<u16> = PERSONAL
            .iter()
            .copied()
            .chain(SERVICES.iter().map(|s| s.0))
            .collect();
        for &a in &all {
            for &b in &all {
                if a != b {
                    let (sa, sb) = (a.to_string(), b.to_string());
                    assert!(!sb.starts_with(&sa), "{a} is a prefix of {b}");
                }
            }
        }
    }

    #[test]
    fn known_codes_resolve() {
        assert_eq!(
            lookup("14155550100"),
            CountryCode::Personal { code: 1, len: 1 }
        );
        assert_eq!(
            lookup("442079460958"),
            CountryCode::Personal { code: 44, len: 2 }
        );
        assert_eq!(
            lookup("35312345678"),
            CountryCode::Personal { code: 353, len: 3 }
        );
        assert_eq!(
            lookup("998901234567"),
            CountryCode::Personal { code: 998, len: 3 }
        );
        assert_eq!(
            lookup("8816123456"),
            CountryCode::Personal { code: 881, len: 3 }
        );
    }

    #[test]
    fn unassigned_and_reserved_codes_do_not_resolve() {
        for d in [
            "0123456",
            "2812345678",
            "2591234567",
            "3791234567",
            "6711234567",
        ] {
            assert_eq!(lookup(d), CountryCode::Unassigned, "{d}");
        }
        assert_eq!(lookup(""), CountryCode::Unassigned);
        assert_eq!(lookup("2"), CountryCode::Unassigned);
    }

    #[test]
    fn services_are_named() {
        assert!(matches!(
            lookup("80012345678"),
            CountryCode::Service { code: 800, .. }
        ));
    }
}
