#!/usr/bin/env bash
# The storage benchmarks (bench/benches/storage.rs) on the real disk, the
# disk's sequential write bandwidth measured with dd in the same run, and a
# summary of the figures against their targets:
#
#   append_500b_periodic   >= 500,000 entries/s
#   blob_1mib              >= 50% of dd's bandwidth (dd ... conv=fdatasync)
#   group_commit           16 writers through SharedLog >= 8x one writer
#                          syncing every append (Durability::Always)
#   open (1 GiB)           < 2 s
#   compaction             reported (MiB/s copied and MiB/s reclaimed)
#
# Usage: scripts/bench_storage.sh [criterion args...]
#   e.g. scripts/bench_storage.sh group_commit     (only those benchmarks)
#        RECSYNC_BENCH_OPEN_MB=256 scripts/bench_storage.sh open
# Environment: RECSYNC_BENCH_DIR (scratch directory; default target/tmp),
# RECSYNC_BENCH_OPEN_MB (size of the log the open benchmark recovers,
# default 1024), CARGO_TARGET_DIR.
#
# The summary takes criterion's median time per iteration of each benchmark
# (target/criterion/storage/**/new/estimates.json written by this run), so
# its figures can differ a little from the slope criterion prints. The blob
# figure is compared with the fastest of four dd runs (three right before the
# benchmarks, the blob one first among them, one after).
#
# Needs python3 for the summary. Exits non-zero if the build or a benchmark
# fails; a missed target is reported, not an error. Writes ~16 GB in all
# (dd 4 x 1 GiB, blobs 11 x 1 GiB, the logs), removed as it goes; takes two
# to three minutes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
scratch="${RECSYNC_BENCH_DIR:-$target_dir/tmp}"
mkdir -p "$scratch"
scratch="$(cd "$scratch" && pwd)"
# The benchmark writes its logs under RECSYNC_BENCH_DIR or, by default,
# CARGO_TARGET_TMPDIR, which is $target_dir/tmp: the same place.
export RECSYNC_BENCH_DIR="$scratch"
# Criterion writes its results under the target directory it finds, which
# ignores CARGO_TARGET_DIR; say where, so the summary below reads this run.
# (An absolute path: benchmarks run in the package's directory.)
mkdir -p "$target_dir"
export CRITERION_HOME="$(cd "$target_dir" && pwd)/criterion"

work="$(mktemp -d "$scratch/bench-storage-run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$work/bench.log"
stamp="$work/start"
touch "$stamp"

echo "==> scratch directory: $scratch"
df -h "$scratch" | sed 's/^/    /'

echo
echo "==> build: cargo bench -p recsync-bench --bench storage --no-run"
cargo bench -p recsync-bench --bench storage --no-run

# Sequential write bandwidth of the same disk: 1 GiB, one fdatasync at the
# end (as the blob benchmark syncs once per sample).
dd_run() {
    local out
    out="$(LC_ALL=C dd if=/dev/zero of="$work/dd.tmp" bs=1M count=1024 conv=fdatasync 2>&1)"
    rm -f "$work/dd.tmp"
    echo "$out" | tail -n 1
}

# Three times right before the benchmarks (the blob benchmark runs first),
# once after. A virtual disk's bandwidth can vary several-fold from one run
# to the next (here: 370 MB/s to 2.5 GB/s); the summary's verdict compares
# the blob figure with the fastest dd run, the most demanding reading.
echo
echo "==> dd bandwidth (before the benchmarks)"
dd_before=()
for _ in 1 2 3; do
    line="$(dd_run)"
    dd_before+=("$line")
    echo "    $line"
done

echo
echo "==> cargo bench -p recsync-bench --bench storage -- $*"
cargo bench -p recsync-bench --bench storage -- "$@" 2>&1 | tee "$log"

echo
echo "==> dd bandwidth (after the benchmarks)"
dd_after="$(dd_run)"
echo "    $dd_after"

echo
echo "==> summary"
python3 - "$CRITERION_HOME" "$stamp" "$log" "${dd_before[@]}" "$dd_after" <<'EOF'
import json, os, re, sys

crit_dir, stamp, log_path, dd_lines = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
since = os.path.getmtime(stamp)
MIB = float(1 << 20)

# Results of this run: every benchmark.json under criterion/storage written
# after the start stamp, by full id.
results = {}
root = os.path.join(crit_dir, "storage")
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
        continue
    est_path = os.path.join(dirpath, "estimates.json")
    if not os.path.exists(est_path) or os.path.getmtime(est_path) < since:
        continue
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        bench = json.load(f)
    with open(est_path) as f:
        est = json.load(f)
    # The median time per iteration over the samples: robust to the odd
    # stalled fsync of a shared disk (criterion's console line shows the
    # slope, or the mean, instead).
    ns = est["median"]["point_estimate"]
    thr = bench.get("throughput") or {}
    results[bench["full_id"]] = {
        "s": ns / 1e9,
        "elements": thr.get("Elements"),
        "bytes": thr.get("Bytes") or thr.get("BytesDecimal"),
    }

