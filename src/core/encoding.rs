//! Small, strict text encodings the auth code needs: base64 (RFC 4648 §4
//! standard and §5 URL-safe), lowercase hex, and
//! `application/x-www-form-urlencoded` bodies.
//!
//! Local rather than a crate: a few dozen lines, no allocation surprises,
//! and the decoders are strict (they reject anything they would not have
//! produced, apart from optional padding), which is what token and secret
//! parsing wants. Nothing here panics on any input.

use core::fmt;

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Input that is not valid in the expected encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A character outside the alphabet, at this byte offset.
    InvalidCharacter { at: usize },
    /// The length cannot come from this encoding (e.g. 1 mod 4 for base64).
    InvalidLength,
    /// Bits after the last full byte are not zero (a non-canonical form).
    NonCanonical,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidCharacter { at } => write!(f, "invalid character at offset {at}"),
            DecodeError::InvalidLength => write!(f, "invalid length"),
            DecodeError::NonCanonical => write!(f, "non-canonical trailing bits"),
        }
    }
}

fn encode_with(alphabet: &[u8; 64], bytes: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                let idx = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(alphabet[idx]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn decode_with(alphabet: &[u8; 64], text: &str) -> Result<Vec<u8>, DecodeError> {
    let raw = text.as_bytes();
    // Optional padding: strip up to two '=' at the end, only if the padded
    // length is a multiple of 4.
    let body = if raw.ends_with(b"=") {
        if !raw.len().is_multiple_of(4) {
            return Err(DecodeError::InvalidLength);
        }
        let trimmed = raw.strip_suffix(b"==").or_else(|| raw.strip_suffix(b"="));
        trimmed.unwrap_or(raw)
    } else {
        raw
    };
    if body.len() % 4 == 1 {
        return Err(DecodeError::InvalidLength);
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for (at, &c) in body.iter().enumerate() {
        let v = alphabet
            .iter()
            .position(|&a| a == c)
            .ok_or(DecodeError::InvalidCharacter { at })? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err(DecodeError::NonCanonical);
    }
    Ok(out)
}

/// Standard base64 with padding (RFC 4648 §4), e.g. for `whsec_` secrets.
pub fn b64_encode(bytes: &[u8]) -> String {
    encode_with(STD, bytes, true)
}

/// Decodes standard base64; padding is optional.
pub fn b64_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    decode_with(STD, text)
}

/// URL-safe base64 without padding (RFC 4648 §5), for tokens and secrets
/// that travel in headers and form bodies.
pub fn b64url_encode(bytes: &[u8]) -> String {
    encode_with(URL, bytes, false)
}

/// Decodes URL-safe base64; padding is optional.
pub fn b64url_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    decode_with(URL, text)
}

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Decodes hex of either case.
pub fn hex_decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let raw = text.as_bytes();
    if !raw.len().is_multiple_of(2) {
        return Err(DecodeError::InvalidLength);
    }
    let nibble = |at: usize| -> Result<u8, DecodeError> {
        let c = raw.get(at).copied().unwrap_or(b'?');
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(DecodeError::InvalidCharacter { at })
    };
    (0..raw.len() / 2)
        .map(|i| Ok((nibble(2 * i)? << 4) | nibble(2 * i + 1)?))
        .collect()
}

/// Decodes one `application/x-www-form-urlencoded` name or value
/// (WHATWG URL §5.1: `+` is a space, `%XX` a byte; a `%` not followed by two
/// hex digits stays as it is). Fails only if the bytes are not UTF-8.
pub fn form_decode(text: &str) -> Result<String, DecodeError> {
    let raw = text.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&h| (h as char).to_digit(16));
                let lo = raw.get(i + 2).and_then(|&l| (l as char).to_digit(16));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(((hi << 4) | lo) as u8);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|e| DecodeError::InvalidCharacter {
        at: e.utf8_error().valid_up_to(),
    })
}

/// Parses a form body into (name, value) pairs in order, keeping repeats
/// (the caller decides what a repeated name means).
pub fn parse_form(body: &str) -> Result<Vec<(String, String)>, DecodeError> {
    body.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((form_decode(name)?, form_decode(value)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        // RFC 4648 §10 test vectors.
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(b64_encode(plain.as_bytes()), enc);
            assert_eq!(b64_decode(enc).unwrap(), plain.as_bytes());
            assert_eq!(
                b64_decode(enc.trim_end_matches('=')).unwrap(),
                plain.as_bytes()
            );
            assert_eq!(b64url_encode(plain.as_bytes()), enc.trim_end_matches('='));
        }
    }

    #[test]
    fn base64_alphabets_differ_where_they_should() {
        let bytes = [0xfb, 0xff, 0xbf];
        assert_eq!(b64_encode(&bytes), "+/+/");
        assert_eq!(b64url_encode(&bytes), "-_-_");
        assert!(b64_decode("-_-_").is_err());
        assert!(b64url_decode("+/+/").is_err());
    }

    #[test]
    fn base64_rejects_garbage() {
        assert_eq!(b64url_decode("a"), Err(DecodeError::InvalidLength));
        assert_eq!(
            b64url_decode("ab!d"),
            Err(DecodeError::InvalidCharacter { at: 2 })
        );
        // "Zh" would decode to 'f' only with non-zero trailing bits.
        assert_eq!(b64url_decode("Zh"), Err(DecodeError::NonCanonical));
        assert_eq!(b64_decode("Zg="), Err(DecodeError::InvalidLength));
        assert!(b64_decode("Zg=a").is_err());
    }

    #[test]
    fn base64_round_trips_all_lengths() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            let d = &data[..n];
            assert_eq!(b64_decode(&b64_encode(d)).unwrap(), d);
            assert_eq!(b64url_decode(&b64url_encode(d)).unwrap(), d);
        }
    }

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(hex_encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff").unwrap(), vec![0x00, 0xab, 0xff]);
        assert_eq!(hex_decode("abc"), Err(DecodeError::InvalidLength));
        assert_eq!(
            hex_decode("zz"),
            Err(DecodeError::InvalidCharacter { at: 0 })
        );
    }

    #[test]
    fn form_bodies() {
        let form =
            parse_form("grant_type=client_credentials&client_id=a%3Ab&x=1+2&&empty=&flag").unwrap();
        assert_eq!(
            form,
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("client_id".into(), "a:b".into()),
                ("x".into(), "1 2".into()),
                ("empty".into(), "".into()),
                ("flag".into(), "".into()),
            ]
        );
        assert_eq!(form_decode("100%").unwrap(), "100%");
        assert_eq!(form_decode("%e2%82%ac").unwrap(), "€");
        assert!(form_decode("%ff").is_err(), "not UTF-8");
    }
}
