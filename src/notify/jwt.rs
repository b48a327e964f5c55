//! Just enough JWT (RFC 7519) for the push providers, signed with `ring`: RS256 for the FCM
//! service-account assertion, ES256 for the APNs provider token. Keys are PKCS#8 PEM.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

/// A key that cannot be used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM `{0}` block")]
    Pem(&'static str),
    #[error("not a valid {0} key (PKCS#8 expected)")]
    Key(&'static str),
    #[error("signing failed")]
    Sign,
}

/// The DER bytes of the first `-----BEGIN PRIVATE KEY-----` block.
pub fn pem_private_key(pem: &str) -> Result<Vec<u8>, KeyError> {
    const LABEL: &str = "PRIVATE KEY";
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    // service-account JSON keys carry the PEM with `\n` already decoded by serde
    let start = pem.find(begin).ok_or(KeyError::Pem(LABEL))? + begin.len();
    let stop = pem[start..].find(end).ok_or(KeyError::Pem(LABEL))? + start;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).map_err(|_| KeyError::Pem(LABEL))
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

pub fn rsa_key(pem: &str) -> Result<RsaKeyPair, KeyError> {
    RsaKeyPair::from_pkcs8(&pem_private_key(pem)?).map_err(|_| KeyError::Key("RSA"))
}

pub fn ec_key(pem: &str) -> Result<EcdsaKeyPair, KeyError> {
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &pem_private_key(pem)?,
        &SystemRandom::new(),
    )
    .map_err(|_| KeyError::Key("P-256 EC"))
}

/// `header.claims.signature` with RS256 (RSASSA-PKCS1-v1_5, SHA-256).
pub fn rs256(key: &RsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> Result<String, KeyError> {
    let input = signing_input(header, claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
        .map_err(|_| KeyError::Sign)?;
    Ok(format!("{input}.{}", b64url(&sig)))
}

/// `header.claims.signature` with ES256 (ECDSA P-256, SHA-256, the 64-byte r‖s form).
pub fn es256(key: &EcdsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> Result<String, KeyError> {
    let input = signing_input(header, claims);
    let sig = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| KeyError::Sign)?;
    Ok(format!("{input}.{}", b64url(sig.as_ref())))
}
