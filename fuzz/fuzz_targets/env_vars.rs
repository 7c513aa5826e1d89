//! ACSPEED_* values as users write them (one NAME=value per line): parse or fail with an
//! error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = acspeed_core::Config::from_vars(&vars);
    for (_, v) in &vars {
        let _ = acspeed_core::config::parse_size_rules("ACSPEED_ALLREDUCE", v);
        let _ = acspeed_core::config::parse_size(v);
    }
});
