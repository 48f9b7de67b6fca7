//! `PageIndex::parse` reads `ckptfs-pages.idx` from sets staged in from any
//! tier: it must never panic or allocate without bound, and anything it
//! accepts must survive being written back out.

#![no_main]

use libckpt::criu::pages::PageIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(idx) = PageIndex::parse(data) else {
        return;
    };
    let bytes = idx.to_bytes();
    assert_eq!(
        bytes.as_slice(),
        data,
        "an accepted index re-serializes differently"
    );
    match PageIndex::parse(&bytes) {
        Ok(again) => assert_eq!(again, idx),
        Err(e) => panic!("an accepted index is refused once re-serialized: {e}"),
    }
    let _ = idx.needs();
});