def per_sec(full_id, key):
    r = results.get(full_id)
    if r is None or not r[key]:
        return None
    return r[key] / r["s"]

stats = []
with open(log_path, errors="replace") as f:
    for line in f:
        if line.startswith("storage-stats:"):
            stats.append(line[len("storage-stats:"):].strip())

def dd_bps(line):
    m = re.match(r"(\d+) bytes .* copied, ([0-9.]+) s", line)
    return int(m.group(1)) / float(m.group(2)) if m else None

dd = [b for b in map(dd_bps, dd_lines) if b]

rows = []
def row(name, figure, target, ok):
    rows.append((name, figure, target, "n/a" if ok is None else ("PASS" if ok else "MISS")))

NOT_RUN = "(not run)"

# 1. Appends.
a = per_sec("storage/append_500b_periodic", "elements")
row("append_500b_periodic",
    f"{a:,.0f} entries/s ({a * 520 / MIB:.0f} MiB/s of frames)" if a else NOT_RUN,
    ">= 500,000/s", a >= 500_000 if a else None)

# 2. Blobs against dd.
b = per_sec("storage/blob_1mib", "bytes")
dd_best = max(dd) if dd else None
dd_txt = ", ".join(f"{x / MIB:.0f}" for x in dd) + " MiB/s" if dd else "no dd figure"
row("dd 1 GiB conv=fdatasync", dd_txt + (" (the fastest counts)" if len(dd) > 1 else ""), "", None)
if b and dd_best:
    ratio = b / dd_best
    mid = sorted(dd)[len(dd) // 2]
    others = f" ({b / mid:.0%} of the median dd)" if len(dd) > 1 else ""
    row("blob_1mib", f"{b / MIB:.0f} MiB/s = {ratio:.0%} of the fastest dd{others}",
        ">= 50% of dd", ratio >= 0.5)
else:
    row("blob_1mib", f"{b / MIB:.0f} MiB/s" if b else NOT_RUN, ">= 50% of dd", None)

# 3. Group commit.
g16 = per_sec("storage/group_commit/shared_16_writers", "elements")
g1 = per_sec("storage/group_commit/shared_1_writer", "elements")
al = per_sec("storage/group_commit/always_1_writer", "elements")
row("group_commit/shared_16_writers", f"{g16:,.0f} durable appends/s" if g16 else NOT_RUN, "", None)
row("group_commit/shared_1_writer", f"{g1:,.0f} durable appends/s" if g1 else NOT_RUN, "", None)
row("group_commit/always_1_writer", f"{al:,.0f} durable appends/s" if al else NOT_RUN, "", None)
if g16 and al:
    row("group commit speed-up", f"{g16 / al:.1f}x over always_1_writer"
        + (f", {g16 / g1:.1f}x over shared_1_writer" if g1 else ""), ">= 8x", g16 / al >= 8)

# 4. Open.
for full_id, r in sorted(results.items()):
    m = re.match(r"storage/open/(warm|cold)_(\d+)mib$", full_id)
    if not m:
        continue
    mb = int(m.group(2))
    ok = r["s"] < 2.0 if mb == 1024 else None
    target = "< 2 s" if mb == 1024 else f"< 2 s at 1024 MiB (ran {mb} MiB)"
    row(f"open ({m.group(1)}, {mb} MiB)", f"{r['s']:.3f} s ({mb / r['s']:.0f} MiB/s scanned)",
        target, ok)
if not any(k.startswith("storage/open/") for k in results):
    row("open", NOT_RUN, "< 2 s", None)

# 5. Compaction: copied (criterion's throughput) and reclaimed (from the stats).
c = results.get("storage/compaction")
if c:
    freed = None
    for s in stats:
        m = re.search(r"bytes_freed (\d+)", s)
        if m:
            freed = int(m.group(1))
    copied = c["bytes"] / c["s"] / MIB
    txt = f"{c['s'] * 1000:.0f} ms per run: {copied:.0f} MiB/s copied"
    if freed:
        txt += f", {freed / c['s'] / MIB:.0f} MiB/s of segments reclaimed"
    row("compaction", txt, "(reported)", None)
else:
    row("compaction", NOT_RUN, "(reported)", None)

w0 = max(len(r[0]) for r in rows)
w1 = max(len(r[1]) for r in rows)
w2 = max(len(r[2]) for r in rows)
for name, figure, target, verdict in rows:
    print(f"  {name:<{w0}}  {figure:<{w1}}  {target:<{w2}}  {verdict if target else ''}".rstrip())
if stats:
    print()
    for s in stats:
        print(f"  {s}")
EOF
