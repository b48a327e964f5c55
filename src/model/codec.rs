//! Decoding what plume stored (bincode 2.0.1, standard configuration) without trusting it: a
//! length inside a damaged or forged value must not make plume allocate what it claims.
//!
//! bincode allocates a string's or byte vector's whole claimed length before reading it, so a
//! value that claims 2^62 bytes aborts the process on allocation; xxh3 seals catch damage, not
//! forgery (an export file, a hand-off). Every stored format is therefore decoded with a limit
//! on the bytes its lengths may claim: twice the input's length (at least 64 KiB), since a valid
//! value's strings and byte vectors are never longer than the input that holds them. (Sequences
//! of other things are not claimed by bincode's serde path; serde preallocates at most 1 MiB for
//! them and grows as elements actually decode.)

use serde::de::DeserializeOwned;

/// Decodes one value from the start of `bytes`; returns it and the bytes it used.
pub fn bincode_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
    let need = (bytes.len() as u64).saturating_mul(2).max(1 << 16);
    macro_rules! limited {
        ($($bits:literal)*) => {
            $(
                if need <= 1u64 << $bits {
                    return bincode::serde::decode_from_slice(
                        bytes,
                        bincode::config::standard().with_limit::<{ 1usize << $bits }>(),
                    );
                }
            )*
        };
    }
    limited!(16 18 20 22 24 26 28 30 32 34 36 38 40 42 44 46 48);
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<{ 1usize << 50 }>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_length_beyond_the_input_is_an_error_not_an_allocation() {
        // a string that claims 2^62 bytes: bincode's varint for a u64 is 0xfd and 8 bytes
        let mut forged = vec![0xfdu8];
        forged.extend_from_slice(&(1u64 << 62).to_le_bytes());
        forged.extend_from_slice(b"abc");
        let e = bincode_decode::<String>(&forged).unwrap_err();
        assert!(matches!(e, bincode::error::DecodeError::LimitExceeded), "{e:?}");
        // the same inside a struct, as a stored record would hold it
        let e = bincode_decode::<(u64, Vec<String>)>(&[&[7u8, 1][..], &forged[..]].concat()).unwrap_err();
        assert!(matches!(e, bincode::error::DecodeError::LimitExceeded), "{e:?}");
    }

    #[test]
    fn valid_values_of_any_size_decode() {
        for size in [0usize, 10, 70_000, 3 << 20] {
            let value = (size as u64, "x".repeat(size), vec![vec![1u8; size / 2]; 2]);
            let bytes = bincode::serde::encode_to_vec(&value, bincode::config::standard()).unwrap();
            let (back, used) = bincode_decode::<(u64, String, Vec<Vec<u8>>)>(&bytes).unwrap();
            assert_eq!(back, value);
            assert_eq!(used, bytes.len());
        }
    }
}
