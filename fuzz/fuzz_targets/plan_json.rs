//! Plan files: the verifier must reject bad plans with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // A file holds one plan or a list of plans (one per rank).
    let plans: Vec<acspeed_core::RankPlan> =
        match serde_json::from_str::<Vec<acspeed_core::RankPlan>>(&text) {
            Ok(v) => v,
            Err(_) => match acspeed_core::RankPlan::from_json(&text) {
                Ok(p) => vec![p],
                Err(_) => return,
            },
        };
    if plans.len() <= 32
        && plans
            .iter()
            .all(|p| p.nranks <= 32 && p.num_steps() <= 4096)
    {
        let _ = acspeed_core::verify::verify_all_models(&plans, Some(7));
    }
});
