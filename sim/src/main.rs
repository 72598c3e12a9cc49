//! `recsync-sim`: runs simulated clusters from seeds and judges them (see
//! `swarm`). One seed, a range with a summary, swarm mode, a readable trace,
//! replay from a file, shrinking of a failing run, planted bugs.

use recsync_sim::swarm::{self, Plan};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

/// `println!` that ends the program quietly when stdout is gone (`| head`)
/// instead of panicking.
macro_rules! println {
    ($($t:tt)*) => {{
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(141);
        }
    }};
}

const USAGE: &str = "\
recsync-sim: deterministic simulation of recsync clusters

Usage:
  recsync-sim --seed N [--swarm] [--trace]   run one seed; prints its trace hash
  recsync-sim --seeds A..B [--swarm] [--first-failure]
                                             run seeds A (inclusive) to B
                                             (exclusive) with a summary;
                                             --first-failure stops at the
                                             first failing seed
  recsync-sim --replay FILE [--trace]        run a plan written by --shrink
  recsync-sim --seed N [--swarm] --shrink    cut a failing run down to a
                                             minimal plan and write it to a file
  recsync-sim ... --generator G              draw plans with generator G (7 default;
                                             2 adds tenant/group filters, daily
                                             windows, WAN caps, read faults and
                                             clock drift; 3 adds the
                                             divergent-writes table; 4 weekly
                                             windows and log-uniform recording
                                             lengths; 5 live peer changes;
                                             6 live edits of a peer's cap or
                                             schedule; 7 tombstone-purging
                                             clusters in swarm mode)
  recsync-sim --canary list                  the planted bugs (feature canary)
  recsync-sim --canary NAME ...              run with one planted bug active

Exit status: 0 when every run passed, 1 when one failed, 2 on a bad command line.
";

/// How many of the slowest seeds the range summary names.
const SLOWEST_SHOWN: usize = 5;

struct Args {
    seeds: Option<(u64, u64)>,
    swarm: bool,
    trace: bool,
    shrink: bool,
    first_failure: bool,
    generator: u8,
    replay: Option<String>,
    canary: Option<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        seeds: None,
        swarm: false,
        trace: false,
        shrink: false,
        first_failure: false,
        generator: swarm::plan::GENERATOR_DEFAULT,
        replay: None,
        canary: None,
    };
    let mut it = args.iter();
    while let Some(w) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match w.as_str() {
            "--seed" => {
                let v = value("--seed")?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?}: not a number"))?;
                a.seeds = Some((n, n + 1));
            }
            "--seeds" => {
                let v = value("--seeds")?;
                let (lo, hi) = v
                    .split_once("..")
                    .ok_or(format!("--seeds {v:?}: expected A..B"))?;
                let lo: u64 = lo
                    .parse()
                    .map_err(|_| format!("--seeds {v:?}: bad start"))?;
                let hi: u64 = hi.parse().map_err(|_| format!("--seeds {v:?}: bad end"))?;
                if hi <= lo {
                    return Err(format!("--seeds {v:?}: empty range"));
                }
                a.seeds = Some((lo, hi));
            }
            "--swarm" => a.swarm = true,
            "--trace" => a.trace = true,
            "--shrink" => a.shrink = true,
            "--first-failure" => a.first_failure = true,
            "--generator" => {
                let v = value("--generator")?;
                a.generator = v
                    .parse()
                    .ok()
                    .filter(|g| (1..=swarm::plan::GENERATOR_LATEST).contains(g))
                    .ok_or(format!(
                        "--generator {v:?}: 1 to {}",
                        swarm::plan::GENERATOR_LATEST
                    ))?;
            }
            "--replay" => a.replay = Some(value("--replay")?),
            "--canary" => a.canary = Some(value("--canary")?),
            "-h" | "--help" | "help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn replay_line(seed: u64, a: &Args) -> String {
    let mut s = match &a.replay {
        Some(file) => format!("recsync-sim --replay {file}"),
        None => format!("recsync-sim --seed {seed}"),
    };
    if a.swarm {
        s.push_str(" --swarm");
    }
    if a.generator != swarm::plan::GENERATOR_DEFAULT {
        s.push_str(&format!(" --generator {}", a.generator));
    }
    if let Some(c) = &a.canary {
        s.push_str(&format!(" --canary {c}"));
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("recsync-sim: {e}\n");
            }
            eprint!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    if let Some(c) = &a.canary {
        if c == "list" {
            for name in recsync_engine::canary::names() {
                println!("{name}");
            }
            return ExitCode::SUCCESS;
        }
        if let Err(e) = recsync_engine::canary::activate(c) {
            eprintln!("recsync-sim: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(file) = &a.replay {
        let plan = match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| swarm::shrink::plan_from_text(&t))
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("recsync-sim: {file}: {e}");
                return ExitCode::from(2);
            }
        };
        return one(&plan, &a);
    }
    let Some((lo, hi)) = a.seeds else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    if a.shrink {
        return shrink(lo, &a);
    }
    if hi == lo + 1 {
        return one(&Plan::generate_with(lo, a.swarm, a.generator), &a);
    }
    range(lo, hi, &a)
}

