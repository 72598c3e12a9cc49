//! `recsync`: the command-line entry point of the root package.
//!
//! For now it has one job, `recsync demo` (also what runs with no
//! arguments): a three-node cluster (A, B, C in a full mesh) simulated in
//! this process with `recsync_sim`'s deterministic harness. It replicates a
//! few users, splits A from B and C, writes on both sides of the split
//! (including edits of the same user and a delete against an update), heals,
//! and prints the conflicts each node reported, how last-writer-wins settled
//! them, the final state of every node and the per-peer status; then it
//! restarts the nodes with tombstone purging on and shows a delete purged
//! on all three. The run is
//! seeded and uses simulated time only, so it prints the same thing every
//! time and takes a few milliseconds. It exits with 1 if the nodes do not
//! converge.
//!
//! `recsync inspect DIR` and `recsync verify DIR` read a node's data
//! directory (see `tool.rs`). The argument parsing is `std::env::args`: three
//! fixed command shapes do not need a parser crate yet.

mod tool;

use recsync_engine::{Body, ConflictReport, Event, Key, NodeId, Resolution, Version, WriteOp};
use recsync_sim::cluster::{index_of, labels, node_id, put_req, ClusterBuilder};
use recsync_sim::Cluster;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "\
recsync: multi-master asynchronous replication for call-recording servers

Usage:
  recsync [demo]     run the demo: a 3-node cluster simulated in-process,
                     a partition, divergent writes, heal, conflicts, convergence
  recsync inspect DIR
                     print a data directory: segments, entries, per-origin
                     counters, blobs, and the first bad checksum if any
  recsync verify DIR check every checksum in a data directory; exit 0 when
                     clean, 1 on corruption (prints the first bad location),
                     3 when only the last write was torn by a crash (opening
                     the log cuts it), 4 when DIR is not a data directory
  recsync help       print this help (also --help, -h)
";

/// Exit status for a command line we do not understand.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["demo"] => demo(),
        ["help" | "--help" | "-h", ..] => {
            // A closed stdout (`recsync help | head -1`) is not an error.
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            ExitCode::SUCCESS
        }
        ["inspect", dir] => tool::inspect(dir),
        ["verify", dir] => tool::verify(dir),
        ["inspect" | "verify"] => usage_error("give the node's data directory"),
        ["inspect" | "verify", _, extra, ..] => {
            usage_error(&format!("one data directory only, got also {extra:?}"))
        }
        ["demo", extra, ..] => usage_error(&format!("demo takes no arguments, got {extra:?}")),
        [other, ..] => usage_error(&format!("unknown command {other:?}")),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("recsync: {message}\n");
    eprint!("{USAGE}");
    ExitCode::from(EXIT_USAGE)
}

/// Where the demo prints: stdout, line by line. Once stdout is closed
/// (`recsync demo | head`) it quietly prints nothing more instead of
/// panicking, and the demo still runs to its verdict.
struct Report {
    out: std::io::Stdout,
    closed: bool,
}

impl Report {
    fn stdout() -> Self {
        Self {
            out: std::io::stdout(),
            closed: false,
        }
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if !self.closed && writeln!(self.out, "{args}").is_err() {
            self.closed = true;
        }
    }
}

/// `println!` for a [`Report`].
macro_rules! say {
    ($r:expr) => {
        $r.line(format_args!(""))
    };
    ($r:expr, $($arg:tt)*) => {
        $r.line(format_args!($($arg)*))
    };
}

// ----- the demo ---------------------------------------------------------------

/// The demo's fixed seed: same seed, same run, same output.
const SEED: u64 = 2026;
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const NODES: [usize; 3] = [A, B, C];
/// Bound on simulated time for each replication phase to settle.
const SETTLE_MS_MAX: u64 = 120_000;

const ALICE: Key = Key::from_u128(0xA11CE);
const BOB: Key = Key::from_u128(0xB0B);
const CAROL: Key = Key::from_u128(0xCA501);
const DAVE: Key = Key::from_u128(0xDA7E);
const CALL_1001: Key = Key::from_u128(0x1001);

/// The short names the demo shows instead of UUIDs.
const KEY_NAMES: [(Key, &str); 5] = [
    (ALICE, "users/alice"),
    (BOB, "users/bob"),
    (CAROL, "users/carol"),
    (DAVE, "users/dave"),
    (CALL_1001, "recordings/call-1001"),
];

fn key_name(key: &Key) -> String {
    KEY_NAMES
        .iter()
        .find(|(k, _)| k == key)
        .map_or_else(|| format!("{key:?}"), |(_, name)| (*name).to_owned())
}

