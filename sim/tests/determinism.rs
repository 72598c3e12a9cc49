//! The simulator is deterministic: the same seed gives the same run, bit for
//! bit (the trace hash covers every frame sent and every event), and
//! different seeds give different runs.

use recsync_sim::swarm::{run, Plan};

/// A seed's plan cut to its first few simulated seconds (debug builds are
/// slow; the property does not depend on length).
fn short(seed: u64, swarm: bool) -> Plan {
    let mut p = Plan::generate(seed, swarm);
    p.knobs.fault_phase_ms = 4_000;
    p.steps.retain(|s| s.at_ms < 4_000);
    p
}

#[test]
fn same_seed_same_trace_hash() {
    for (seed, swarm) in [(7, false), (11, true)] {
        let plan = short(seed, swarm);
        let a = run(&plan, false);
        let b = run(&short(seed, swarm), false);
        assert_ne!(a.trace_hash, [0; 32], "seed {seed}: the run completed");
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} (swarm {swarm})");
        assert_eq!(a.stats.bytes, b.stats.bytes);
        assert_eq!(a.failure, b.failure);
    }
}

#[test]
fn different_seeds_differ() {
    let a = run(&short(1, true), false);
    let b = run(&short(2, true), false);
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn a_plan_survives_its_text_form() {
    use recsync_sim::swarm::shrink::{plan_from_text, plan_to_text};
    let plan = short(5, true);
    let back = plan_from_text(&plan_to_text(&plan)).expect("parses");
    assert_eq!(back, plan);
    assert_eq!(run(&back, false).trace_hash, run(&plan, false).trace_hash);
}
