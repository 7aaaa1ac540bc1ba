//! PINGREQ and PINGRESP (3.12, 3.13): a fixed header and nothing else.

use super::error::DecodeError;
use super::reader::Reader;

/// Reads a PINGREQ or PINGRESP body, which must be empty.
pub(crate) fn read(r: &mut Reader) -> Result<(), DecodeError> {
    r.finish()
}