fn node_name(i: usize) -> &'static str {
    ["A", "B", "C"].get(i).copied().unwrap_or("?")
}

fn origin_name(id: NodeId) -> &'static str {
    node_name(index_of(id))
}

/// One application call on one node, as the demo script says it.
enum Op {
    Put(Key, &'static str, &'static str),
    Delete(Key),
}

/// A write, `at_ms` after the partition started, on node `on`.
struct Step {
    at_ms: u64,
    on: usize,
    op: Op,
}

fn initial_users() -> [(Key, &'static str); 4] {
    [
        (ALICE, r#"{"role":"agent"}"#),
        (BOB, r#"{"role":"agent"}"#),
        (CAROL, r#"{"team":"day"}"#),
        (DAVE, r#"{"team":"day"}"#),
    ]
}

/// The writes on both sides of the partition, in time order.
fn divergent_writes() -> Vec<Step> {
    let step = |at_ms, on, op| Step { at_ms, on, op };
    vec![
        step(100, A, Op::Put(ALICE, "user", r#"{"role":"admin"}"#)),
        step(120, B, Op::Delete(BOB)),
        step(150, A, Op::Put(BOB, "user", r#"{"role":"lead"}"#)),
        step(200, B, Op::Put(ALICE, "user", r#"{"role":"supervisor"}"#)),
        step(250, B, Op::Put(CAROL, "user", r#"{"team":"night"}"#)),
        step(300, A, Op::Delete(CAROL)),
        step(350, B, Op::Put(DAVE, "user", r#"{"team":"night"}"#)),
        step(
            400,
            C,
            Op::Put(CALL_1001, "recording", r#"{"agent":"dave","secs":312}"#),
        ),
    ]
}

fn demo() -> ExitCode {
    let r = &mut Report::stdout();
    say!(
        r,
        "recsync demo: nodes A, B, C in a full mesh, simulated in-process (seed {SEED})"
    );
    say!(
        r,
        "conflict policy: last_writer_wins (greatest hybrid-clock timestamp, then node)"
    );
    let mut c = ClusterBuilder::new(SEED, NODES.len()).mesh().build();
    if let Err(why) = replicate_initial_users(r, &mut c) {
        return failed(&why);
    }
    let t0 = c.now_ms();
    if let Err(why) = partition_and_write(r, &mut c, t0) {
        return failed(&why);
    }
    say!(
        r,
        "\n4. Heal: the partition ends, sessions resume from their last acknowledged point"
    );
    c.heal();
    match c.run_until_settled(SETTLE_MS_MAX) {
        Ok(ms) => say!(r, "   settled after {ms} ms of simulated time"),
        Err(l) => return failed(&format!("replication did not settle after the heal: {l:?}")),
    }
    print_conflicts(r, &c, t0);
    let converged = print_convergence(r, &c);
    print_peer_status(r, &c);
    if !converged {
        return failed("the nodes' state digests differ");
    }
    say!(r, "\nconverged: A, B and C hold the same state");
    if let Err(why) = purge_tombstones(r, &mut c) {
        return failed(&why);
    }
    ExitCode::SUCCESS
}

/// Step 8: the operator turns tombstone purging on (a restart of each
/// node with the new config); the deletes, stable everywhere, are purged.
fn purge_tombstones(r: &mut Report, c: &mut Cluster) -> Result<(), String> {
    say!(
        r,
        "\n8. Tombstone purge: each node restarts with tombstone_purge on; a delete's tombstone"
    );
    say!(
        r,
        "   goes once every node holds it and nothing written without knowledge of it can arrive"
    );
    let waiting = |c: &Cluster| -> usize {
        NODES
            .iter()
            .map(|&i| c.node(i).purge_status().waiting)
            .sum()
    };
    for i in NODES {
        c.reconfigure(i, |cfg| {
            cfg.tombstone_purge = true;
            cfg.timing.trim_interval_ms = 1_000;
        });
    }
    // users/carol still stands as a delete and the concurrent update it
    // won over; deleting it again on A supersedes both.
    c.delete(A, CAROL);
    say!(
        r,
        "   A deletes users/carol again (its delete and the update it won over both stood)"
    );
    let start = c.now_ms();
    while waiting(c) < NODES.len() && c.now_ms() < start + SETTLE_MS_MAX {
        c.run_for(100);
    }
    let before = waiting(c);
    while waiting(c) > 0 && c.now_ms() < start + SETTLE_MS_MAX {
        c.run_for(500);
    }
    let left = waiting(c);
    say!(
        r,
        "   lone tombstones (over the three nodes): {before}, then {left} after {} ms of simulated time",
        c.now_ms() - start
    );
    for (key, name) in KEY_NAMES {
        let shown: Vec<String> = NODES.map(|i| shown_value(c, i, &key)).to_vec();
        if shown.iter().all(|v| v == "(absent)") {
            say!(r, "   {name:<22}purged on A, B and C (reads as absent)");
        }
    }
    if left > 0 {
        return Err(format!("{left} tombstones were not purged"));
    }
    c.run_until_settled(SETTLE_MS_MAX)
        .map_err(|l| format!("no quiet after the purge: {l:?}"))?;
    if !c.digests_equal(&NODES) {
        return Err("the nodes' state digests differ after the purge".into());
    }
    say!(r, "   state digests equal again: nothing came back");
    Ok(())
}

fn failed(why: &str) -> ExitCode {
    eprintln!("recsync demo: FAILED: {why}");
    ExitCode::FAILURE
}

fn replicate_initial_users(r: &mut Report, c: &mut Cluster) -> Result<(), String> {
    say!(r, "\n1. Initial users, written on A");
    for (key, meta) in initial_users() {
        write(c, A, &Op::Put(key, "user", meta))?;
        say!(r, "   A  put     {:<22}{meta}", key_name(&key));
    }
    let ms = c
        .run_until_settled(SETTLE_MS_MAX)
        .map_err(|l| format!("initial replication did not settle: {l:?}"))?;
    if !c.digests_equal(&NODES) {
        return Err("initial replication left different states".into());
    }
    let counts: Vec<String> = NODES
        .iter()
        .map(|&i| format!("{} {}", node_name(i), c.node(i).keys().count()))
        .collect();
    say!(
        r,
        "   replicated in {ms} ms (simulated); keys per node: {}",
        counts.join(", ")
    );
    Ok(())
}

/// Carries out one scripted write on node `on`.
fn write(c: &mut Cluster, on: usize, op: &Op) -> Result<(), String> {
    let op = match *op {
        Op::Put(key, class, meta) => WriteOp::Put(put_req(key, labels(class), meta.as_bytes())),
        Op::Delete(key) => WriteOp::Delete(key),
    };
    c.try_write(on, vec![op])
        .map(|_| ())
        .map_err(|e| format!("write on {} failed: {e}", node_name(on)))
}

fn partition_and_write(r: &mut Report, c: &mut Cluster, t0: u64) -> Result<(), String> {
    say!(
        r,
        "\n2. Partition: A | B C  (A is cut off; B and C still reach each other)"
    );
    c.partition(&[&[A], &[B, C]]);
    say!(
        r,
        "\n3. Writes on both sides of the partition (time after the split)"
    );
    for s in divergent_writes() {
        c.run_until(t0 + s.at_ms);
        write(c, s.on, &s.op)?;
        let who = node_name(s.on);
        let at = format!("t+{}ms", s.at_ms);
        match s.op {
            Op::Put(key, _, meta) => {
                say!(r, "   {at:<9}{who}  put     {:<22}{meta}", key_name(&key));
            }
            Op::Delete(key) => {
                say!(r, "   {at:<9}{who}  delete  {}", key_name(&key));
            }
        }
    }
    c.run_for(100);
    say!(
        r,
        "   still split; what each side wrote waits in its per-peer backlogs:"
    );
    for (i, j) in [(A, B), (A, C), (B, A), (C, A)] {
        let pending = c
            .node(i)
            .peer_status(&node_id(j))
            .map_or(0, |s| s.pending_versions);
        say!(
            r,
            "   {} -> {}  {pending} versions pending",
            node_name(i),
            node_name(j)
        );
    }
    Ok(())
}

/// How a version reads in the demo: `B#2  t+200ms  put  {...}`.
fn describe(v: &Version, t0: u64) -> String {
    let what = match &v.body {
        Body::Live { meta, .. } => format!("put     {}", String::from_utf8_lossy(meta)),
        Body::Tombstone => "delete".to_owned(),
    };
    let dot = format!("{}#{}", origin_name(v.origin), v.dot.counter);
    let at = format!("t+{}ms", v.hlc.wall_ms.saturating_sub(t0));
    format!("{dot:<5} {at:<9}{what}")
}

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::Identical => "identical content",
        Resolution::LastWriterWins => "last_writer_wins",
        Resolution::Priority => "priority",
        Resolution::Manual => "manual (siblings kept for the application)",
    }
}

fn print_conflicts(r: &mut Report, c: &Cluster, t0: u64) {
    say!(r, "\n5. Conflicts reported (Event::Conflict), per node");
    // The same conflict, as each node that reported it saw it.
    let mut reports: BTreeMap<Key, Vec<(usize, &ConflictReport)>> = BTreeMap::new();
    for i in NODES {
        let mine: Vec<&ConflictReport> = c
            .events(i)
            .iter()
            .filter_map(|e| match e {
                Event::Conflict(report) => Some(report),
                _ => None,
            })
            .collect();
        let keys: Vec<String> = mine.iter().map(|report| key_name(&report.key)).collect();
        say!(
            r,
            "   {} reported {}: {}",
            node_name(i),
            mine.len(),
            keys.join(", ")
        );
        for report in mine {
            reports.entry(report.key).or_default().push((i, report));
        }
    }
    say!(
        r,
        "\n   How each was resolved (versions named origin#counter, times after the split):"
    );
    for (key, _) in KEY_NAMES {
        if let Some(seen) = reports.get(&key) {
            print_resolution(r, &key, seen, t0);
        }
    }
    say!(
        r,
        "   The greatest (hybrid-clock time, node) wins on every node without talking;"
    );
    say!(
        r,
        "   losers stay listed among the key's versions until a later write covers them."
    );
}

fn print_resolution(r: &mut Report, key: &Key, seen: &[(usize, &ConflictReport)], t0: u64) {
    let Some((_, first)) = seen.first() else {
        return;
    };
    let same = seen
        .iter()
        .all(|(_, other)| other.winner == first.winner && other.versions == first.versions);
    let by: Vec<&str> = seen.iter().map(|(i, _)| node_name(*i)).collect();
    say!(r, "   {} (reported by {})", key_name(key), by.join(", "));
    let lines: Vec<(String, bool)> = first
        .versions
        .iter()
        .map(|v| (describe(v, t0), first.winner == Some(v.dot)))
        .collect();
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
    for (line, won) in lines {
        let mark = if won { "<- winner" } else { "   loses" };
        say!(r, "      {line:<width$}{mark}");
    }
    let agreement = if same {
        "all reporting nodes chose the same winner"
    } else {
        "REPORTS DISAGREE"
    };
    say!(
        r,
        "      resolution: {}; {agreement}",
        resolution_name(first.resolution)
    );
}

/// What a node shows for a key: its metadata, or that it is deleted.
fn shown_value(c: &Cluster, i: usize, key: &Key) -> String {
    match c.node(i).get(key) {
        None => "(absent)".to_owned(),
        Some(o) if o.winner.is_none() => format!("({} siblings)", o.siblings.len()),
        Some(o) if o.is_deleted() => "(deleted)".to_owned(),
        Some(o) => String::from_utf8_lossy(o.meta().unwrap_or_default()).into_owned(),
    }
}

fn print_convergence(r: &mut Report, c: &Cluster) -> bool {
    say!(r, "\n6. Convergence");
    let digests: Vec<String> = NODES
        .iter()
        .map(|&i| {
            let d = c.node(i).state_digest();
            let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("{} {hex}", node_name(i))
        })
        .collect();
    let converged = c.digests_equal(&NODES);
    let verdict = if converged { "all equal" } else { "DIFFERENT" };
    say!(r, "   state digests: {}  ({verdict})", digests.join("  "));
    let rows: Vec<(&str, Vec<String>)> = KEY_NAMES
        .iter()
        .map(|(key, name)| (*name, NODES.map(|i| shown_value(c, i, key)).to_vec()))
        .collect();
    let width = rows
        .iter()
        .flat_map(|(_, values)| values.iter().map(String::len))
        .max()
        .unwrap_or(0)
        + 2;
    say!(r);
    say!(
        r,
        "   {:<22}{:<width$}{:<width$}on C",
        "key",
        "on A",
        "on B"
    );
    for (name, values) in rows {
        say!(
            r,
            "   {name:<22}{:<width$}{:<width$}{}",
            values[0],
            values[1],
            values[2]
        );
    }
    converged
}

fn print_peer_status(r: &mut Report, c: &Cluster) {
    say!(r, "\n7. Peer status after convergence");
    let now = c.now_ms();
    for i in NODES {
        for j in NODES.into_iter().filter(|&j| j != i) {
            let Some(s) = c.node(i).peer_status(&node_id(j)) else {
                continue;
            };
            let link = if s.connected { "connected" } else { "down" };
            let last = s.last_success_ms.map_or_else(
                || "never".to_owned(),
                |t| format!("{} ms ago", now.saturating_sub(t)),
            );
            say!(
                r,
                "   {} -> {}  {link:<9}  pending {} versions  sent {:>2} versions in {:>2} batches  last success {last}",
                node_name(i),
                node_name(j),
                s.pending_versions,
                s.stats.versions_sent,
                s.stats.batches_sent,
            );
        }
    }
}
