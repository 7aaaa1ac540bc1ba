//! The on-disk format, sans I/O: file headers, records and the parser that reads them back.
//! Public for the fuzz target (`fuzz/fuzz_targets/store_parse.rs`); the broker uses `Store`.
//!
//! A file is a 24-byte header (magic, generation, CRC32 of both) followed by records. A record
//! is its length (u32 LE), a CRC32 over the length bytes and the data (u32 LE), then the data.
//! The length is under the checksum so that a damaged length is caught instead of sending the
//! reader into the middle of another record. Zero bytes after the last record are the unused
//! rest of a block (the log is written in whole blocks): a zero header never checks out, because
//! the CRC32 of four zero bytes is not zero.

use bytes::Bytes;

/// Bytes of a record's header: length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Largest record the framing accepts. The interface promises callers room for records under
/// 16 MiB; the framing allows more so that a broker configured for huge packets never panics.
pub const RECORD_BYTES_MAX: usize = 1 << 30;
/// Bytes of a file header.
pub const FILE_HEADER_BYTES: usize = 24;

/// Which file a header opens; the magic differs so that a log is never read as a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `shard-N.snap`.
    Snapshot,
    /// `shard-N.log`.
    Log,
}

impl Kind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Kind::Snapshot => b"RCSNAP01",
            Kind::Log => b"RCLOG001",
        }
    }
}

thread_local! {
    /// A fresh hasher to clone: `Hasher::new` asks the CPU which implementation to use each
    /// time (5% of the cost of writing a small record).
    static HASHER: crc32fast::Hasher = crc32fast::Hasher::new();
}

/// A fresh CRC32 hasher.
fn hasher() -> crc32fast::Hasher {
    HASHER.with(crc32fast::Hasher::clone)
}

/// Appends one framed record to `out`.
pub fn encode_record(record: &[u8], out: &mut Vec<u8>) {
    encode_record_with(out, |out| out.extend_from_slice(record));
}

/// Appends one framed record to `out` whose data `write` appends: no copy of the data is
/// made, the header is filled in around it afterwards. Returns the data's length.
pub fn encode_record_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    write(out);
    seal_record(&mut out[start..])
}

/// Fills in the header of a record laid out as header-sized room then its data, now that the
/// data is complete. Returns the data's length.
pub fn seal_record(framed: &mut [u8]) -> usize {
    let len = framed.len() - RECORD_HEADER_BYTES;
    assert!(len < RECORD_BYTES_MAX, "a store record must be under 1 GiB");
    let len_bytes = (len as u32).to_le_bytes();
    let mut crc = hasher();
    crc.update(&len_bytes);
    crc.update(&framed[RECORD_HEADER_BYTES..]);
    framed[..4].copy_from_slice(&len_bytes);
    framed[4..RECORD_HEADER_BYTES].copy_from_slice(&crc.finalize().to_le_bytes());
    len
}

/// Bytes `encode_record` adds for a record of `len` bytes.
pub fn framed_len(len: usize) -> u64 {
    (RECORD_HEADER_BYTES + len) as u64
}

/// The header of a file of `kind` at `generation`.
pub fn encode_header(kind: Kind, generation: u64) -> [u8; FILE_HEADER_BYTES] {
    let mut h = [0u8; FILE_HEADER_BYTES];
    h[..8].copy_from_slice(kind.magic());
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What the first bytes of a file say.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// A good header of that generation.
    Good(u64),
    /// Fewer bytes than a header, or only zeros: the file was created and the crash came before
    /// its header reached the disk.
    Unwritten,
    /// Something else: not one of our files, or damaged.
    Bad,
}

