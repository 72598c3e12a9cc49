//! Simulator seeds that once failed, run whole: each names what it found
//! and where the fix is. Hand-written scenarios in `regressions.rs` are
//! preferred; a seed is kept here when the failure needs the plan's whole
//! history (here: the oracle's rule for where a version must go after
//! wipes, in `swarm::oracle`).

use recsync_sim::swarm::{run, Plan};

fn passes(seed: u64) {
    passes_in(seed, false);
}

fn passes_in(seed: u64, swarm: bool) {
    let out = run(&Plan::generate(seed, swarm), false);
    assert!(
        out.failure.is_none(),
        "seed {seed}: {}",
        out.failure.map(|f| f.to_string()).unwrap_or_default()
    );
}

/// Oracle: a recording written on node 2 of the chain 0-1-2-3 survives a
/// run of wipes only on node 0, whose link to node 1 excludes recordings;
/// nothing can carry it on, and the oracle no longer asks for it (a wipe
/// moves a version's sources to the nodes that still hold it durably).
#[test]
fn seed_3_wiped_holders_behind_a_filter() {
    passes(3);
}

/// Oracle: node 1 of a star writes a class its one inbound link (from the
/// hub) excludes, and is wiped: it never gets its own write back, rightly.
#[test]
fn seed_56_wiped_origin_behind_a_filter() {
    passes(56);
}

/// Engine: duplicated acknowledgements each sent the sender back to the
/// same position and resent its window; each resent batch arriving out of
/// sequence brought another acknowledgement, and the traffic multiplied
/// within one simulated instant (swarm seed 71: a ring with two-version
/// batches). A go-back to one position now happens once per ack timeout
/// (`Peer::last_go_back`).
#[test]
fn swarm_seed_71_ack_storm() {
    passes_in(71, true);
}
