//! Per-peer bandwidth cap (SPEC §4): holds within 5% over a simulated hour.

use recsync_engine::{Key, PutRequest, WriteOp};
use recsync_sim::cluster::{labels, ClusterBuilder};

#[test]
fn acceptance_bandwidth_cap_holds_over_an_hour() {
    let cap_bytes_per_s = 4_000u64;
    let hour_ms = 3_600_000u64;
    let mut c = ClusterBuilder::new(51, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.bandwidth_bytes_per_s = Some(cap_bytes_per_s))
        .all_nodes(|cfg| cfg.limits.send_batch_bytes_max = 8 << 10)
        .build();
    // A backlog well over an hour's worth at the cap.
    let per_op = 500usize;
    let ops_needed = (cap_bytes_per_s * hour_ms / 1000) as usize / per_op * 3 / 2;
    for chunk in 0..ops_needed.div_ceil(200) {
        let ops = (0..200)
            .map(|i| {
                WriteOp::Put(PutRequest {
                    key: Key::from_u128((chunk * 200 + i) as u128),
                    labels: labels("recording"),
                    meta: vec![1; per_op],
                    blob: None,
                })
            })
            .collect();
        c.try_write(0, ops).unwrap();
    }
    let t0 = c.now_ms();
    c.run_until(t0 + hour_ms);
    let bytes: u64 = c
        .sent
        .iter()
        .filter(|b| b.from == 0 && b.at_ms < t0 + hour_ms)
        .map(|b| b.frame_bytes as u64)
        .sum();
    let rate = bytes as f64 * 1000.0 / hour_ms as f64;
    let ratio = rate / cap_bytes_per_s as f64;
    eprintln!("bandwidth: {rate:.1} B/s sent against a cap of {cap_bytes_per_s} B/s over an hour: ratio {ratio:.4}");
    assert!(
        (0.95..=1.05).contains(&ratio),
        "sent {rate:.0} B/s against a cap of {cap_bytes_per_s} B/s (ratio {ratio:.3})"
    );
    // And the backlog is still there, waiting durably, not dropped.
    let status = c
        .node(0)
        .peer_status(&recsync_sim::cluster::node_id(1))
        .unwrap();
    assert!(status.pending_versions > 0);
    // Every minute of the hour stays under the cap plus one batch.
    let mut per_minute = vec![0u64; 60];
    for b in c
        .sent
        .iter()
        .filter(|b| b.from == 0 && b.at_ms < t0 + hour_ms)
    {
        per_minute[((b.at_ms - t0) / 60_000) as usize] += b.frame_bytes as u64;
    }
    for (m, bytes) in per_minute.iter().enumerate() {
        assert!(
            *bytes <= cap_bytes_per_s * 60 + (8 << 10) + 4096,
            "minute {m}: {bytes} bytes"
        );
    }
}
