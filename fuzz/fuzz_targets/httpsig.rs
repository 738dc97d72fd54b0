//! RFC 9421 headers: Signature-Input and Signature (structured-field
//! dictionaries), Content-Digest, and a whole peer-request verification
//! with fuzzed headers. Never panics; parsed signature parameters
//! serialize to a member that parses back to the same parameters.
#![no_main]

use glados::core::httpsig::{
    check_content_digest, parse_signature, parse_signature_input, signature_base, verify_request,
    PlainRequest, LABEL,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_618_884_473;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Two headers in one input: "<signature-input>\n<signature>".
    let (input, sig) = text.split_once('\n').unwrap_or((text, ""));
    for label in [LABEL, "sig1", "sig-b26"] {
        if let Ok(Some(params)) = parse_signature_input(input, label) {
            let member = format!("{label}={}", params.serialize());
            let again = parse_signature_input(&member, label)
                .unwrap_or_else(|e| panic!("re-serialized {member:?} does not parse: {e}"));
            assert_eq!(again.as_ref(), Some(&params), "{member:?}");
            let _ = params.created();
            let _ = params.expires();
            let req = PlainRequest {
                method: "POST".into(),
                authority: "gp.example".into(),
                path: "/v1/peer/query".into(),
                query: None,
                headers: vec![("content-type".into(), "application/json".into())],
            };
            let _ = signature_base(&req, &params);
        }
        let _ = parse_signature(sig, label);
    }
    let _ = check_content_digest(input, b"{\"hello\": \"world\"}");
    let req = PlainRequest {
        method: "POST".into(),
        authority: "gp.example".into(),
        path: "/v1/peer/query".into(),
        query: Some("a=1".into()),
        headers: vec![
            ("signature-input".into(), input.into()),
            ("signature".into(), sig.into()),
            (
                "content-digest".into(),
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:".into(),
            ),
        ],
    };
    let _ = verify_request(&req, true, NOW, 300, |_| Some([0x11; 32]));
});
