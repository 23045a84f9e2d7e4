//! Client authentication (`AMR_AUTH_MODE=jwt`): verifies a JWT and checks that its device
//! claim equals the deviceId the connection registers.
//!
//! Keys: an HS256 shared secret (`AMR_JWT_HS256_SECRET`) and/or PEM public keys for RS256 and
//! ES256 (`AMR_JWT_PUBLIC_KEYS_DIR`, the file name without extension is the `kid`). A token
//! naming a `kid` is checked with that key only; a token without `kid` is tried against every
//! key of its algorithm (rotation without re-issuing tokens). The algorithm a key accepts is
//! fixed by the key itself, never by the token: `alg: none`, or an HS256 token "signed" with a
//! public RSA key, can never pass.

use crate::config::{AuthMode, Config};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::path::Path;
use std::time::Duration;

/// Longest token looked at; anything longer is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most public keys read from the keys directory.
const MAX_KEYS: usize = 64;

/// A verification key with the one algorithm it accepts.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens; built once from the configuration.
pub struct Authenticator {
    keys: Vec<Key>,
    device_claim: String,
    leeway: Duration,
}

/// Why a token was refused (logged, never sent to the client in detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl Authenticator {
    /// The authenticator of `config`, `None` when authentication is off. Err when `jwt` is
    /// configured without any usable key, or a key file cannot be read.
    pub fn from_config(config: &Config) -> Result<Option<Authenticator>, String> {
        if config.auth_mode == AuthMode::None {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = config.jwt_hs256_secret.as_deref().filter(|s| !s.is_empty()) {
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(dir) = &config.jwt_public_keys_dir {
            keys.extend(load_public_keys(dir)?);
        }
        if keys.is_empty() {
            return Err(
                "AMR_AUTH_MODE=jwt needs AMR_JWT_HS256_SECRET or AMR_JWT_PUBLIC_KEYS_DIR with keys"
                    .to_owned(),
            );
        }
        Ok(Some(Authenticator {
            keys,
            device_claim: config.jwt_device_claim.clone(),
            leeway: config.jwt_leeway,
        }))
    }

    /// Ok when `token` is valid now (signature, `exp` required, `nbf` if present, with the
    /// leeway) and its device claim equals `device_id`.
    pub fn verify(&self, token: &str, device_id: &str) -> Result<(), AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError("token too long".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError(format!("malformed token: {e}")))?;
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    // A secret has no kid: a kid on an HS256 token does not select it away.
                    (Some(_), None) => true,
                    (None, _) => true,
                }
        });
        let mut last = AuthError(format!("no key for algorithm {:?}", header.alg));
        for key in candidates {
            match self.verify_with(token, key) {
                Ok(claims) => return self.check_device(&claims, device_id),
                // The next key may be the right one (rotation); the last reason is logged.
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_with(
        &self,
        token: &str,
        key: &Key,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // No audience is configured: one present in the token is not a reason to refuse it.
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map(|data| data.claims)
        .map_err(|e| AuthError(format!("invalid token: {e}")))
    }

    fn check_device(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        device_id: &str,
    ) -> Result<(), AuthError> {
        match claims.get(&self.device_claim).and_then(|v| v.as_str()) {
            Some(claimed) if claimed == device_id => Ok(()),
            Some(_) => Err(AuthError(format!(
                "the token's '{}' claim names another device",
                self.device_claim
            ))),
            None => Err(AuthError(format!(
                "the token has no string '{}' claim",
                self.device_claim
            ))),
        }
    }
}

/// Every `*.pem` file of `dir` as an RS256 (RSA) or ES256 (P-256) key, its kid the file stem.
fn load_public_keys(dir: &Path) -> Result<Vec<Key>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("AMR_JWT_PUBLIC_KEYS_DIR {}: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    paths.sort();
    if paths.len() > MAX_KEYS {
        return Err(format!(
            "AMR_JWT_PUBLIC_KEYS_DIR {}: more than {MAX_KEYS} keys",
            dir.display()
        ));
    }
    let mut keys = Vec::new();
    for path in paths {
        let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let kid = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: file name is not UTF-8", path.display()))?;
        let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, k)
        } else {
            return Err(format!(
                "{}: not a PEM RSA or EC (P-256) public key",
                path.display()
            ));
        };
        tracing::info!(kid = %kid, alg = ?alg, "JWT public key loaded");
        keys.push(Key {
            kid: Some(kid),
            alg,
            key,
        });
    }
    Ok(keys)
}

