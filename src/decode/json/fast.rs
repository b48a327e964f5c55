//! The schema-driven fast path of the JSON decoder: one pass over the bytes of a flat object,
//! matching each key against the keys the pipeline declares (device, event time, arrival time,
//! fields) and reading only their values — numbers straight to `f64` — while every other value
//! is only checked and skipped. No `serde_json::Value`, no allocation: the device id is borrowed
//! from the payload.
//!
//! It accepts only what it can read exactly as the serde path ([`super::decode_serde`]) reads it,
//! and declines (returns `None`) everything else, which then takes the serde path: non-ASCII
//! bytes anywhere, escapes or control characters in a string, nested objects or arrays, a key
//! given twice, a value of the wrong type, a device id that is not a string, an event or arrival
//! time that is not an integer of at most 18 digits or an escape-free string, `-0` as a time,
//! more entries than `max_fields`, and any syntax error. So the errors, and their messages, are
//! always the serde path's. Producers write readings as flat ASCII objects, which take this path.

use crate::decode::{Decoder, same_bytes};
use crate::model::json_text::special_string_bytes;
use crate::operators::{ABSENT, Reading};
use crate::spec::FieldType;

/// What the fast path found besides the values (which it writes into the caller's reading).
pub(super) struct Fast<'a> {
    /// Bit `slot` set: the field was present (and not `null`).
    pub seen: u64,
    pub device: Option<&'a str>,
    pub time: Option<i64>,
    /// A broken arrival time reads as none (the source's time stands in for it).
    pub arrival: Option<i64>,
}

/// Reads `payload` as a flat object of the declared keys into `reading` (its values, every
/// other part reset), or declines (`reading` is then left in no particular state). An event
/// time it cannot convert is declined too: the serde path says why.
#[inline]
pub(super) fn decode<'a>(
    dec: &Decoder,
    payload: &'a [u8],
    reading: &mut Reading,
    differing: &mut DifferingKeyOrders,
) -> Option<Fast<'a>> {
    if !all_ascii(payload) {
        return None;
    }
    let mut p = Cursor { b: payload, i: 0 };
    p.ws();
    p.eat(b'{')?;
    reading.ts = 0;
    reading.arrival = 0;
    reading.out_of_range = 0;
    reading.suspect = 0;
    if reading.values.len() == dec.slots {
        reading.values.fill(ABSENT);
    } else {
        reading.values.clear();
        reading.values.resize(dec.slots, ABSENT);
    }
    let mut found = Fast {
        seen: 0,
        device: None,
        time: None,
        arrival: None,
    };
    // bit 63: device, 62: time, 61: arrival; fields by their index (at most 61 declared fields
    // take this path)
    if dec.fields.len() > 61 {
        return None;
    }
    let mut keys_seen = 0u64;
    let mut entries = 0usize;
    // the keys expected next, in the order of the first reading read (see [`KeyOrder`])
    let learned = dec.key_order.get();
    let mut expected: &[ExpectedKey] = learned.map_or(&[], |order| &order.keys);
    // the learned order named another key than the reading has next
    let mut diverged = false;
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            entries += 1;
            if entries > dec.max_fields {
                return None;
            }
            let key = match expected.split_first() {
                Some((next, rest)) if next.opens(payload, p.i) => {
                    p.i += next.len;
                    expected = rest;
                    next.key
                }
                _ => {
                    // a reading of another shape: the rest of it key by key
                    diverged |= !expected.is_empty();
                    expected = &[];
                    let key = p.string()?;
                    p.ws();
                    p.eat(b':')?;
                    classify(dec, key)
                }
            };
            p.ws();
            match key {
                Key::Field(index) => {
                    let bit = 1u64 << index;
                    if keys_seen & bit != 0 {
                        return None;
                    }
                    keys_seen |= bit;
                    let field = &dec.fields[index];
                    let value = match (p.peek()?, field.spec.kind) {
                        (b'n', _) => {
                            p.literal(b"null")?;
                            None
                        }
                        (b't', FieldType::Bool) => {
                            p.literal(b"true")?;
                            Some(1.0)
                        }
                        (b'f', FieldType::Bool) => {
                            p.literal(b"false")?;
                            Some(0.0)
                        }
                        (b'-' | b'0'..=b'9', FieldType::Float | FieldType::Int) => Some(p.number()?.to_f64()?),
                        _ => return None,
                    };
                    if let Some(x) = value {
                        reading.values[field.slot] = x;
                        found.seen |= 1u64 << field.slot;
                    }
                }
                Key::Device => {
                    if keys_seen & (1 << 63) != 0 {
                        return None;
                    }
                    keys_seen |= 1 << 63;
                    let id = p.string()?;
                    // ASCII checked above
                    debug_assert!(id.is_ascii());
                    // SAFETY: the whole payload was checked to be ASCII on entry, and ASCII is
                    // UTF-8 (`from_utf8` here was 2–4 % of a run).
                    found.device = Some(unsafe { std::str::from_utf8_unchecked(id) });
                }
                k @ (Key::Time | Key::Arrival) => {
                    let is_time = matches!(k, Key::Time);
                    let bit = if is_time { 1u64 << 62 } else { 1u64 << 61 };
                    if keys_seen & bit != 0 {
                        return None;
                    }
                    keys_seen |= bit;
                    let name = if is_time {
                        dec.time_field.as_deref()
                    } else {
                        dec.arrival_field.as_deref()
                    }
                    .unwrap_or("");
                    let value = match p.peek()? {
                        b'"' => {
                            let text = std::str::from_utf8(p.string()?).ok()?;
                            if is_time {
                                dec.time_from_text(name, text)
                            } else {
                                dec.arrival_from(name, 0.0, None, Some(text))
                            }
                        }
                        b'-' | b'0'..=b'9' => {
                            let i = p.number()?.integer()?;
                            if is_time {
                                dec.time_from_number(name, i as f64, Some(i))
                            } else {
                                dec.arrival_from(name, i as f64, Some(i), None)
                            }
                        }
                        _ => return None,
                    };
                    if is_time {
                        found.time = Some(value.ok()?);
                    } else {
                        found.arrival = value.ok();
                    }
                }
                Key::Other => p.skip_scalar()?,
            }
            p.ws();
            match p.next()? {
                b',' => p.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    if p.i != payload.len() {
        return None;
    }
    match learned {
        None => learn_key_order(dec, payload),
        Some(_) if diverged => {
            differing.in_a_row += 1;
            if differing.in_a_row >= RELEARN_AFTER {
                differing.in_a_row = 0;
                if dec.key_order.may_learn() {
                    learn_key_order(dec, payload);
                }
            }
        }
        Some(_) => differing.in_a_row = 0,
    }
    Some(found)
}

