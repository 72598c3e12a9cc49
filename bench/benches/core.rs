//! Core benchmarks: local puts, applying remote batches, end-to-end
//! replication in memory, version vectors, and wire framing.
//!
//! Every benchmark keeps its state bounded: nodes and clusters that grow
//! with each iteration are rebuilt every so often, outside the timed part
//! (`iter_custom` sums only the timed sections).

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use recsync_bench::{labels, lone_node, meta, put_request, stream_batch, Receiver, SENDER};
use recsync_engine::wire::{decode_frame, encode_frame, Message, FRAME_PAYLOAD_LEN_MAX};
use recsync_engine::{Dot, Key, Labels, PutRequest, ReplicaId, VersionVector, WriteOp};
use recsync_sim::{Cluster, ClusterBuilder};
use std::time::{Duration, Instant};

/// Metadata size of a put (a typical call-recording metadata object).
const PUT_META_LEN: usize = 500;
/// Puts one node takes before it is replaced by a fresh one.
const PUTS_PER_NODE: u64 = 16_384;
/// Requests built (untimed) ahead of each timed run of puts.
const PUTS_PER_CHUNK: u64 = 1024;
/// Versions per replication batch.
const BATCH_VERSIONS: usize = 512;
/// Metadata size of the replicated objects.
const BATCH_META_LEN: usize = 500;
/// Batches one receiver (or cluster) takes before it is rebuilt.
const BATCHES_PER_RECEIVER: u64 = 32;
/// Metadata size in the framing benchmark.
const FRAME_META_LEN: usize = 200;
/// Simulated time a replication round may take before it counts as stuck.
const SETTLE_MAX_MS: u64 = 60_000;

/// A group with the suite's short sampling (the whole suite stays under two
/// minutes).
fn quick<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g
}

/// Local puts of one 500-byte object each, distinct keys, no peers.
fn bench_put(c: &mut Criterion) {
    let labels = labels();
    let meta = meta(PUT_META_LEN);
    let mut g = quick(c, "put");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("meta_bytes", PUT_META_LEN), |b| {
        let mut key = 0u128;
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut node = lone_node(SENDER, 7);
                let on_node = (iters - done).min(PUTS_PER_NODE);
                let mut left = on_node;
                while left > 0 {
                    let n = left.min(PUTS_PER_CHUNK);
                    let reqs: Vec<PutRequest> = (0..n)
                        .map(|_| {
                            key += 1;
                            put_request(key, &labels, &meta)
                        })
                        .collect();
                    let start = Instant::now();
                    for req in reqs {
                        let receipt = node.put(recsync_bench::EPOCH_MS, req);
                        black_box(receipt.expect("local put"));
                    }
                    timed += start.elapsed();
                    left -= n;
                }
                done += on_node;
            }
            timed
        });
    });
    g.finish();
}

/// The receiving side alone: a frame holding one batch of 512 new objects
/// from a peer is handed to `handle_bytes` (decode, log append, apply,
/// events, acknowledgement) and the outputs and events are drained.
fn bench_apply_remote_batch(c: &mut Criterion) {
    let labels = labels();
    let meta = meta(BATCH_META_LEN);
    let mut g = quick(c, "apply_remote_batch");
    g.throughput(Throughput::Elements(BATCH_VERSIONS as u64));
    g.bench_function(BenchmarkId::new("versions", BATCH_VERSIONS), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut rx = Receiver::connected(11);
                let on_rx = (iters - done).min(BATCHES_PER_RECEIVER);
                let frames: Vec<Vec<u8>> = (0..on_rx)
                    .map(|n| {
                        let batch = stream_batch(n, BATCH_VERSIONS, &labels, &meta);
                        encode_frame(&Message::Batch(batch))
                    })
                    .collect();
                let start = Instant::now();
                for frame in &frames {
                    black_box(rx.feed(frame));
                }
                timed += start.elapsed();
                done += on_rx;
            }
            timed
        });
    });
    g.finish();
}

/// A two-node cluster of the simulator where node 0 ships to node 1, with
/// the default configuration, connected and handshaken.
fn replication_cluster() -> Cluster {
    let mut c = ClusterBuilder::new(3, 2).one_way(0, 1).build();
    if let Err(e) = c.run_until_settled(SETTLE_MAX_MS) {
        panic!("the benchmark cluster does not connect: {e:?}");
    }
    c
}

/// One replication round: node 0 writes `BATCH_VERSIONS` new objects as two
/// atomic batches (the default `batch_ops_max` is 256), then the simulator
/// runs until node 1 applied and acknowledged them. Both entries are written
/// within the link's linger, so they travel as one batch of 512 versions.
fn replicate_round(cluster: &mut Cluster, ops: Vec<WriteOp>) {
    let mut ops = ops.into_iter();
    loop {
        let part: Vec<WriteOp> = ops.by_ref().take(BATCH_VERSIONS / 2).collect();
        if part.is_empty() {
            break;
        }
        black_box(cluster.try_write(0, part).expect("batch write"));
    }
    if let Err(e) = cluster.run_until_settled(SETTLE_MAX_MS) {
        panic!("replication did not settle: {e:?}");
    }
}

/// `BATCH_VERSIONS` puts of new objects, keys after `*key`.
fn round_ops(key: &mut u128, labels: &Labels, meta: &[u8]) -> Vec<WriteOp> {
    (0..BATCH_VERSIONS)
        .map(|_| {
            *key += 1;
            WriteOp::Put(put_request(*key, labels, meta))
        })
        .collect()
}

