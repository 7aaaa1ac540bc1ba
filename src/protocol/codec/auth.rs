//! AUTH (3.15, 5.0 only): a reason code and properties, both omitted when Success and empty.

use bytes::{BufMut, BytesMut};

use super::ack::tail;
use super::check_reason;
use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::AUTH;
use super::properties;
use super::reader::Reader;
use crate::protocol::packet::{Auth, Version};

/// Reason codes (3.15.2.1): Success, Continue authentication, Re-authenticate.
const CODES: &[u8] = &[0x00, 0x18, 0x19];

/// Reads an AUTH body (the caller has refused AUTH in 3.1.1).
pub(crate) fn read(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    if !r.is_empty() {
        a.reason = check_reason(AUTH, r.u8()?, CODES)?;
        if !r.is_empty() {
            a.properties = properties::read(r, properties::context(AUTH))?;
        }
    }
    r.finish()?;
    Ok(a)
}

/// The Remaining Length of `a`.
pub(crate) fn len(a: &Auth) -> usize {
    match tail(a.reason, &a.properties, Version::V5) {
        (_, true) => 1 + properties::len(&a.properties),
        (has_reason, false) => usize::from(has_reason),
    }
}

/// Writes the body of `a`.
pub(crate) fn write(a: &Auth, out: &mut BytesMut) -> Result<(), EncodeError> {
    let (has_reason, has_props) = tail(a.reason, &a.properties, Version::V5);
    if has_reason {
        out.put_u8(a.reason.0);
    }
    if has_props {
        properties::write_v5(&a.properties, properties::context(AUTH), Version::V5, out)?;
    }
    Ok(())
}