/// The keys of the first reading the fast path reads, in their order, each as the bytes that
/// open its entry (`"key":`) and what the key is. Producers write every reading with the same
/// keys in the same order, so the next reading's entries are matched against these bytes (one or
/// two word compares each) instead of each key being scanned as a string and looked up among the
/// declared keys: a quarter of the fast path's work on aq1's readings. A reading of another
/// shape is read key by key from its first entry that differs; the values, and so the results,
/// are the same either way.
#[derive(Debug, Clone)]
pub(crate) struct KeyOrder {
    keys: Box<[ExpectedKey]>,
}

/// How many key orders a decoder learns in its life: the first reading's, and one more each
/// time [`RELEARN_AFTER`] readings in a row differed from the order learned.
pub(super) const MAX_KEY_ORDERS: usize = 8;

/// Readings in a row (decoded by one caller) whose keys differ from the learned order before
/// the next one's order is learned in its place. A first reading of another shape than the rest
/// (a device on older firmware, a line written by hand) would otherwise have every later
/// reading read key by key: 5–16 % more CPU for a whole two-shard run of aq1 (BENCHMARKS.md, "A
/// first reading of another shape"). A fleet of two shapes mixed seldom gives this many of the
/// other one in a row, so the order of the first stays.
pub(super) const RELEARN_AFTER: u32 = 256;

