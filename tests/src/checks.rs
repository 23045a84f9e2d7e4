//! Assertions shared by the test files.

use amr_proto::server::ErrorMessage;
use amr_proto::ErrorCode;

/// Asserts an error's code and, when given, its `ref` (the type of the offending message).
#[track_caller]
pub fn assert_error(e: &ErrorMessage, code: ErrorCode, ref_type: Option<&str>) {
    assert_eq!(e.error_code, code, "unexpected error code in {e:?}");
    if let Some(r) = ref_type {
        assert_eq!(
            e.ref_type.as_deref(),
            Some(r),
            "error {code} must carry ref = the offending message's type: {e:?}"
        );
    }
}

/// A `traceparent` header value of the W3C format `00-<32 hex>-<16 hex>-<2 hex>`.
pub fn is_w3c_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}
