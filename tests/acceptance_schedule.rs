//! Schedules (SPEC §4) with injected time: a daily window sends nothing
//! outside and everything inside; manual sends nothing until sync now;
//! continuous ships within its linger.

use recsync_engine::{Key, Schedule, Window};
use recsync_sim::cluster::{labels, ClusterBuilder, EPOCH_MS};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

fn key(n: u128) -> Key {
    Key::from_u128(n)
}

#[test]
fn acceptance_schedule_daily_window() {
    let nightly = Schedule::Windows {
        windows: vec![Window::Daily {
            start_min: 60,
            end_min: 300,
        }],
        utc_offset_min: 0,
    };
    let mut c = ClusterBuilder::new(21, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.schedule = nightly)
        .build();
    // EPOCH_MS is a midnight. Write every 20 minutes for two days.
    let mut written = Vec::new();
    for n in 0..(2 * 24 * 3) as u128 {
        let t = EPOCH_MS + n as u64 * 20 * MIN;
        c.run_until(t);
        c.put(0, key(n), labels("user"), b"w");
        written.push((t, key(n)));
        // At every window close, everything written before it is there.
        let since_midnight = (t - EPOCH_MS) % DAY;
        if since_midnight == 5 * HOUR - 20 * MIN {
            c.run_until(t + 20 * MIN - 1);
            for (wt, k) in &written {
                if *wt < t {
                    assert!(
                        c.node(1).get(k).is_some(),
                        "written at {wt}, missing at window end"
                    );
                }
            }
        }
    }
    c.run_until(EPOCH_MS + 3 * DAY);
    assert!(!c.sent.is_empty());
    for b in c.sent.iter().filter(|b| b.from == 0) {
        let tod = (b.at_ms - EPOCH_MS) % DAY;
        assert!(
            (HOUR..5 * HOUR).contains(&tod),
            "sent at {tod} ms after midnight"
        );
    }
    // The third night carried what was written after the second window.
    assert_eq!(c.node(1).keys().count(), written.len());
}

#[test]
fn acceptance_schedule_manual_waits_for_sync_now() {
    let mut c = ClusterBuilder::new(22, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.schedule = Schedule::Manual)
        .build();
    for n in 0..30 {
        c.put(0, key(n), labels("user"), b"m");
    }
    c.run_for(DAY);
    assert!(c.sent.is_empty(), "nothing moves before sync now");
    assert_eq!(c.node(1).keys().count(), 0);
    c.sync_now(0);
    c.run_for(10 * MIN);
    assert_eq!(c.node(1).keys().count(), 30);
    // Later writes wait for the next sync.
    let sent = c.sent.len();
    c.put(0, key(100), labels("user"), b"later");
    c.run_for(DAY);
    assert_eq!(c.sent.len(), sent);
    c.sync_now(0);
    c.run_for(MIN);
    assert!(c.node(1).get(&key(100)).is_some());
}

#[test]
fn acceptance_schedule_continuous_within_linger() {
    let linger_ms = 500;
    let mut c = ClusterBuilder::new(23, 2)
        .one_way(0, 1)
        .peer(0, 1, |p| p.schedule = Schedule::Continuous { linger_ms })
        .build();
    c.run_until_settled(10_000).unwrap();
    let mut written = std::collections::BTreeMap::new();
    for n in 0..200u128 {
        c.run_for(37);
        c.put(0, key(n), labels("user"), b"c");
        written.insert(key(n), c.now_ms());
    }
    c.run_until_settled(60_000).unwrap();
    let mut batches = 0;
    for b in c
        .sent
        .iter()
        .filter(|b| b.from == 0 && !b.versions.is_empty())
    {
        batches += 1;
        for (k, _, _) in &b.versions {
            let delay = b.at_ms - written[k];
            assert!(delay <= linger_ms, "shipped {delay} ms after the write");
        }
    }
    assert_eq!(c.node(1).keys().count(), 200);
    // Lingering batches writes together: far fewer batches than writes.
    assert!(batches < 60, "{batches} batches for 200 writes");
}
