//! In-memory [`crate::store::SessionStore`] for the embedded single-process mode.
