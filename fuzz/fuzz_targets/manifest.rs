//! `Manifest::parse` sees bytes from other nodes, the parallel filesystem and
//! the DR site: it must never panic, and anything it accepts must survive
//! being written back out, since that is exactly what the drain does.

#![no_main]

use libckpt::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    let bytes = m.to_bytes();
    match Manifest::parse(&bytes) {
        Ok(again) => assert_eq!(
            again,
            m,
            "re-parse differs; serialized: {}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => panic!(
            "an accepted manifest is refused once re-serialized: {e}; serialized: {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
});
