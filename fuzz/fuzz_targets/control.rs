//! The control socket's decoders see whatever a local process writes to
//! the daemon's socket (and the command sees whatever a daemon, maybe of
//! another version, answers): they must never panic, and anything they
//! accept must survive being written back out unchanged, since the daemon
//! and the command re-encode what they decode.

#![no_main]

use libckpt::control::{
    decode_request, decode_response, encode_request, encode_response, MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let line = encode_request(&req);
        assert_eq!(line.last(), Some(&b'\n'), "request line without newline");
        assert!(
            !line[..line.len() - 1].contains(&b'\n'),
            "request spans lines: {}",
            String::from_utf8_lossy(&line)
        );
        match decode_request(&line) {
            Ok(again) => assert_eq!(again, req, "re-decoded request differs"),
            Err(e) => panic!(
                "an accepted request is refused once re-encoded: {e}; encoded: {}",
                String::from_utf8_lossy(&line)
            ),
        }
    }

    if let Ok(resp) = decode_response(data) {
        let line = encode_response(&resp);
        assert_eq!(line.last(), Some(&b'\n'), "response line without newline");
        assert!(line.len() <= MAX_FRAME + 1, "response over the frame limit");
        match decode_response(&line) {
            Ok(again) => {
                // Re-encoding may lengthen a result near the limit (`1e9`
                // becomes `1000000000`), which then goes out as a failure.
                if data.len() < MAX_FRAME / 4 {
                    assert_eq!(
                        again,
                        resp,
                        "re-decoded response differs; encoded: {}",
                        String::from_utf8_lossy(&line)
                    );
                }
            }
            Err(e) => panic!(
                "an accepted response is refused once re-encoded: {e}; encoded: {}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
});
