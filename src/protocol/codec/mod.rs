//! The MQTT 3.1.1 / 5.0 codec: framing, decoding and encoding of every packet.
//!
//! Decoding takes a `BytesMut` holding what has been read from the peer. It either consumes
//! exactly one packet, or consumes nothing and says how many more bytes it needs, or consumes
//! nothing and returns a typed error. Strings, binary data and payloads in the decoded packet
//! are slices of the input (no copy).
//!
//! Encoding a PUBLISH can write its header alone (`write_publish_header`), so that one payload
//! `Bytes` is sent to many subscribers with only the header built per subscriber.
