//! `nvidia-smi topo -m` text from users: must parse or fail cleanly, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = acspeed_core::topology::nvsmi::parse(&text) {
        // Whatever parses must be a valid description with a model and a rendering.
        d.validate().expect("parse returns validated descriptions");
        let _ = acspeed_core::topology::TopoModel::from_description(&d)
            .expect("valid description has a model");
        let _ = acspeed_core::topology::render(&d);
    }
});