/// The key order readings are matched against (see [`KeyOrder`]): learned from the first
/// reading the fast path reads whole, and learned again from a later one when
/// [`RELEARN_AFTER`] readings in a row, decoded by one caller, have differed from it
/// ([`DifferingKeyOrders`]), up to [`MAX_KEY_ORDERS`] times.
/// Shared by every thread that decodes with the decoder: an order, once published, is never
/// changed or freed while the decoder lives, so a reader needs no lock (one load). A cache, so
/// two decoders compare equal whatever each has learned.
#[derive(Debug, Default)]
pub(crate) struct LearnedKeyOrder {
    /// Every order learned, in the order learned (on the heap: `current` stays valid when the
    /// decoder moves).
    orders: Box<[std::sync::OnceLock<KeyOrder>; MAX_KEY_ORDERS]>,
    /// The order in use, one of `orders` (null: none learned yet).
    current: std::sync::atomic::AtomicPtr<KeyOrder>,
    /// Slots of `orders` taken (may pass their number: then nothing more is learned).
    taken: std::sync::atomic::AtomicUsize,
}

/// What a caller that decodes payload after payload keeps between them (see
/// [`crate::decode::Decoder::decode_into_learning`]): how many readings in a row had their keys
/// in another order than the one learned. Kept by the caller, so that a reading that matches
/// writes no memory another thread reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct DifferingKeyOrders {
    in_a_row: u32,
}

impl LearnedKeyOrder {
    #[inline(always)]
    fn get(&self) -> Option<&KeyOrder> {
        use std::sync::atomic::Ordering;
        // SAFETY: `current` is null or points at an order in `orders`, which was set before the
        // pointer was stored (release, read here with acquire) and is never changed or dropped
        // before `self` is.
        unsafe { self.current.load(Ordering::Acquire).as_ref() }
    }

    /// Whether an order may still be learned.
    fn may_learn(&self) -> bool {
        self.taken.load(std::sync::atomic::Ordering::Relaxed) < MAX_KEY_ORDERS
    }

    /// Publishes `order` as the one in use, if a slot is left.
    fn learn(&self, order: KeyOrder) {
        use std::sync::atomic::Ordering;
        let slot = self.taken.fetch_add(1, Ordering::Relaxed);
        if let Some(cell) = self.orders.get(slot) {
            // (each slot is taken once: the set cannot fail)
            let order = cell.get_or_init(|| order);
            self.current
                .store(std::ptr::from_ref(order).cast_mut(), Ordering::Release);
        }
    }
}

impl Clone for LearnedKeyOrder {
    /// The order in use, in the copy's first slot.
    fn clone(&self) -> Self {
        let copy = Self::default();
        if let Some(order) = self.get() {
            copy.learn(order.clone());
        }
        copy
    }
}

impl PartialEq for LearnedKeyOrder {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// `"key":`, at most sixteen bytes, as two words: the first eight bytes (masked to the entry's
/// length when it is shorter) and the last eight.
#[derive(Debug, Clone, Copy)]
struct ExpectedKey {
    first: u64,
    mask: u64,
    last: u64,
    len: usize,
    key: Key,
}

impl ExpectedKey {
    const MAX_LEN: usize = 16;

    fn new(name: &[u8], key: Key) -> Option<Self> {
        let len = name.len() + 3;
        if len > Self::MAX_LEN {
            return None;
        }
        let mut entry = [0u8; Self::MAX_LEN];
        entry[0] = b'"';
        entry[1..=name.len()].copy_from_slice(name);
        entry[name.len() + 1] = b'"';
        entry[name.len() + 2] = b':';
        let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().expect("eight bytes"));
        Some(ExpectedKey {
            first: word(0),
            mask: if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 },
            last: word(len.max(8) - 8),
            len,
            key,
        })
    }

    /// Whether `b` holds exactly this entry's opening at `at` (false too when fewer than eight
    /// bytes are left there: the key-by-key path then decides).
    #[inline(always)]
    fn opens(&self, b: &[u8], at: usize) -> bool {
        let word = |at: usize| {
            b.get(at..at + 8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("eight bytes")))
        };
        match word(at) {
            Some(w) if (w ^ self.first) & self.mask == 0 => self.len <= 8 || word(at + self.len - 8) == Some(self.last),
            _ => false,
        }
    }
}