/// Reads a file's header of `kind` from its first bytes.
pub fn decode_header(kind: Kind, bytes: &[u8]) -> Header {
    if bytes.len() < FILE_HEADER_BYTES {
        let prefix = encode_header(kind, 0);
        // A torn header still starts with the magic (or is empty).
        let n = bytes.len().min(8);
        return if bytes[..n] == prefix[..n] || is_zero(bytes) {
            Header::Unwritten
        } else {
            Header::Bad
        };
    }
    let h = &bytes[..FILE_HEADER_BYTES];
    if is_zero(h) {
        return Header::Unwritten;
    }
    let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if &h[..8] != kind.magic() || crc32fast::hash(&h[..16]) != crc {
        return Header::Bad;
    }
    Header::Good(u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")))
}

/// True when every byte is zero (unused block space).
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// What stands at a position of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A good record of this many data bytes.
    Record(usize),
    /// Not enough bytes to tell.
    Incomplete,
    /// A record that does not check out.
    Bad(&'static str),
}

fn next(data: &[u8], at: usize) -> Next {
    let rest = &data[at..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Next::Incomplete;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len >= RECORD_BYTES_MAX {
        return Next::Bad("record length beyond the limit");
    }
    if rest.len() < RECORD_HEADER_BYTES + len {
        return Next::Incomplete;
    }
    let want = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let mut crc = hasher();
    crc.update(&rest[..4]);
    crc.update(&rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len]);
    if crc.finalize() != want {
        return Next::Bad("checksum mismatch");
    }
    Next::Record(len)
}

/// The first position after `from` where a complete, good record starts.
fn next_good(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(RECORD_HEADER_BYTES - 1))
        .find(|&at| matches!(next(data, at), Next::Record(_)))
}

/// How the records of a file ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The records ran to the end of the file (or to zero padding).
    Clean,
    /// A partial or bad record with nothing good after it: a write cut by a crash.
    Torn {
        /// Bytes from the last good record to the end of the file.
        bytes: u64,
    },
}

/// A bad record with good records after it (not a torn tail).
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    /// File offset of the bad record.
    pub offset: u64,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Reads records out of a file fed in chunks. Records are copied out of the chunks one by one
/// (each its own allocation), so that a record the owner keeps does not pin a whole read buffer.
pub struct Parser {
    /// Bytes not yet parsed; `buf[0]` is at file offset `base`.
    buf: Vec<u8>,
    base: u64,
    /// Set once a record fails: from there on everything is kept until `finish`, which needs
    /// the rest of the file to tell a torn tail from damage in the middle.
    damaged: bool,
    /// The good records read so far.
    pub records: Vec<Bytes>,
}

/// What `finish` found: where the good data ends, how, and what repair dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// File offset just after the last good record.
    pub end_offset: u64,
    /// Whether a torn write followed.
    pub end: End,
    /// Offset and length of each damaged stretch that repair dropped.
    pub dropped: Vec<(u64, u64)>,
}

impl Parser {
    /// A parser for records that start at file offset `base`.
    pub fn new(base: u64) -> Parser {
        Parser {
            buf: Vec::new(),
            base,
            damaged: false,
            records: Vec::new(),
        }
    }

    /// Parses the next bytes of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.damaged {
            return;
        }
        let at = self.take_records(0);
        if matches!(next(&self.buf, at), Next::Bad(_)) {
            self.damaged = true;
        }
        // Keep only what is not parsed yet: a partial record, or everything after damage.
        self.buf.drain(..at);
        self.base += at as u64;
    }

    /// Takes the good records from `at` on; returns where they stop.
    fn take_records(&mut self, mut at: usize) -> usize {
        while let Next::Record(len) = next(&self.buf, at) {
            let start = at + RECORD_HEADER_BYTES;
            self.records
                .push(Bytes::copy_from_slice(&self.buf[start..start + len]));
            at = start + len;
        }
        at
    }

    /// At the end of the file: decides how the records ended. A bad or partial record followed
    /// by a good one is damage: an error, or with `repair` dropped up to the good record.
    pub fn finish(mut self, repair: bool) -> Result<(Outcome, Vec<Bytes>), Damage> {
        let mut dropped = Vec::new();
        let mut at = 0;
        loop {
            if is_zero(&self.buf[at..]) {
                let outcome = Outcome {
                    end_offset: self.base + at as u64,
                    end: End::Clean,
                    dropped,
                };
                return Ok((outcome, self.records));
            }
            let why = match next(&self.buf, at) {
                Next::Bad(why) => why,
                _ => "incomplete record",
            };
            let Some(good) = next_good(&self.buf, at + 1) else {
                let outcome = Outcome {
                    end_offset: self.base + at as u64,
                    end: End::Torn {
                        bytes: (self.buf.len() - at) as u64,
                    },
                    dropped,
                };
                return Ok((outcome, self.records));
            };
            let offset = self.base + at as u64;
            if !repair {
                return Err(Damage { offset, why });
            }
            dropped.push((offset, (good - at) as u64));
            at = self.take_records(good);
        }
    }
}
