//! Connect streaming framing (envd): any bytes are refused with a Connect
//! error or parsed; a parsed message re-framed parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandpool_runtime::envd::{envelope, parse_envelope};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = parse_envelope(data, MAX) {
        let framed = envelope(0, &msg);
        let again = parse_envelope(&framed, usize::MAX).expect("a re-framed message parses");
        assert_eq!(again, msg);
    }
});
