//! Bulk upload (NDJSON): `parse_line` on any line and the `LineSplitter`
//! on any stream. Never panics; a parsed line re-serialized as JSON parses
//! to the same line; the lines the splitter yields do not depend on how
//! the stream is cut into chunks.
#![no_main]

use glados::core::bulk::{parse_line, LineSplitter};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8], cut: usize) -> Vec<(u32, Result<Vec<u8>, String>)> {
    let mut out = Vec::new();
    let mut s = LineSplitter::new();
    let mut f = |n: u32, r: Result<&[u8], _>| {
        out.push((n, r.map(<[u8]>::to_vec).map_err(|e| format!("{e:?}"))))
    };
    let cut = cut.min(data.len());
    let (a, b) = data.split_at(cut);
    s.push(a, &mut f);
    // A chunk of one byte at a time for the rest.
    for byte in b.chunks(1) {
        s.push(byte, &mut f);
    }
    s.finish(&mut f);
    assert_eq!(s.lines() as usize, out.len());
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(line)) = parse_line(data) {
        let mut json = serde_json::json!({ "sii": line.sii.as_str(), "user": line.user.as_str() });
        if let Some(meta) = &line.meta {
            json["tags"] = serde_json::json!(meta.tags);
            if let Some(label) = &meta.label {
                json["label"] = serde_json::json!(label);
            }
        }
        let again = parse_line(json.to_string().as_bytes());
        assert_eq!(again.as_ref().ok().and_then(Option::as_ref), Some(&line));
    }
    let cut = data.first().map_or(0, |&b| usize::from(b));
    let whole = split(data, data.len());
    let pieces = split(data, cut);
    assert_eq!(whole, pieces, "line splitting depends on chunking");
    for (_, line) in whole {
        if let Ok(l) = line {
            let _ = parse_line(&l);
        }
    }
});
