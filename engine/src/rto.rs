//! The retransmission timeout of one peer link: how long to wait for an
//! acknowledgement before going back and sending again. A fixed timeout
//! shorter than the link's queueing delay (a slow WAN with a backlog of
//! recordings) makes every batch and chunk time out and be resent while its
//! first copy is still queued: the resends add to the queue and the link
//! collapses. So the timeout follows the measured round trip (RFC 6298:
//! smoothed RTT plus four deviations, samples only from first
//! transmissions, Karn's rule), never below the configured ack timeout, and
//! doubles with every timeout in a row until something is acknowledged.

/// Timeouts in a row that still double the wait (64x at most).
const BACKOFF_MAX: u32 = 6;
/// Samples are clamped to an hour, which keeps the arithmetic in range.
const RTT_MAX_MS: u64 = 3_600_000;

/// Round-trip estimate and backoff of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rto {
    /// Smoothed round trip, once there is a sample.
    srtt_ms: Option<u64>,
    /// Smoothed mean deviation of the round trip.
    rttvar_ms: u64,
    /// Timeouts since the last acknowledged progress.
    backoff: u32,
}

impl Rto {
    /// Takes the round trip of a first transmission (never of a resend:
    /// its acknowledgement may answer the earlier copy).
    pub fn sample(&mut self, rtt_ms: u64) {
        let rtt_ms = rtt_ms.min(RTT_MAX_MS);
        match self.srtt_ms {
            None => {
                self.srtt_ms = Some(rtt_ms);
                self.rttvar_ms = rtt_ms / 2;
            }
            Some(srtt) => {
                // rttvar = 3/4 rttvar + 1/4 |srtt - rtt|; srtt = 7/8 srtt + 1/8 rtt.
                self.rttvar_ms = (3 * self.rttvar_ms + srtt.abs_diff(rtt_ms)) / 4;
                self.srtt_ms = Some((7 * srtt + rtt_ms) / 8);
            }
        }
    }

    /// How long to wait for an acknowledgement, never less than `min_ms`.
    pub fn timeout_ms(&self, min_ms: u64) -> u64 {
        let base = self
            .srtt_ms
            .map_or(min_ms, |s| min_ms.max(s + 4 * self.rttvar_ms));
        base.saturating_mul(1 << self.backoff.min(BACKOFF_MAX))
    }

    /// A timeout fired: wait twice as long next time.
    pub fn backed_off(&mut self) {
        self.backoff = (self.backoff + 1).min(BACKOFF_MAX);
    }

    /// Something was acknowledged: back to the estimate.
    pub fn progress(&mut self) {
        self.backoff = 0;
    }

    /// The smoothed round trip, if measured.
    pub fn srtt_ms(&self) -> Option<u64> {
        self.srtt_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_samples_the_configured_timeout() {
        let r = Rto::default();
        assert_eq!(r.timeout_ms(5_000), 5_000);
    }

    #[test]
    fn follows_a_slow_link_and_never_drops_below_the_minimum() {
        let mut r = Rto::default();
        for _ in 0..50 {
            r.sample(3_000);
        }
        // A steady 3 s round trip: the deviation decays, the timeout stays
        // above the round trip.
        let t = r.timeout_ms(1_000);
        assert!((3_000..4_000).contains(&t), "{t}");
        let mut fast = Rto::default();
        for _ in 0..50 {
            fast.sample(10);
        }
        assert_eq!(fast.timeout_ms(1_000), 1_000);
    }

    #[test]
    fn a_jittery_link_waits_longer_than_a_steady_one() {
        let mut steady = Rto::default();
        let mut jittery = Rto::default();
        for i in 0..100u64 {
            steady.sample(2_000);
            jittery.sample(if i % 2 == 0 { 1_000 } else { 3_000 });
        }
        assert!(jittery.timeout_ms(100) > steady.timeout_ms(100));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap_and_resets_on_progress() {
        let mut r = Rto::default();
        let mut last = r.timeout_ms(100);
        for _ in 0..BACKOFF_MAX {
            r.backed_off();
            let t = r.timeout_ms(100);
            assert_eq!(t, last * 2);
            last = t;
        }
        r.backed_off();
        assert_eq!(r.timeout_ms(100), last, "capped");
        r.progress();
        assert_eq!(r.timeout_ms(100), 100);
    }

    #[test]
    fn huge_samples_do_not_overflow() {
        let mut r = Rto::default();
        r.sample(u64::MAX / 2);
        r.sample(u64::MAX / 2);
        for _ in 0..10 {
            r.backed_off();
        }
        assert_eq!(r.timeout_ms(1), (RTT_MAX_MS + 3 * RTT_MAX_MS / 2) * 64);
        assert_eq!(r.timeout_ms(u64::MAX), u64::MAX);
    }
}
