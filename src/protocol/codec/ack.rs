//! PUBACK, PUBREC, PUBREL and PUBCOMP (3.4 to 3.7): a packet id, then in 5.0 a reason code
//! and properties, both omitted when they are Success and empty.

use bytes::{BufMut, BytesMut};

use super::check_reason;
use super::error::{DecodeError, EncodeError};
use super::fixed_header::packet_type::{PUBACK, PUBCOMP, PUBREC, PUBREL};
use super::properties;
use super::reader::Reader;
use crate::protocol::packet::{Ack, Packet, Properties, ReasonCode, Version};

/// PUBACK and PUBREC reason codes (3.4.2.1, 3.5.2.1).
const CODES_PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// PUBREL and PUBCOMP reason codes (3.6.2.1, 3.7.2.1).
const CODES_PUBREL: &[u8] = &[0x00, 0x92];

fn codes(packet_type: u8) -> &'static [u8] {
    match packet_type {
        PUBACK | PUBREC => CODES_PUBACK,
        _ => CODES_PUBREL,
    }
}

/// Reads the body of an acknowledgement of type `packet_type`.
pub(crate) fn read(packet_type: u8, r: &mut Reader) -> Result<Ack, DecodeError> {
    let pkid = r.packet_id()?;
    let mut ack = Ack {
        pkid,
        ..Ack::default()
    };
    // 3.1.1 has nothing more; 5.0 may stop after the packet id or the reason code.
    if r.version() == Version::V5 && !r.is_empty() {
        ack.reason = check_reason(packet_type, r.u8()?, codes(packet_type))?;
        if !r.is_empty() {
            ack.properties = properties::read(r, properties::context(packet_type))?;
        }
    }
    r.finish()?;
    Ok(ack)
}

/// How much of the 5.0 tail is sent: (reason code?, properties?) — the short forms of 3.4.2.
pub(crate) fn tail(reason: ReasonCode, properties: &Properties, version: Version) -> (bool, bool) {
    match version {
        Version::V311 => (false, false),
        Version::V5 if !properties::is_empty(properties) => (true, true),
        Version::V5 => (reason != ReasonCode::SUCCESS, false),
    }
}

/// The Remaining Length of `a` in `version`.
pub(crate) fn len(a: &Ack, version: Version) -> usize {
    let (has_reason, has_props) = tail(a.reason, &a.properties, version);
    let props = if has_props {
        properties::len(&a.properties)
    } else {
        0
    };
    2 + usize::from(has_reason) + props
}

/// Writes the body of `a`, an acknowledgement of type `packet_type`.
pub(crate) fn write(
    packet_type: u8,
    a: &Ack,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    out.put_u16(a.pkid);
    let (has_reason, has_props) = tail(a.reason, &a.properties, version);
    if has_reason {
        out.put_u8(a.reason.0);
    }
    if has_props {
        properties::write_v5(
            &a.properties,
            properties::context(packet_type),
            version,
            out,
        )?;
    }
    Ok(())
}

/// A plain PUBACK: type 4 with no flags, Remaining Length 2, a packet id and nothing else
/// (reason Success in 5.0, the only form in 3.1.1).
const PLAIN_PUBACK: [u8; 2] = [PUBACK << 4, 2];

/// The four bytes `encode` writes for `packet` when it is an acknowledgement in its shortest
/// form, a packet id alone (3.4.2): in 3.1.1 always, in 5.0 with reason Success and no
/// properties. A publisher at QoS 1 gets one per PUBLISH, and the general encoder cost more
/// than the rest of its acknowledgement's way. `None`: encode it the general way.
pub fn short_ack(packet: &Packet, version: Version) -> Option<[u8; 4]> {
    let (first, a) = match packet {
        Packet::PubAck(a) => (PUBACK << 4, a),
        Packet::PubRec(a) => (PUBREC << 4, a),
        Packet::PubRel(a) => (PUBREL << 4 | 0b0010, a),
        Packet::PubComp(a) => (PUBCOMP << 4, a),
        _ => return None,
    };
    let is_short =
        version == Version::V311 || (a.reason == ReasonCode::SUCCESS && a.properties.is_unset());
    let [high, low] = a.pkid.to_be_bytes();
    is_short.then_some([first, 2, high, low])
}

/// Reads the run of plain PUBACKs at the front of `buf` into `pkids`, as many as fit; gives
/// back how many were read and the bytes they took. A subscriber at QoS 1 sends nothing else,
/// and decoding each of them into a `Packet` cost ten times the bytes it reads. What this
/// does not take (another packet, a PUBACK with a reason code, packet id 0, a cut frame) is
/// left for `Codec::decode`, which reads or refuses it.
pub fn plain_pubacks(buf: &[u8], pkids: &mut [u16]) -> (usize, usize) {
    let mut read = 0;
    for (slot, frame) in pkids.iter_mut().zip(buf.chunks_exact(4)) {
        let pkid = u16::from_be_bytes([frame[2], frame[3]]);
        if frame[..2] != PLAIN_PUBACK || pkid == 0 {
            break;
        }
        *slot = pkid;
        read += 1;
    }
    (read, read * 4)
}
