//! Recordings with blobs (SPEC §3-4): chunked, checksummed, resumable,
//! in a lane behind small records; a recording is visible on a receiver only
//! once its whole blob arrived and its hash verified.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsync_engine::{Body, Key};
use recsync_sim::cluster::{labels, node_id, ClusterBuilder};

fn audio(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0; len];
    rng.fill_bytes(&mut v);
    v
}

fn blob_of(c: &recsync_sim::Cluster, i: usize, k: &Key) -> Option<Vec<u8>> {
    let o = c.node(i).get(k)?;
    let Some(Body::Live { blob: Some(b), .. }) = o.value().map(|v| &v.body) else {
        return None;
    };
    Some(
        c.node(i)
            .read_blob(&b.hash, 0, b.len_bytes as usize)
            .expect("visible blob is whole"),
    )
}

#[test]
fn acceptance_blobs_varied_sizes_relay_and_verify() {
    let mut c = ClusterBuilder::new(61, 3)
        .one_way(0, 1)
        .one_way(1, 2)
        .build();
    let sizes = [0usize, 1, 65_535, 65_536, 65_537, 1 << 20, (3 << 20) + 7];
    for (n, len) in sizes.iter().enumerate() {
        c.put_recording(
            0,
            Key::from_u128(n as u128),
            b"call",
            &audio(n as u64, *len),
        );
    }
    c.run_until_settled(600_000).unwrap();
    assert!(c.digests_equal(&[0, 1, 2]));
    for (n, len) in sizes.iter().enumerate() {
        let k = Key::from_u128(n as u128);
        let got = blob_of(&c, 2, &k).expect("recording visible at the end of the chain");
        assert_eq!(got.len(), *len);
        assert_eq!(got, audio(n as u64, *len));
    }
    assert_eq!(c.node(2).staged_versions(), 0);
}

#[test]
fn acceptance_blobs_small_records_overtake_a_big_recording() {
    let mut c = ClusterBuilder::new(62, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.bandwidth_bytes_per_s = Some(1 << 20))
        .build();
    let big = Key::from_u128(1);
    c.put_recording(0, big, b"long call", &audio(1, 8 << 20));
    c.run_for(200);
    let user = Key::from_u128(2);
    c.put(0, user, labels("user"), b"edited while audio streams");
    c.run_for(1_000);
    assert!(
        c.node(1).get(&user).is_some(),
        "the user edit is not stuck behind the audio"
    );
    assert!(
        c.node(1).get(&big).is_none(),
        "the recording is not visible before its blob"
    );
    assert_eq!(c.node(1).staged_versions(), 1);
    c.run_until_settled(600_000).unwrap();
    c.run_for(30_000);
    assert_eq!(blob_of(&c, 1, &big).map(|b| b.len()), Some(8 << 20));
}

#[test]
fn acceptance_blobs_resume_mid_blob_after_cuts() {
    let len = 6 << 20;
    let mut c = ClusterBuilder::new(63, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.bandwidth_bytes_per_s = Some(2 << 20))
        .all_nodes(|cfg| cfg.timing.reconnect_max_ms = 200)
        .build();
    let k = Key::from_u128(7);
    c.put_recording(0, k, b"call", &audio(7, len));
    let mut cuts = 0;
    for _ in 0..8 {
        c.run_for(300);
        c.cut(0, 1);
        cuts += 1;
    }
    c.run_until_settled(600_000).unwrap();
    c.run_for(60_000);
    assert_eq!(blob_of(&c, 1, &k).map(|b| b.len()), Some(len));
    let received = c
        .node(1)
        .peer_status(&node_id(0))
        .unwrap()
        .stats
        .blob_bytes_received;
    // Every cut may lose at most the window in flight; nothing restarts at 0.
    let window = 4 * (64 << 10);
    assert!(
        received <= (len + cuts * window) as u64,
        "{received} bytes received for a {len}-byte blob over {cuts} cuts"
    );
}

#[test]
fn acceptance_blobs_corrupt_content_is_never_applied() {
    let mut c = ClusterBuilder::new(64, 2).one_way(0, 1).build();
    let k = Key::from_u128(9);
    let r = c.put_recording(0, k, b"call", &audio(9, 300_000));
    let hash = match &c.node(0).get(&k).unwrap().value().unwrap().body {
        Body::Live { blob: Some(b), .. } => b.hash,
        _ => unreachable!(),
    };
    // Bit rot on the sender's disk after the upload.
    c.node_mut(0).storage_mut().corrupt_blob(&hash, 123_456);
    c.run_for(120_000);
    assert!(
        c.node(1).get(&k).is_none(),
        "a recording with a bad blob must not apply"
    );
    assert!(!c.node(1).has_blob(&hash));
    assert_eq!(
        c.node(1).staged_versions(),
        1,
        "it stays staged, durably, for a good copy"
    );
    let rejected = c
        .events(1)
        .iter()
        .filter(|e| matches!(e, recsync_engine::Event::BlobRejected { hash: h, .. } if *h == hash))
        .count();
    assert!(
        (1..=10).contains(&rejected),
        "rejections reported, with backoff: {rejected}"
    );
    let _ = r;
}

#[test]
fn acceptance_blobs_upload_survives_a_restart_before_the_put() {
    let mut c = ClusterBuilder::new(65, 2).one_way(0, 1).build();
    let data = audio(65, 200_000);
    let blob = c.upload_blob(0, &data);
    // The recorder restarts between the upload and the put.
    c.crash(0);
    c.restart(0);
    let mut req = recsync_sim::cluster::put_req(Key::from_u128(1), labels("recording"), b"call");
    req.blob = Some(blob);
    c.try_write(0, vec![recsync_engine::WriteOp::Put(req)])
        .expect("the stored upload is found again");
    c.run_until_settled(60_000).unwrap();
    assert_eq!(blob_of(&c, 1, &Key::from_u128(1)), Some(data));
}
