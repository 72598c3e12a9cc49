//! Hybrid logical clock. Physical time is an input (milliseconds since the
//! Unix epoch, as the driver read it); the clock never reads it itself.

use serde::{Deserialize, Serialize};

/// A hybrid logical clock timestamp: physical milliseconds, then a logical
/// counter for events within the same millisecond. Totally ordered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

/// The clock state of one node.
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// Starts from the greatest timestamp the node ever issued or saw.
    pub fn starting_after(last: Hlc) -> Self {
        Self { last }
    }

    /// The greatest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new timestamp for a local event at physical time `now_ms`; strictly
    /// greater than every timestamp issued or observed before.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let next = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else if self.last.logical == u32::MAX {
            Hlc {
                wall_ms: self.last.wall_ms + 1,
                logical: 0,
            }
        } else {
            Hlc {
                wall_ms: self.last.wall_ms,
                logical: self.last.logical + 1,
            }
        };
        assert!(next > self.last, "hlc must be strictly monotonic");
        self.last = next;
        next
    }

    /// Takes a remote timestamp into account, so later local events order
    /// after it (this is what makes last-writer-wins causal).
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_monotonic_even_when_time_goes_back() {
        let mut c = HlcClock::default();
        let a = c.tick(1000);
        let b = c.tick(999);
        let d = c.tick(1000);
        assert!(a < b && b < d);
        assert_eq!(b.wall_ms, 1000);
    }

    #[test]
    fn observe_pushes_local_clock_past_remote() {
        let mut c = HlcClock::default();
        c.observe(Hlc {
            wall_ms: 5000,
            logical: 3,
        });
        let t = c.tick(10);
        assert_eq!(
            t,
            Hlc {
                wall_ms: 5000,
                logical: 4
            }
        );
    }
}
