//! Shrinking: cuts a failing plan down while the same invariant still
//! breaks. Passes, repeated until none helps: drop the last node (and every
//! step naming it), drop halves then quarters ... then single steps, shorten
//! the fault phase, shrink recordings. Each candidate is re-run from scratch
//! (runs are deterministic), so the result replays exactly.

use super::plan::{Action, Op, Plan, Topology};
use super::run::run;
use super::Failure;

/// The plan as text (JSON), for `--replay`.
pub fn plan_to_text(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub fn plan_from_text(text: &str) -> Result<Plan, String> {
    serde_json::from_str(text).map_err(|e| format!("not a recsync-sim plan: {e}"))
}

fn fails_same(plan: &Plan, invariant: &str) -> Option<Failure> {
    run(plan, false)
        .failure
        .filter(|f| f.invariant == invariant)
}

/// Removes node `n` (the last) from a plan.
fn without_last_node(plan: &Plan) -> Option<Plan> {
    let n = plan.knobs.nodes;
    if n <= 2 {
        return None;
    }
    let gone = n - 1;
    let mut p = plan.clone();
    p.knobs.nodes = n - 1;
    if p.knobs.topology == Topology::Star && gone == 0 {
        return None;
    }
    p.knobs.links.retain(|l| l.from != gone && l.to != gone);
    p.steps.retain(|s| !s.action.nodes().contains(&gone));
    for s in &mut p.steps {
        if let Action::Partition { left } = &mut s.action {
            left.retain(|x| *x != gone);
        }
    }
    p.steps
        .retain(|s| !matches!(&s.action, Action::Partition { left } if left.is_empty()));
    Some(p)
}

/// Cuts `plan` down; `log` hears about progress. `None` if it passes.
pub fn shrink(plan: &Plan, mut log: impl FnMut(String)) -> Option<(Plan, Failure)> {
    let first = run(plan, false).failure?;
    let invariant = first.invariant;
    log(format!(
        "shrinking seed {} ({} nodes, {} steps): {first}",
        plan.seed,
        plan.knobs.nodes,
        plan.steps.len()
    ));
    let mut best = plan.clone();
    let mut failure = first;
    let try_it = |cand: Plan, best: &mut Plan, failure: &mut Failure| -> bool {
        match fails_same(&cand, invariant) {
            Some(f) => {
                *best = cand;
                *failure = f;
                true
            }
            None => false,
        }
    };
    loop {
        let before = (
            best.knobs.nodes,
            best.steps.len(),
            best.knobs.fault_phase_ms,
        );
        while let Some(cand) = without_last_node(&best) {
            if !try_it(cand, &mut best, &mut failure) {
                break;
            }
            log(format!(
                "  {} nodes, {} steps",
                best.knobs.nodes,
                best.steps.len()
            ));
        }
        // Delete chunks of steps, halving the chunk size.
        let mut chunk = best.steps.len().div_ceil(2).max(1);
        while chunk >= 1 {
            let mut at = 0;
            while at < best.steps.len() {
                let mut cand = best.clone();
                let end = (at + chunk).min(cand.steps.len());
                cand.steps.drain(at..end);
                if try_it(cand, &mut best, &mut failure) {
                    log(format!(
                        "  {} nodes, {} steps",
                        best.knobs.nodes,
                        best.steps.len()
                    ));
                } else {
                    at += chunk;
                }
            }
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
        // Shorter fault phase: the last step's time is enough.
        let last = best.steps.last().map_or(0, |s| s.at_ms + 1);
        if last < best.knobs.fault_phase_ms {
            let mut cand = best.clone();
            cand.knobs.fault_phase_ms = last;
            try_it(cand, &mut best, &mut failure);
        }
        // Smaller recordings.
        for i in 0..best.steps.len() {
            let mut cand = best.clone();
            let mut changed = false;
            if let Action::Write { ops, .. } = &mut cand.steps[i].action {
                for op in ops.iter_mut() {
                    if let Op::Recording { len, .. } = op {
                        if *len > 1_000 {
                            *len = 1_000;
                            changed = true;
                        }
                    }
                }
            }
            if changed {
                try_it(cand, &mut best, &mut failure);
            }
        }
        let after = (
            best.knobs.nodes,
            best.steps.len(),
            best.knobs.fault_phase_ms,
        );
        if after == before {
            break;
        }
    }
    Some((best, failure))
}
