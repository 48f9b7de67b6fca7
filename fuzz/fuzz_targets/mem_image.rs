//! `memimage::Header::decode` reads the first bytes of a memory checkpoint
//! that came back from the cache, the PFS or the DR site: it must never
//! panic or allocate without bound, anything it accepts must encode back to
//! exactly the bytes it read, and its lengths must add up without overflow.

#![no_main]

use libckpt::memimage::{Header, FIXED_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= FIXED_HEADER {
        let _ = Header::needed(&data[..FIXED_HEADER]);
    }
    let Ok(h) = Header::decode(data) else {
        return;
    };
    let bytes = h.encode();
    assert_eq!(bytes.len() as u64, h.header_len());
    assert_eq!(
        &data[..bytes.len()],
        &bytes[..],
        "re-encoded header differs"
    );
    assert_eq!(Header::decode(&bytes).as_ref(), Ok(&h));
    // The layout stays inside the file the header describes.
    let len = h.file_len();
    for (r, off) in h.layout() {
        let end = off + r.bytes().expect("checked length");
        assert!(off >= h.header_len() && end <= len);
    }
    let _ = h.check_file_len(data.len() as u64);
});
