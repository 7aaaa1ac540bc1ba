//! MQTT 5.0 enhanced authentication (4.12): the seam where methods plug in.
//!
//! A CONNECT that names an Authentication Method is handed to the `Authenticator` for that
//! method. None is configured yet, so `authenticator` finds none and the connection is
//! refused with CONNACK 0x8C Bad authentication method [MQTT-4.12.0-1]. A method is added by
//! returning it from `authenticator`; the connection then runs the AUTH exchange with it.

use super::ReasonCode;
use bytes::Bytes;

/// What an authentication method says after a step of the exchange.
#[derive(Debug)]
pub enum Step {
    /// Authenticated; CONNACK (or AUTH 0x00 on re-authentication) may carry this data.
    Success(Option<Bytes>),
    /// Send AUTH 0x18 Continue authentication with this data and wait for the client's AUTH.
    Continue(Bytes),
    /// Refuse with this reason code (e.g. 0x87 Not authorized).
    Fail(ReasonCode),
}

/// One enhanced authentication method (e.g. SCRAM-SHA-256), one instance per connection.
pub trait Authenticator {
    /// The Authentication Method name it serves.
    fn method(&self) -> &str;
    /// The first step, with the CONNECT's Authentication Data.
    fn start(&mut self, data: Option<&[u8]>) -> Step;
    /// A later step, with the Authentication Data of the client's AUTH packet.
    fn resume(&mut self, data: Option<&[u8]>) -> Step;
}

/// The authenticator for `method`, if one is configured. None are yet.
pub fn authenticator(method: &str) -> Option<Box<dyn Authenticator>> {
    let _ = method;
    None
}