/// A token presented at the WebSocket upgrade: `Authorization: Bearer <token>`, else the
/// `token` query parameter. It counts for the whole connection (checked at `device_register`).
pub fn upgrade_token<B>(req: &tokio_tungstenite::tungstenite::http::Request<B>) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(tokio_tungstenite::tungstenite::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = value.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some(token.trim().to_owned());
            }
        }
    }
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token" && !v.is_empty()).then(|| percent_decode(v))
        })
    })
}

/// Minimal `%XX` decoding (JWTs are URL-safe already; some clients encode anyway).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test-secret-of-reasonable-length";

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn private(name: &str) -> Vec<u8> {
        std::fs::read(fixtures().join("jwt-private").join(name)).unwrap()
    }

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["amr-gateway", "--auth-mode", "jwt"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    fn hs_auth() -> Authenticator {
        Authenticator::from_config(&config(&["--jwt-hs256-secret", SECRET]))
            .unwrap()
            .unwrap()
    }

    fn pem_auth() -> Authenticator {
        let dir = fixtures().join("jwt-public");
        Authenticator::from_config(&config(&["--jwt-public-keys-dir", dir.to_str().unwrap()]))
            .unwrap()
            .unwrap()
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
        json!({"sub": sub, "exp": now() + exp_in})
    }

    fn hs_token(claims: &serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn rs_token(claims: &serde_json::Value, key: &str, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = kid.map(str::to_owned);
        encode(
            &h,
            claims,
            &EncodingKey::from_rsa_pem(&private(key)).unwrap(),
        )
        .unwrap()
    }

    fn es_token(claims: &serde_json::Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_owned);
        encode(
            &h,
            claims,
            &EncodingKey::from_ec_pem(&private("ec-a.key")).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn token_from_the_upgrade_request() {
        use tokio_tungstenite::tungstenite::http::Request;
        let r = |uri: &str, auth: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(a) = auth {
                b = b.header("Authorization", a);
            }
            upgrade_token(&b.body(()).unwrap())
        };
        assert_eq!(
            r("/ws", Some("Bearer abc.def.ghi")),
            Some("abc.def.ghi".into())
        );
        assert_eq!(r("/ws", Some("bearer  abc")), Some("abc".into()));
        assert_eq!(r("/ws", Some("Basic dXNlcg==")), None);
        assert_eq!(r("/ws?x=1&token=a.b%2Ec", None), Some("a.b.c".into()));
        assert_eq!(r("/ws?token=", None), None);
        assert_eq!(r("/ws?token=%", None), Some("%".into()));
        assert_eq!(r("/ws?token=%4", None), Some("%4".into()));
        assert_eq!(r("/ws", None), None);
        // The header wins over the query.
        assert_eq!(r("/ws?token=q", Some("Bearer h")), Some("h".into()));
    }

    #[test]
    fn off_by_default_and_jwt_needs_a_key() {
        let c = Config::try_parse_from(["amr-gateway"]).unwrap();
        assert!(Authenticator::from_config(&c).unwrap().is_none());
        assert!(Authenticator::from_config(&config(&[])).is_err());
        assert!(
            Authenticator::from_config(&config(&["--jwt-public-keys-dir", "/nonexistent"]))
                .is_err()
        );
    }

    #[test]
    fn hs256_ok_expired_wrong_device_wrong_key() {
        let a = hs_auth();
        assert_eq!(
            a.verify(&hs_token(&claims("AMR-1", 600), SECRET), "AMR-1"),
            Ok(())
        );
        // Expired beyond the leeway (30 s).
        let e = a.verify(&hs_token(&claims("AMR-1", -600), SECRET), "AMR-1");
        assert!(e.unwrap_err().0.contains("xpired"));
        // Expired within the leeway: still accepted.
        assert!(a
            .verify(&hs_token(&claims("AMR-1", -5), SECRET), "AMR-1")
            .is_ok());
        assert!(a
            .verify(&hs_token(&claims("AMR-1", 600), SECRET), "AMR-2")
            .is_err());
        assert!(a
            .verify(&hs_token(&claims("AMR-1", 600), "other"), "AMR-1")
            .is_err());
        // exp is required.
        let no_exp = hs_token(&json!({"sub": "AMR-1"}), SECRET);
        assert!(a.verify(&no_exp, "AMR-1").is_err());
        // sub of the wrong type.
        let num = hs_token(&json!({"sub": 5, "exp": now() + 600}), SECRET);
        assert!(a.verify(&num, "5").is_err());
        // Not yet valid.
        let nbf = hs_token(
            &json!({"sub": "AMR-1", "exp": now() + 6000, "nbf": now() + 3000}),
            SECRET,
        );
        assert!(a.verify(&nbf, "AMR-1").is_err());
        for junk in [
            "",
            "a.b.c",
            "....",
            "not a token",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(a.verify(junk, "AMR-1").is_err(), "{junk}");
        }
    }

    #[test]
    fn configured_claim() {
        let a = Authenticator::from_config(&config(&[
            "--jwt-hs256-secret",
            SECRET,
            "--jwt-device-claim",
            "device_id",
        ]))
        .unwrap()
        .unwrap();
        let t = hs_token(
            &json!({"sub": "x", "device_id": "AMR-1", "exp": now() + 60}),
            SECRET,
        );
        assert!(a.verify(&t, "AMR-1").is_ok());
        assert!(a
            .verify(&hs_token(&claims("AMR-1", 60), SECRET), "AMR-1")
            .is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let a = hs_auth();
        use base64_like::b64;
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(format!(r#"{{"sub":"AMR-1","exp":{}}}"#, now() + 600).as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(a.verify(&token, "AMR-1").is_err());
        }
    }

    #[test]
    fn hs256_signed_with_a_public_key_is_refused() {
        // Algorithm confusion: a verifier that let the token pick the algorithm would accept an
        // HMAC made with the (public) RSA key as the secret.
        let a = pem_auth();
        let public = std::fs::read(fixtures().join("jwt-public/rsa-a.pem")).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-a".into());
        let forged = encode(
            &h,
            &claims("AMR-1", 600),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert!(a.verify(&forged, "AMR-1").is_err());
        // And an RS256 token is refused where only a secret is configured.
        let rs = rs_token(&claims("AMR-1", 600), "rsa-a.key", Some("rsa-a"));
        assert!(hs_auth().verify(&rs, "AMR-1").is_err());
    }

    #[test]
    fn rs256_and_es256_with_kid_rotation() {
        let a = pem_auth();
        let c = claims("AMR-1", 600);
        // Both RSA keys are valid (rotation), with or without kid.
        for key in ["rsa-a", "rsa-b"] {
            let file = format!("{key}.key");
            assert_eq!(a.verify(&rs_token(&c, &file, Some(key)), "AMR-1"), Ok(()));
            assert_eq!(a.verify(&rs_token(&c, &file, None), "AMR-1"), Ok(()));
        }
        // A kid naming the other key: refused (the kid selects the key).
        assert!(a
            .verify(&rs_token(&c, "rsa-a.key", Some("rsa-b")), "AMR-1")
            .is_err());
        assert!(a
            .verify(&rs_token(&c, "rsa-a.key", Some("gone")), "AMR-1")
            .is_err());
        assert_eq!(a.verify(&es_token(&c, Some("ec-a")), "AMR-1"), Ok(()));
        assert_eq!(a.verify(&es_token(&c, None), "AMR-1"), Ok(()));
        assert!(a.verify(&es_token(&c, None), "AMR-2").is_err());
        assert!(a
            .verify(&es_token(&claims("AMR-1", -600), None), "AMR-1")
            .is_err());
        // An ES256 token naming an RSA key's kid.
        assert!(a.verify(&es_token(&c, Some("rsa-a")), "AMR-1").is_err());
    }

    /// URL-safe base64 without padding, enough to forge headers in tests.
    mod base64_like {
        pub fn b64(input: &[u8]) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in input.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
                let chars = chunk.len() + 1;
                for i in 0..chars {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
