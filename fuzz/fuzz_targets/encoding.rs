//! base64, base64url, hex and form decoding: never panics; what decodes
//! re-encodes and decodes to the same bytes; any bytes survive
//! encode-then-decode.
#![no_main]

use glados::core::encoding::{
    b64_decode, b64_encode, b64url_decode, b64url_encode, form_decode, hex_decode, hex_encode,
    parse_form,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(b64_decode(&b64_encode(data)).as_deref(), Ok(data));
    assert_eq!(b64url_decode(&b64url_encode(data)).as_deref(), Ok(data));
    assert_eq!(hex_decode(&hex_encode(data)).as_deref(), Ok(data));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = b64_decode(text) {
        assert_eq!(b64_decode(&b64_encode(&bytes)), Ok(bytes));
    }
    if let Ok(bytes) = b64url_decode(text) {
        assert_eq!(b64url_decode(&b64url_encode(&bytes)), Ok(bytes));
    }
    if let Ok(bytes) = hex_decode(text) {
        assert!(
            hex_encode(&bytes).eq_ignore_ascii_case(text),
            "hex {text:?}"
        );
    }
    if let Ok(s) = form_decode(text) {
        // Decoding never grows the text.
        assert!(s.len() <= text.len());
    }
    if let Ok(pairs) = parse_form(text) {
        assert!(pairs.len() <= text.len());
    }
});
