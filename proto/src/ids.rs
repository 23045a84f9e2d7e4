//! Identifiers: deviceId validation, sessionId generation and validation.
//!
//! Both ids become NATS subject tokens and Redis key parts, so their alphabet is
//! `[A-Za-z0-9_-]`: no `.`, `*`, `>`, whitespace or control character can ever get through.

/// Longest accepted deviceId, in characters.
pub const DEVICE_ID_MAX_LEN: usize = 64;

/// [`is_valid_device_id`] as a regular expression (for the JSON Schemas of the contract).
pub const DEVICE_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// [`is_valid_session_id`] as a regular expression.
pub const SESSION_ID_PATTERN: &str = "^session_[0-9a-fA-F]{32}$";

/// [`is_valid_request_id`] as a regular expression.
pub const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";

/// Prefix of every sessionId this server issues.
pub const SESSION_ID_PREFIX: &str = "session_";

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// True when `id` is 1-64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= DEVICE_ID_MAX_LEN && id.bytes().all(is_token_char)
}

/// Longest gateway instance id (a configured `AMR_GATEWAY_ID` of up to 64 characters plus
/// a per-process suffix), in characters.
pub const GATEWAY_ID_MAX_LEN: usize = 128;

/// True when `id` can be a gateway (instance) id: 1-128 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_gateway_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= GATEWAY_ID_MAX_LEN && id.bytes().all(is_token_char)
}

/// A new sessionId: `session_` + a UUIDv7 in lowercase hex (time-ordered, unique across
/// replicas and restarts, and a valid subject token).
pub fn new_session_id() -> String {
    format!("{SESSION_ID_PREFIX}{}", uuid::Uuid::now_v7().simple())
}

/// True when `id` has the shape of an id this server issues. Anything else cannot name a
/// session, and is never used to build a subject or a key.
pub fn is_valid_session_id(id: &str) -> bool {
    match id.strip_prefix(SESSION_ID_PREFIX) {
        Some(hex) => hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// A request id (client-given or gateway-made): 1-128 characters of `[A-Za-z0-9_.:-]`.
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| is_token_char(b) || b == b'.' || b == b':')
}

/// A new request id made by the gateway when the client sent none, so that the gateway's
/// own retries towards the session service stay idempotent.
pub fn new_request_id() -> String {
    format!("gw-{}", uuid::Uuid::new_v4().simple())
}

/// True when a `clientVersion` announces the session protocol (>= 1.1.0). Accepts `1.1`,
/// `1.1.0`, `v1.2.3`, `1.1.0-beta`; anything unparsable counts as a legacy client.
pub fn is_session_aware_version(version: &str) -> bool {
    let v = version.trim().trim_start_matches(['v', 'V']);
    let core = v.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let major = match parts.next() {
        Some(Ok(m)) => m,
        _ => return false,
    };
    let minor = match parts.next() {
        Some(Ok(m)) => m,
        None => 0,
        Some(Err(_)) => return false,
    };
    (major, minor) >= (1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert!(is_valid_device_id("AMR_001"));
        assert!(is_valid_device_id("a-b_C9"));
        assert!(is_valid_device_id(&"x".repeat(64)));
        for bad in [
            "",
            "a.b",
            "*",
            ">",
            "a b",
            "a\nb",
            "é",
            "a*",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_device_id(bad), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn session_ids_are_unique_ordered_and_valid() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a, b);
        assert!(is_valid_session_id(&a), "{a}");
        assert!(a.len() == SESSION_ID_PREFIX.len() + 32);
        assert!(!is_valid_session_id("session_abc123"));
        assert!(!is_valid_session_id(
            "session_0123456789abcdef0123456789abcde."
        ));
    }

    #[test]
    fn versions() {
        assert!(is_session_aware_version("1.1.0"));
        assert!(is_session_aware_version("v1.2"));
        assert!(is_session_aware_version("2.0.0-rc1"));
        assert!(!is_session_aware_version("1.0.9"));
        assert!(!is_session_aware_version("1"));
        assert!(!is_session_aware_version("garbage"));
    }

    #[test]
    fn gateway_ids() {
        assert!(is_valid_gateway_id("gw-0a1b2c3d4e5f"));
        assert!(is_valid_gateway_id(&format!("{}-1a2b3c4d", "g".repeat(64))));
        assert!(!is_valid_gateway_id(""));
        assert!(!is_valid_gateway_id("gw.1"));
        assert!(!is_valid_gateway_id("gw*"));
        assert!(!is_valid_gateway_id(&"g".repeat(129)));
    }

    #[test]
    fn request_ids() {
        assert!(is_valid_request_id("req-1:2.3"));
        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id("a b"));
        assert!(!is_valid_request_id(&"r".repeat(129)));
    }
}