/// The keys `dec` matches readings against (see [`KeyOrder`]), if it has learned an order.
pub(crate) fn learned_keys(dec: &Decoder) -> Option<Vec<String>> {
    let order = dec.key_order.get()?;
    let keys = order.keys.iter().map(|k| {
        let mut entry = k.first.to_le_bytes()[..k.len.min(8)].to_vec();
        entry.extend_from_slice(&k.last.to_le_bytes()[(16 - k.len.max(8))..]);
        debug_assert_eq!((entry[0], &entry[k.len - 2..]), (b'"', &b"\":"[..]), "{entry:?}");
        String::from_utf8_lossy(&entry[1..k.len - 2]).into_owned()
    });
    Some(keys.collect())
}

/// How many key orders `dec` has learned (at most [`MAX_KEY_ORDERS`]).
#[cfg(test)]
pub(super) fn orders_learned(dec: &Decoder) -> usize {
    dec.key_order
        .taken
        .load(std::sync::atomic::Ordering::Relaxed)
        .min(MAX_KEY_ORDERS)
}

/// Keeps the key order of `payload`, a reading the fast path has just read whole (see
/// [`KeyOrder`]): its keys up to the first written with space before its colon or longer than
/// [`ExpectedKey::MAX_LEN`].
#[cold]
#[inline(never)]
fn learn_key_order(dec: &Decoder, payload: &[u8]) {
    let mut keys = Vec::new();
    let mut p = Cursor { b: payload, i: 0 };
    p.ws();
    let _ = p.eat(b'{');
    p.ws();
    while p.peek() == Some(b'"') {
        let Some(name) = p.string() else { break };
        let Some(expected) = ExpectedKey::new(name, classify(dec, name)).filter(|_| p.peek() == Some(b':')) else {
            break;
        };
        keys.push(expected);
        p.i += 1;
        p.ws();
        if p.skip_scalar().is_none() {
            break;
        }
        p.ws();
        if p.next() != Some(b',') {
            break;
        }
        p.ws();
    }
    dec.key_order.learn(KeyOrder { keys: keys.into() });
}

/// `payload.is_ascii()`, sixteen bytes at a time to the end: the last sixteen read again,
/// overlapping, where the standard library finishes a byte at a time (up to 63 bytes, 3 % of
/// a run on 100-byte readings).
#[inline]
fn all_ascii(payload: &[u8]) -> bool {
    const HIGH: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
    if payload.len() < 16 {
        return payload.is_ascii();
    }
    let word = |chunk: &[u8]| u128::from_le_bytes(chunk.try_into().expect("sixteen bytes"));
    let chunks = payload.chunks_exact(16);
    let last = word(&payload[payload.len() - 16..]);
    chunks.fold(last, |any, chunk| any | word(chunk)) & HIGH == 0
}

#[derive(Debug, Clone, Copy)]
enum Key {
    Device,
    Time,
    Arrival,
    Field(usize),
    Other,
}

