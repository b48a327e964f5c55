//! JSON text a byte word at a time, for the decoder's fast path and the output's strings: which
//! bytes of eight may end or break a plain JSON string.

/// Whether `bytes` can go between a JSON string's quotes as they are: no `"`, `\\` or control
/// character (the output's strings are short and nearly never need an escape).
#[inline]
pub fn plain_json_string(bytes: &[u8]) -> bool {
    // (no byte is marked falsely when none is special: see `special_string_bytes`)
    every_word(
        bytes,
        |w| special_string_bytes(w) == 0,
        |b| !(b == b'"' || b == b'\\' || b < 0x20),
    )
}

/// Whether every byte of `bytes` passes a per-byte test, taken eight bytes at a time by
/// `word_ok` (the last eight read again, overlapping, when the length is not a multiple of
/// eight) and by `byte_ok` for strings shorter than a word. `word_ok` must say what `byte_ok`
/// says of each of its bytes.
#[inline(always)]
pub fn every_word(bytes: &[u8], word_ok: impl Fn(u64) -> bool, byte_ok: impl Fn(u8) -> bool) -> bool {
    if bytes.len() < 8 {
        return bytes.iter().all(|&b| byte_ok(b));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if !word_ok(word(at)) {
            return false;
        }
        at += 8;
    }
    at == bytes.len() || word_ok(word(bytes.len() - 8))
}

/// The bytes of `word` (eight bytes of a string, the first in the lowest byte) that may end or
/// break a plain string: `"`, `\\` or a control character. Each such byte's high bit is set in
/// the result; bytes after the first such one may be marked falsely (a borrow carries upward),
/// bytes before it never are, so `trailing_zeros() / 8` is the first one's index.
#[inline(always)]
pub fn special_string_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_byte(word ^ (ONES * b'"' as u64));
    let backslash = zero_byte(word ^ (ONES * b'\\' as u64));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
}

/// Checks a test made of word tests against its byte-by-byte definition (`byte_ok`, which every
/// byte of a string must pass): every byte value at every place of strings up to 24 bytes long.
#[cfg(test)]
pub(crate) fn check_word_test(word_test: impl Fn(&[u8]) -> bool, byte_ok: impl Fn(u8) -> bool) {
    for len in 0..24usize {
        let base: Vec<u8> = (0..len).map(|k| b'#' + (k * 7 % 57) as u8).collect();
        assert!(base.iter().all(|&b| byte_ok(b)));
        assert!(word_test(&base), "{len} plain bytes");
        for at in 0..len {
            for byte in 0..=255u8 {
                let mut text = base.clone();
                text[at] = byte;
                assert_eq!(word_test(&text), byte_ok(byte), "byte {byte:#x} at {at} of {len}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_strings_a_word_at_a_time_are_the_byte_test() {
        check_word_test(plain_json_string, |b| !(b == b'"' || b == b'\\' || b < 0x20));
    }
}
