//! The S3 tier's parsers of text it does not control: the `s3://` address
//! (config and flags), the shared AWS credentials and config files (INI),
//! and the in-flight markers read back from a bucket anyone with the
//! credentials can write. None may panic or allocate without bound;
//! whatever is accepted must survive being written back out.
//!
//! The first byte picks the parser; the rest is its input.

#![no_main]

use libckpt::s3::creds::parse_ini;
use libckpt::s3::marker::Marker;
use libckpt::s3::S3Url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(u) = S3Url::parse(text) {
                let again = S3Url::parse(&u.to_string())
                    .unwrap_or_else(|e| panic!("{u} re-parses with an error: {e}"));
                assert_eq!(again, u);
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(ini) = parse_ini(&text) {
                for (section, keys) in &ini {
                    assert!(!section.contains(']') || text.contains(section.as_str()));
                    for k in keys.keys() {
                        assert_eq!(k, &k.to_ascii_lowercase());
                    }
                }
            }
        }
        _ => {
            if let Ok(m) = Marker::parse(rest) {
                let again = Marker::parse(&m.to_bytes())
                    .unwrap_or_else(|e| panic!("an accepted marker is refused once written: {e}"));
                assert_eq!(again, m);
            }
        }
    }
});
