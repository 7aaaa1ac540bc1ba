//! What the store's parser must hold to on any file image: no panic; the same answer whatever
//! the read chunks; good records that are exactly the start of the file; after them only zeros
//! (a clean end) or a torn tail running to the end; and repair never failing.

use ringcast::store::frame::{encode_record, End, Parser, RECORD_HEADER_BYTES};

/// Parses `image` (the bytes after a file header) in one piece and in chunks of `chunk` bytes.
pub fn parse_checked(image: &[u8], chunk: usize) {
    let whole = parse(image, image.len().max(1), false);
    assert_eq!(
        whole,
        parse(image, chunk.max(1), false),
        "chunking changed the answer"
    );
    let repaired = parse(image, chunk.max(1), true).expect("repair never fails");
    match whole {
        Ok((end_offset, end, records)) => {
            let mut again = Vec::new();
            for r in &records {
                encode_record(r, &mut again);
            }
            let good = end_offset as usize;
            assert_eq!(&again[..], &image[..good], "records are the file's start");
            match end {
                End::Clean => assert!(image[good..].iter().all(|&b| b == 0)),
                End::Torn { bytes } => assert_eq!(bytes as usize, image.len() - good),
            }
            assert_eq!(repaired.2, records, "repair changes nothing without damage");
        }
        Err(offset) => {
            assert!(offset as usize <= image.len(), "damage inside the file");
            assert!(repaired.2.len() as u64 <= image.len() as u64 / RECORD_HEADER_BYTES as u64);
        }
    }
}

type Parsed = Result<(u64, End, Vec<bytes::Bytes>), u64>;

fn parse(image: &[u8], chunk: usize, repair: bool) -> Parsed {
    let mut parser = Parser::new(0);
    for c in image.chunks(chunk) {
        parser.feed(c);
    }
    match parser.finish(repair) {
        Ok((outcome, records)) => Ok((outcome.end_offset, outcome.end, records)),
        Err(damage) => Err(damage.offset),
    }
}
