//! When a peer may be sent to: continuously (after a short linger), only on
//! demand (sync now), or inside recurring time windows. Pure functions of the
//! time the driver passes in; nothing here reads a clock.

use serde::{Deserialize, Serialize};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
const WEEK_MS: u64 = 7 * DAY_MS;
/// 1970-01-01 was a Thursday; shift so that week offset 0 is Monday 00:00.
const EPOCH_WEEKDAY_SHIFT_MS: u64 = 3 * DAY_MS;

/// A recurring window `[start, end)`, in minutes from the start of its
/// period. `end < start` wraps over the period's end (e.g. 22:00-02:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// Minutes since midnight, e.g. 01:00-05:00 is `{60, 300}`.
    Daily { start_min: u32, end_min: u32 },
    /// Minutes past the hour.
    Hourly { start_min: u32, end_min: u32 },
    /// Minutes since Monday 00:00.
    Weekly { start_min: u32, end_min: u32 },
}

/// The schedule of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Ship within `linger_ms` of a write (batching what arrives meanwhile).
    Continuous { linger_ms: u64 },
    /// Ship only when the application asks (sync now).
    Manual,
    /// Ship only inside the windows; `utc_offset_min` shifts local time.
    Windows {
        windows: Vec<Window>,
        utc_offset_min: i32,
    },
}

impl Window {
    fn period_ms(&self) -> u64 {
        match self {
            Window::Daily { .. } => DAY_MS,
            Window::Hourly { .. } => HOUR_MS,
            Window::Weekly { .. } => WEEK_MS,
        }
    }

    fn bounds_ms(&self) -> (u64, u64) {
        let (s, e) = match *self {
            Window::Daily { start_min, end_min }
            | Window::Hourly { start_min, end_min }
            | Window::Weekly { start_min, end_min } => (start_min, end_min),
        };
        let p = self.period_ms();
        ((s as u64 * MINUTE_MS) % p, (e as u64 * MINUTE_MS) % p)
    }

    /// Position of local time `t_ms` inside this window's period.
    fn phase(&self, local_ms: u64) -> u64 {
        match self {
            Window::Weekly { .. } => (local_ms + EPOCH_WEEKDAY_SHIFT_MS) % WEEK_MS,
            _ => local_ms % self.period_ms(),
        }
    }

    fn contains(&self, local_ms: u64) -> bool {
        let (s, e) = self.bounds_ms();
        let x = self.phase(local_ms);
        if s <= e {
            s <= x && x < e
        } else {
            x >= s || x < e
        }
    }

    /// Milliseconds from `local_ms` until this window next opens (0 if open).
    fn until_open_ms(&self, local_ms: u64) -> u64 {
        if self.contains(local_ms) {
            return 0;
        }
        let (s, _) = self.bounds_ms();
        let x = self.phase(local_ms);
        let p = self.period_ms();
        (s + p - x) % p
    }

    /// Milliseconds from `local_ms` until this window closes (0 if closed).
    fn until_close_ms(&self, local_ms: u64) -> u64 {
        if !self.contains(local_ms) {
            return 0;
        }
        let (_, e) = self.bounds_ms();
        let x = self.phase(local_ms);
        let p = self.period_ms();
        let d = (e + p - x) % p;
        if d == 0 {
            p
        } else {
            d
        }
    }
}

fn local_ms(now_ms: u64, utc_offset_min: i32) -> u64 {
    let shifted = now_ms as i128 + utc_offset_min as i128 * MINUTE_MS as i128;
    shifted.max(0) as u64
}

impl Schedule {
    /// Whether a window schedule is open at `now_ms` (true for the others).
    pub fn window_open(&self, now_ms: u64) -> bool {
        match self {
            Schedule::Windows {
                windows,
                utc_offset_min,
            } => {
                let t = local_ms(now_ms, *utc_offset_min);
                windows.iter().any(|w| w.contains(t))
            }
            _ => true,
        }
    }

    /// For a window schedule that is closed: when the next window opens.
    pub fn next_open_ms(&self, now_ms: u64) -> Option<u64> {
        match self {
            Schedule::Windows {
                windows,
                utc_offset_min,
            } => {
                let t = local_ms(now_ms, *utc_offset_min);
                windows
                    .iter()
                    .map(|w| w.until_open_ms(t))
                    .min()
                    .map(|d| now_ms + d)
            }
            _ => None,
        }
    }

    /// For a window schedule that is open: when the open window closes.
    pub fn next_close_ms(&self, now_ms: u64) -> Option<u64> {
        match self {
            Schedule::Windows {
                windows,
                utc_offset_min,
            } => {
                let t = local_ms(now_ms, *utc_offset_min);
                windows
                    .iter()
                    .map(|w| w.until_close_ms(t))
                    .filter(|d| *d > 0)
                    .max()
                    .map(|d| now_ms + d)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nightly() -> Schedule {
        Schedule::Windows {
            windows: vec![Window::Daily {
                start_min: 60,
                end_min: 300,
            }],
            utc_offset_min: 0,
        }
    }

    #[test]
    fn daily_window_bounds() {
        let s = nightly();
        let day = 20_000 * DAY_MS;
        assert!(!s.window_open(day + 59 * MINUTE_MS));
        assert!(s.window_open(day + HOUR_MS));
        assert!(s.window_open(day + 5 * HOUR_MS - 1));
        assert!(!s.window_open(day + 5 * HOUR_MS));
        assert_eq!(s.next_open_ms(day), Some(day + HOUR_MS));
        assert_eq!(
            s.next_open_ms(day + 6 * HOUR_MS),
            Some(day + DAY_MS + HOUR_MS)
        );
        assert_eq!(s.next_close_ms(day + 2 * HOUR_MS), Some(day + 5 * HOUR_MS));
    }

    #[test]
    fn wrapping_and_offset_windows() {
        let s = Schedule::Windows {
            windows: vec![Window::Daily {
                start_min: 22 * 60,
                end_min: 2 * 60,
            }],
            utc_offset_min: 60,
        };
        let day = 20_000 * DAY_MS;
        // 21:30 UTC is 22:30 local: open
        assert!(s.window_open(day + 21 * HOUR_MS + 30 * MINUTE_MS));
        // 01:30 UTC is 02:30 local: closed
        assert!(!s.window_open(day + HOUR_MS + 30 * MINUTE_MS));
    }

    #[test]
    fn weekly_window_starts_monday() {
        let s = Schedule::Windows {
            windows: vec![Window::Weekly {
                start_min: 0,
                end_min: 60,
            }],
            utc_offset_min: 0,
        };
        // 1970-01-05 was a Monday.
        let monday = 4 * DAY_MS;
        assert!(s.window_open(monday + 10 * MINUTE_MS));
        assert!(!s.window_open(monday + DAY_MS));
        assert_eq!(s.next_open_ms(monday + HOUR_MS), Some(monday + WEEK_MS));
    }
}
