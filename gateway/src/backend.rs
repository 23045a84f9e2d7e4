//! What the gateway needs from the rest of the system, as traits: session operations, a sink
//! for sensor data, and readiness. The distributed mode implements them over NATS
//! ([`crate::session_client`], [`crate::forward`]); the embedded single-process mode implements
//! them in-process. Connections only ever see these traits.

use amr_proto::client::SensorMessage;
use amr_proto::internal::{
    ActivityOk, ActivityRequest, ClaimOk, ClaimRequest, DisconnectOk, DisconnectRequest, EndOk,
    EndRequest, ServiceError, StartOk, StartRequest,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Session operations, answered by the session state machine wherever it runs.
pub trait SessionApi: Send + Sync + 'static {
    fn start<'a>(&'a self, req: &'a StartRequest) -> BoxFuture<'a, ServiceResult<StartOk>>;
    fn end<'a>(&'a self, req: &'a EndRequest) -> BoxFuture<'a, ServiceResult<EndOk>>;
    fn claim<'a>(&'a self, req: &'a ClaimRequest) -> BoxFuture<'a, ServiceResult<ClaimOk>>;
    fn disconnect<'a>(
        &'a self,
        req: &'a DisconnectRequest,
    ) -> BoxFuture<'a, ServiceResult<DisconnectOk>>;
    fn activity<'a>(&'a self, req: &'a ActivityRequest)
        -> BoxFuture<'a, ServiceResult<ActivityOk>>;
}

/// Where one accepted message goes and what it is stamped with.
pub struct Stamp<'a> {
    pub device_id: &'a str,
    pub session_id: &'a str,
    /// The session's sensor subject, built once per session (a cheap clone per message).
    pub subject: &'a Bytes,
    /// The session's running sample count including this message.
    pub data_count: u64,
    /// W3C traceparent of this message.
    pub traceparent: &'a str,
}

/// How a message left the gateway.
pub enum Published {
    /// Handed over; no acknowledgement expected (messages without `seq`).
    Sent,
    /// Resolves once the message is durably stored: `Ok(duplicate)`, or why it was not.
    Pending(BoxFuture<'static, Result<bool, String>>),
}

/// Destination of accepted sensor messages. `payload` is the client's frame, verbatim.
pub trait SensorSink: Send + Sync + 'static {
    fn publish<'a>(
        &'a self,
        msg: &'a SensorMessage<'a>,
        stamp: &'a Stamp<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Published, String>>;
}

/// Whether the gateway can serve (`/readyz`): Err names what is missing.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Result<(), &'static str>;
}
