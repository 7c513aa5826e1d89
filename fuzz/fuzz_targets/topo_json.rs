//! ACSPEED_TOPO_FILE contents: load, model and render without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) =
        acspeed_core::topology::TopoDescription::from_json(&String::from_utf8_lossy(data))
    {
        let _ = acspeed_core::topology::TopoModel::from_description(&d)
            .expect("loaded descriptions are valid");
        let _ = acspeed_core::topology::render(&d);
    }
});