/// End to end in memory: node 0 writes 512 objects, node 1 receives them in
/// one replication batch of 512 versions, applies and acknowledges it.
/// Covers write, log, batch building, framing both ways, apply and ack in
/// the simulator (its simulated latency costs no real time).
fn bench_replicate_in_memory(c: &mut Criterion) {
    let labels = labels();
    let meta = meta(BATCH_META_LEN);
    let mut g = quick(c, "replicate_in_memory");
    g.throughput(Throughput::Elements(BATCH_VERSIONS as u64));
    g.bench_function(BenchmarkId::new("versions", BATCH_VERSIONS), |b| {
        let mut key = 0u128;
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut cluster = replication_cluster();
                let on_cluster = (iters - done).min(BATCHES_PER_RECEIVER);
                for _ in 0..on_cluster {
                    let ops = round_ops(&mut key, &labels, &meta);
                    let start = Instant::now();
                    replicate_round(&mut cluster, ops);
                    timed += start.elapsed();
                }
                done += on_cluster;
            }
            timed
        });
    });
    g.finish();
}

/// A version vector with `n` replicas, counters `base + i`.
fn vector(n: u128, base: u64) -> VersionVector {
    let mut v = VersionVector::new();
    for i in 0..n {
        v.add(&Dot {
            replica: ReplicaId::from_u128(0x1000 + i),
            counter: base + i as u64,
        });
    }
    v
}

/// `add`, `join` and `compare` on vectors of 5 and 64 entries.
fn bench_version_vector(c: &mut Criterion) {
    let mut g = quick(c, "version_vector");
    for n in [5u128, 64] {
        let a = vector(n, 100);
        // `b` is `a` with its last entry moved on: `a` is strictly before
        // `b`, and comparing walks (nearly) every entry both ways.
        let mut b = a.clone();
        b.add(&Dot {
            replica: ReplicaId::from_u128(0x1000 + n - 1),
            counter: 1_000_000,
        });
        // `other` overlaps `a` on half its replicas and adds as many new ones.
        let mut other = VersionVector::new();
        for i in n / 2..n + n / 2 {
            other.add(&Dot {
                replica: ReplicaId::from_u128(0x1000 + i),
                counter: 500,
            });
        }
        let existing = ReplicaId::from_u128(0x1000 + n / 2);

        g.bench_function(BenchmarkId::new("add", n), |bench| {
            let mut v = a.clone();
            let mut counter = 1_000u64;
            bench.iter(|| {
                counter += 1;
                v.add(black_box(&Dot {
                    replica: existing,
                    counter,
                }));
            });
            black_box(&v);
        });
        g.bench_function(BenchmarkId::new("join", n), |bench| {
            bench.iter_batched_ref(
                || a.clone(),
                |v| v.join(black_box(&other)),
                criterion::BatchSize::SmallInput,
            );
        });
        g.bench_function(BenchmarkId::new("compare", n), |bench| {
            bench.iter(|| black_box(&a).compare(black_box(&b)));
        });
    }
    g.finish();
}

/// Encoding and decoding the frame of one batch of 512 versions with
/// 200-byte metadata.
fn bench_frame(c: &mut Criterion) {
    let labels = labels();
    let meta = meta(FRAME_META_LEN);
    let msg = Message::Batch(stream_batch(1, BATCH_VERSIONS, &labels, &meta));
    let frame = encode_frame(&msg);
    match decode_frame(&frame, FRAME_PAYLOAD_LEN_MAX) {
        Ok((decoded, used)) => assert!(decoded == msg && used == frame.len()),
        Err(e) => panic!("the benchmark frame decodes: {e}"),
    }
    let mut g = quick(c, "frame");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function(BenchmarkId::new("encode_batch", BATCH_VERSIONS), |b| {
        b.iter(|| encode_frame(black_box(&msg)));
    });
    g.bench_function(BenchmarkId::new("decode_batch", BATCH_VERSIONS), |b| {
        b.iter(|| decode_frame(black_box(&frame), FRAME_PAYLOAD_LEN_MAX).map(|(_, used)| used));
    });
    g.finish();
}

/// An untimed sanity check of the fixtures, run before the benchmarks: the
/// hand-driven receiver applies a batch, and the cluster replicates one.
fn check_fixtures(_: &mut Criterion) {
    let labels = labels();
    let meta = meta(BATCH_META_LEN);
    let mut rx = Receiver::connected(1);
    rx.feed(&encode_frame(&Message::Batch(stream_batch(
        0, 4, &labels, &meta,
    ))));
    assert!(
        rx.node.get(&Key::from_u128(4)).is_some(),
        "the receiver applies hand-built batches"
    );
    let mut cluster = replication_cluster();
    let mut key = 0;
    replicate_round(&mut cluster, round_ops(&mut key, &labels, &meta));
    assert!(
        cluster.node(1).get(&Key::from_u128(key)).is_some(),
        "the cluster replicates"
    );
    // (The handshake ships an empty snapshot batch first.)
    let shipped: Vec<usize> = cluster
        .sent
        .iter()
        .map(|b| b.versions.len())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(
        shipped,
        [BATCH_VERSIONS],
        "one round travels as one batch of {BATCH_VERSIONS} versions"
    );
}

criterion_group!(
    benches,
    check_fixtures,
    bench_put,
    bench_apply_remote_batch,
    bench_replicate_in_memory,
    bench_version_vector,
    bench_frame
);
criterion_main!(benches);