/// The serde path's key order: a declared field first, then device, time, arrival.
#[inline]
fn classify(dec: &Decoder, key: &[u8]) -> Key {
    for (i, field) in dec.fields.iter().enumerate() {
        if same_bytes(field.name.as_bytes(), key) {
            return Key::Field(i);
        }
    }
    let is = |k: &Option<String>| k.as_deref().is_some_and(|k| same_bytes(k.as_bytes(), key));
    if is(&dec.device_field) {
        Key::Device
    } else if is(&dec.time_field) {
        Key::Time
    } else if is(&dec.arrival_field) {
        Key::Arrival
    } else {
        Key::Other
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// A JSON number as written: its sign, up to 19 significant digits, and its decimal exponent;
/// or, when it has more digits, its text.
struct Number<'a> {
    negative: bool,
    mantissa: u64,
    exponent: i32,
    /// No fraction and no exponent in the text.
    integral: bool,
    /// The text, when the mantissa did not hold every digit.
    long: Option<&'a [u8]>,
}

/// Exact powers of ten as `f64` (up to 10^22, the largest that is exact).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

impl Number<'_> {
    /// The correctly rounded value, as serde_json (with `float_roundtrip`) gives it; `None`
    /// beyond the range of `f64` (serde_json refuses such a number).
    #[inline(always)]
    fn to_f64(&self) -> Option<f64> {
        // Clinger's fast path: an exact mantissa and an exact power of ten, one rounding
        if self.long.is_none() && self.mantissa <= 1 << 53 && (-22..=22).contains(&self.exponent) {
            let m = self.mantissa as f64;
            let x = if self.exponent >= 0 {
                m * POW10[self.exponent as usize]
            } else {
                m / POW10[(-self.exponent) as usize]
            };
            return Some(if self.negative { -x } else { x });
        }
        Some(self.slow()).filter(|x| x.is_finite())
    }

    #[cold]
    fn slow(&self) -> f64 {
        match self.long {
            // ASCII digits, sign, '.', 'e', checked by the cursor; Rust's parser rounds correctly
            Some(text) => std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(f64::NAN),
            None => {
                let text = format!(
                    "{}{}e{}",
                    if self.negative { "-" } else { "" },
                    self.mantissa,
                    self.exponent
                );
                text.parse().unwrap_or(f64::NAN)
            }
        }
    }

    /// An integer without fraction or exponent, of at most 18 digits (so it fits an `i64`),
    /// and not `-0` (which serde_json reads as the float −0.0).
    #[inline]
    fn integer(&self) -> Option<i64> {
        if !self.integral || self.long.is_some() || self.mantissa >= 1_000_000_000_000_000_000 {
            return None;
        }
        if self.negative {
            if self.mantissa == 0 {
                return None;
            }
            Some(-(self.mantissa as i64))
        } else {
            Some(self.mantissa as i64)
        }
    }
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes or control characters: its bytes, without the quotes. (Eight
    /// bytes at a time, then a byte loop: keys and ids are short, and a `memchr` call per string
    /// cost more than even a plain byte loop.)
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let (b, start) = (self.b, self.i);
        // eight bytes at a time past ordinary ones (an id like `dev-002129`: one word, then two
        // bytes and the quote); the byte loop below decides at the first byte that may be special
        let mut i = past_plain_words(b, start, false);
        loop {
            match *b.get(i)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => i += 1,
            }
        }
        self.i = i + 1;
        Some(&b[start..i])
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    ///
    /// Always inlined: called, it wrote the `Number` to memory a field at a time and the caller
    /// read it back sixteen bytes at a time, a store-forwarding stall on every number.
    #[inline(always)]
    fn number(&mut self) -> Option<Number<'a>> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let mut mantissa = 0u64;
        let mut digits = 0u32;
        let mut exponent = 0i32;
        match self.next()? {
            b'0' => {}
            c @ b'1'..=b'9' => {
                mantissa = (c - b'0') as u64;
                digits = 1;
                // eight digits at a time while they fit in the 19 held (a 13-digit timestamp:
                // one step and four single digits)
                while digits <= 11
                    && let Some(word) = self.b.get(self.i..self.i + 8)
                {
                    let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
                    if !eight_digits(word) {
                        break;
                    }
                    mantissa = mantissa * 100_000_000 + value_of_eight_digits(word);
                    digits += 8;
                    self.i += 8;
                }
                while let Some(c @ b'0'..=b'9') = self.peek() {
                    self.i += 1;
                    if digits < 19 {
                        mantissa = mantissa * 10 + (c - b'0') as u64;
                        digits += 1;
                    } else {
                        digits += 1;
                    }
                }
            }
            _ => return None,
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.i += 1;
            let first = self.i;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                self.i += 1;
                if digits < 19 && (mantissa != 0 || c != b'0') {
                    mantissa = mantissa * 10 + (c - b'0') as u64;
                    digits += 1;
                    exponent -= 1;
                } else if mantissa == 0 {
                    // leading zeros of the fraction
                    exponent -= 1;
                } else {
                    digits += 1;
                }
            }
            if self.i == first {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.i += 1;
            let negative_exp = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let first = self.i;
            let mut e = 0i32;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                self.i += 1;
                e = e.saturating_mul(10).saturating_add((c - b'0') as i32);
            }
            if self.i == first {
                return None;
            }
            exponent = exponent.saturating_add(if negative_exp { -e } else { e });
        }
        // a digit beyond the 19 held: the text decides
        // (an `if`, not `bool::then`: that was a call here, which put the number on the stack)
        let long = if digits > 19 {
            Some(&self.b[start..self.i])
        } else {
            None
        };
        Some(Number {
            negative,
            mantissa,
            exponent,
            integral,
            long,
        })
    }

    /// A number the pipeline does not read: its text checked as [`Cursor::number`] checks it
    /// (JSON's grammar), its value not computed.
    #[inline]
    fn skip_number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'-' | b'+') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Skips decimal digits; how many there were.
    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// A value the pipeline does not read: a number, an escape-free string, or a literal.
    #[inline]
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.skip_number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }
}

