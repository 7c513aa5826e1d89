//! Frame headers as they arrive off a socket: decode and check, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = acspeed_transports::fuzz_frame(data);
});