fn one(plan: &Plan, a: &Args) -> ExitCode {
    let started = Instant::now();
    let out = swarm::run(plan, a.trace);
    for l in &out.trace {
        println!("{l}");
    }
    println!("seed {}: {} steps, {} writes ({} acked), {} conflicts, {} bytes, {:.0} simulated s in {:.2} s",
        plan.seed, plan.steps.len(), out.stats.writes, out.stats.acked, out.stats.conflicts,
        out.stats.bytes, out.stats.simulated_ms as f64 / 1000.0, started.elapsed().as_secs_f64());
    if out.stats.purging {
        println!("tombstones purged (over all nodes): {}", out.stats.purged);
    }
    println!("trace hash: {}", hex(&out.trace_hash));
    match out.failure {
        None => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Some(f) => {
            println!("FAILED: {f}");
            println!("replay: {}", replay_line(plan.seed, a));
            ExitCode::from(1)
        }
    }
}

fn range(lo: u64, hi: u64, a: &Args) -> ExitCode {
    let started = Instant::now();
    let total = hi - lo;
    let tty = std::io::stderr().is_terminal();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut conflicts, mut bytes, mut writes, mut sim_ms) = (0u64, 0u64, 0u64, 0u64);
    let (mut purge_runs, mut purged) = (0u64, 0u64);
    let mut worst_lag = (0u64, lo);
    let mut failed = Vec::new();
    let mut range_hash = blake3::Hasher::new();
    let mut seeds_run = 0u64;
    // 5-node runs: simulated ms, real s, count.
    let mut five = (0u64, 0f64, 0u64);
    // The slowest runs by real time: (real s, seed, simulated ms).
    let mut slowest: Vec<(f64, u64, u64)> = Vec::new();
    for (done, seed) in (lo..hi).enumerate() {
        let plan = Plan::generate_with(seed, a.swarm, a.generator);
        let run_started = Instant::now();
        let out = swarm::run(&plan, false);
        slowest.push((
            run_started.elapsed().as_secs_f64(),
            seed,
            out.stats.simulated_ms,
        ));
        slowest.sort_by(|x, y| y.0.total_cmp(&x.0));
        slowest.truncate(SLOWEST_SHOWN);
        if plan.knobs.nodes == 5 {
            five.0 += out.stats.fault_phase_ms;
            five.1 += out.stats.fault_phase_real_s;
            five.2 += 1;
        }
        range_hash.update(&out.trace_hash);
        for (k, v) in &out.stats.faults {
            *faults.entry(k).or_default() += v;
        }
        conflicts += out.stats.conflicts;
        if out.stats.purging {
            purge_runs += 1;
            purged += out.stats.purged;
        }
        bytes += out.stats.bytes;
        writes += out.stats.writes;
        sim_ms += out.stats.simulated_ms;
        if out.stats.heal_to_converged_ms > worst_lag.0 {
            worst_lag = (out.stats.heal_to_converged_ms, seed);
        }
        let done = done as u64 + 1;
        seeds_run = done;
        if let Some(f) = out.failure {
            println!("seed {seed} FAILED: {f}");
            println!("  replay: {}", replay_line(seed, a));
            failed.push(seed);
            if a.first_failure {
                println!("first failure after {done} seeds");
                break;
            }
        }
        if tty {
            let width = 40;
            let filled = (done * width / total) as usize;
            eprint!(
                "\r[{}{}] {done}/{total} seeds, {} failed",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                failed.len()
            );
            let _ = std::io::stderr().flush();
        } else if done.is_multiple_of(100) || done == total {
            eprintln!("{done}/{total} seeds, {} failed", failed.len());
        }
    }
    if tty {
        eprintln!();
    }
    let real = started.elapsed().as_secs_f64();
    println!(
        "seeds run: {seeds_run} ({}), {} failed",
        if a.swarm { "swarm" } else { "standard" },
        failed.len()
    );
    println!("faults injected:");
    for (k, v) in &faults {
        println!("  {k:<22} {v}");
    }
    println!("writes: {writes}, conflicts reported: {conflicts}, bytes moved: {bytes}");
    if purge_runs > 0 {
        println!(
            "runs purging tombstones: {purge_runs}, tombstones purged (over all nodes): {purged}"
        );
    }
    println!(
        "worst replication lag after the heal: {:.1} s (seed {})",
        worst_lag.0 as f64 / 1000.0,
        worst_lag.1
    );
    println!(
        "speed: {:.0} simulated s in {:.1} s real ({:.0}x), {:.0} seeds/minute",
        sim_ms as f64 / 1000.0,
        real,
        sim_ms as f64 / 1000.0 / real.max(1e-9),
        seeds_run as f64 * 60.0 / real.max(1e-9)
    );
    if five.2 > 0 {
        println!(
            "5-node fault phases ({} runs, ~100 writes/s with faults): {:.0} simulated s in {:.1} s real ({:.0}x)",
            five.2,
            five.0 as f64 / 1000.0,
            five.1,
            five.0 as f64 / 1000.0 / five.1.max(1e-9)
        );
    }
    let slow: Vec<String> = slowest
        .iter()
        .map(|(real, seed, sim)| {
            format!(
                "{seed} ({real:.2} s for {:.0} simulated s)",
                *sim as f64 / 1000.0
            )
        })
        .collect();
    println!("slowest seeds: {}", slow.join(", "));
    println!(
        "trace hash of the range: {}",
        hex(range_hash.finalize().as_bytes())
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn shrink(seed: u64, a: &Args) -> ExitCode {
    let plan = Plan::generate_with(seed, a.swarm, a.generator);
    match swarm::shrink::shrink(&plan, |line| eprintln!("{line}")) {
        None => {
            println!("seed {seed} passes: nothing to shrink");
            ExitCode::SUCCESS
        }
        Some((min, failure)) => {
            let file = format!("recsync-sim-seed-{seed}.plan");
            let text = swarm::shrink::plan_to_text(&min);
            if let Err(e) = std::fs::write(&file, &text) {
                eprintln!("recsync-sim: writing {file}: {e}");
                return ExitCode::from(2);
            }
            println!(
                "minimal case: {} nodes, {} steps, {:.0} s of faults; still breaks {}",
                min.knobs.nodes,
                min.steps.len(),
                min.knobs.fault_phase_ms as f64 / 1000.0,
                failure.invariant
            );
            for s in &min.steps {
                println!("  at {:>7} ms: {:?}", s.at_ms, s.action);
            }
            println!("FAILED: {failure}");
            let canary = a
                .canary
                .as_ref()
                .map(|c| format!(" --canary {c}"))
                .unwrap_or_default();
            println!("replay: recsync-sim --replay {file}{canary}");
            ExitCode::from(1)
        }
    }
}