/// From `i`, past the whole eight-byte words of `b` in which no byte may end or break a plain
/// string ([`special_string_bytes`], and with `ascii_only` any byte with its high bit set): the
/// index of the first byte that may, or where the whole words end. A byte loop from there
/// decides; the words only skip what it would have passed anyway.
#[inline(always)]
pub(super) fn past_plain_words(b: &[u8], mut i: usize, ascii_only: bool) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = b.get(i..i + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let special = special_string_bytes(word) | if ascii_only { word & HIGH } else { 0 };
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// Whether all eight bytes of `word` are ASCII digits (fast_float's test).
#[inline(always)]
fn eight_digits(word: u64) -> bool {
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    ((word & HIGH_NIBBLES) | ((word.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES) >> 4)) == 0x3333_3333_3333_3333
}

/// The value of eight ASCII digits, the first (most significant) in the lowest byte (fast_float's
/// three multiplications).
#[inline(always)]
fn value_of_eight_digits(word: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064; // 100 + (1_000_000 << 32)
    const MUL2: u64 = 0x0000_2710_0000_0001; // 1 + (10_000 << 32)
    let v = word - 0x3030_3030_3030_3030;
    let v = (v * 10) + (v >> 8);
    ((v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings read eight bytes at a time end where the byte loop alone ends them: every
    /// length up to 40, a quote, backslash, control character or high byte at every position.
    #[test]
    fn strings_read_eight_bytes_at_a_time_end_where_a_byte_loop_ends_them() {
        fn byte_loop(b: &[u8]) -> Option<&[u8]> {
            let rest = b.strip_prefix(b"\"")?;
            for (i, &c) in rest.iter().enumerate() {
                match c {
                    b'"' => return Some(&rest[..i]),
                    b'\\' | 0..0x20 => return None,
                    _ => {}
                }
            }
            None
        }
        for len in 0..40 {
            let plain: Vec<u8> = (0..len).map(|k| b'#' + (k * 7 % 90) as u8).collect();
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n', 0x20, 0x7f, 0x80, 0xff, b'!'] {
                    let mut text = vec![b'"'];
                    text.extend_from_slice(&plain);
                    if at < len {
                        text[1 + at] = special;
                    }
                    for tail in [&b""[..], b"\"", b"\",\"key\":12345678901234"] {
                        let mut text = text.clone();
                        text.extend_from_slice(tail);
                        let mut cursor = Cursor { b: &text, i: 0 };
                        let got = cursor.string();
                        assert_eq!(got, byte_loop(&text), "{:?}", String::from_utf8_lossy(&text));
                        if let Some(s) = got {
                            assert_eq!(cursor.i, s.len() + 2, "{:?}", String::from_utf8_lossy(&text));
                        }
                    }
                }
            }
        }
    }

    /// An expected key opens an entry exactly when the bytes there are `"key":`, for keys of
    /// every length that fits, with or without eight bytes left after it.
    #[test]
    fn an_expected_key_opens_only_its_own_entry() {
        for len in 0..=13 {
            let name: Vec<u8> = (0..len).map(|k| b'a' + k as u8).collect();
            let key = ExpectedKey::new(&name, Key::Other).expect("fits");
            let entry = [&b"\""[..], &name, b"\":"].concat();
            assert_eq!(key.len, entry.len());
            for tail in [&b""[..], b"1", b"12345678}"] {
                let at_end = entry.len() + tail.len() < 8;
                let text = [&b",\n"[..], &entry, tail].concat();
                assert_eq!(key.opens(&text, 2), !at_end, "{len} {tail:?}");
                assert!(!key.opens(&text, 1), "{len}");
                // any byte of the entry changed, or a space before the colon
                for i in 0..entry.len() {
                    let mut other = text.clone();
                    other[2 + i] ^= 0x01;
                    assert!(!key.opens(&other, 2), "{len} {i}");
                }
                let spaced = [&b",\n\""[..], &name, b"\" :", tail].concat();
                assert!(!key.opens(&spaced, 2), "{len}");
            }
        }
        assert!(ExpectedKey::new(b"fourteen_bytes", Key::Other).is_none());
    }

    /// Eight digits at a time: the test and the value against the digits' own, for every byte
    /// at every position.
    #[test]
    fn eight_digits_are_recognised_and_read_as_digit_by_digit() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let digits: Vec<u8> = (0..8).map(|k| b'0' + ((state >> (k * 5)) % 10) as u8).collect();
            let word = u64::from_le_bytes(digits.clone().try_into().unwrap());
            assert!(eight_digits(word));
            let want = digits.iter().fold(0u64, |n, &d| n * 10 + (d - b'0') as u64);
            assert_eq!(value_of_eight_digits(word), want);
            if round >= 200 {
                continue;
            }
            for at in 0..8 {
                for other in 0..=255u8 {
                    let mut bytes = digits.clone();
                    bytes[at] = other;
                    let word = u64::from_le_bytes(bytes.try_into().unwrap());
                    assert_eq!(eight_digits(word), other.is_ascii_digit(), "{other} at {at}");
                }
            }
        }
    }

    /// The ASCII test, sixteen bytes at a time, against the standard library's: every length
    /// up to 70, a byte with its high bit set at every position.
    #[test]
    fn the_ascii_test_is_the_standard_librarys() {
        for len in 0..70 {
            let clean: Vec<u8> = (0..len).map(|k| b' ' + (k % 95) as u8).collect();
            assert!(all_ascii(&clean), "{len}");
            for at in 0..len {
                for high in [0x80u8, 0xc3, 0xff] {
                    let mut bytes = clean.clone();
                    bytes[at] = high;
                    assert_eq!(all_ascii(&bytes), bytes.is_ascii(), "{len} {at}");
                    assert!(!all_ascii(&bytes));
                }
            }
        }
    }

    /// Numbers of every shape (up to 24 integer and 21 fraction digits, leading zeros in the
    /// fraction, exponents), read by the cursor, against Rust's correctly rounded parser.
    #[test]
    fn the_cursors_numbers_are_rusts_numbers() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let r = next();
            let mut text = String::new();
            if (r >> 20) & 1 == 1 {
                text.push('-');
            }
            let small = (r >> 40) % 3 == 0;
            let int_len = if small { 1 } else { 1 + (r % 24) as usize };
            for k in 0..int_len {
                let d = if small { 0 } else { (next() % 10) as u8 };
                let d = if k == 0 && int_len > 1 && d == 0 { 1 } else { d };
                text.push((b'0' + d) as char);
            }
            let frac_len = ((r >> 8) % 22) as usize;
            if frac_len > 0 {
                text.push('.');
                let zeros = if small { (r >> 50) as usize % (frac_len + 1) } else { 0 };
                for k in 0..frac_len {
                    let d = if k < zeros { 0 } else { (next() % 10) as u8 };
                    text.push((b'0' + d) as char);
                }
            }
            if (r >> 30) & 3 == 0 {
                text.push_str(&format!("e{}", (next() % 41) as i32 - 20));
            }
            let mut cursor = Cursor {
                b: text.as_bytes(),
                i: 0,
            };
            let number = cursor.number().expect("a number");
            assert_eq!(cursor.i, text.len(), "{text}: read to its end");
            // the same followed by more bytes (so that eight are there to read at a time)
            let followed = format!("{text},\"k\":12345678");
            let mut cursor_followed = Cursor {
                b: followed.as_bytes(),
                i: 0,
            };
            let number_followed = cursor_followed.number().expect("a number");
            assert_eq!(cursor_followed.i, text.len(), "{followed}: read to the number's end");
            assert_eq!(
                number_followed.to_f64().map(f64::to_bits),
                number.to_f64().map(f64::to_bits),
                "{followed}"
            );
            let want: f64 = text.parse().expect("Rust parses it");
            assert_eq!(
                number.to_f64().map(f64::to_bits),
                Some(want.to_bits()),
                "{text}: {:?} against {want}",
                number.to_f64()
            );
            if !text.contains(['.', 'e']) && int_len <= 18 && text != "-0" {
                assert_eq!(number.integer(), text.parse::<i64>().ok(), "{text}");
            }
        }
    }
}
