//! Builds the store parser's fuzz checks on stable and runs them over file images made here:
//! good logs, logs cut short, damaged, and zero-padded.

#[path = "../fuzz/fuzz_targets/store_common.rs"]
mod store_common;

use ringcast::store::frame::encode_record;

#[test]
fn store_parse_checks_pass_on_good_cut_damaged_and_padded_images() {
    let mut image = Vec::new();
    for i in 0..40u32 {
        encode_record(&vec![i as u8; (i * 7 % 90) as usize], &mut image);
    }
    let mut padded = image.clone();
    padded.resize(image.len().div_ceil(512) * 512, 0);
    for chunk in [1, 3, 64, 1000] {
        store_common::parse_checked(&image, chunk);
        store_common::parse_checked(&padded, chunk);
        for cut in (0..image.len()).step_by(13) {
            store_common::parse_checked(&image[..cut], chunk);
        }
        for at in (0..image.len()).step_by(29) {
            let mut bad = image.clone();
            bad[at] ^= 0x10;
            store_common::parse_checked(&bad, chunk);
        }
    }
    store_common::parse_checked(&[0xFF; 100], 7);
    store_common::parse_checked(&[], 1);
}
