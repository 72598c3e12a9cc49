//! Planted bugs (SPEC §7): realistic mistakes compiled into the real code
//! only with the `canary` feature, one switched on at a time, so the
//! simulator can prove its oracle catches them. Without the feature `on`
//! is a constant `false` and the bugs compile away.

/// The planted bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Canary {
    /// A relay does not forward deletes it received.
    TombstoneNotRelayed = 2,
    /// A relay forwards what it received without applying the link filter.
    FilterNotAppliedOnRelay,
    /// On resume the sender drops one more entry than acknowledged.
    ResumeCursorOffByOne,
    /// Trimming treats a standing tombstone's entry as dead.
    TrimDropsLiveTombstone,
    /// A recording is applied (and relayed) as soon as its metadata
    /// arrives, before its blob is here.
    RecordingAppliedBeforeBlob,
    /// A restart keeps the dot origin and counts on from what the log kept.
    DotOriginReused,
    /// A conflict that the policy settled is not reported to the application.
    SettledConflictNotReported,
    /// Tombstones are purged once stable here, without waiting for every
    /// peer to report them stable too.
    PurgeBeforePeersStable,
}

/// Every canary with its command-line name.
pub const ALL: &[(Canary, &str)] = &[
    (
        Canary::SettledConflictNotReported,
        "settled-conflict-not-reported",
    ),
    (Canary::TombstoneNotRelayed, "tombstone-not-relayed"),
    (
        Canary::FilterNotAppliedOnRelay,
        "filter-not-applied-on-relay",
    ),
    (Canary::ResumeCursorOffByOne, "resume-cursor-off-by-one"),
    (Canary::TrimDropsLiveTombstone, "trim-drops-live-tombstone"),
    (
        Canary::RecordingAppliedBeforeBlob,
        "recording-applied-before-blob",
    ),
    (Canary::DotOriginReused, "dot-origin-reused"),
    (Canary::PurgeBeforePeersStable, "purge-before-peers-stable"),
];

#[cfg(feature = "canary")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The names of the canaries this build has (none without the feature).
pub fn names() -> Vec<&'static str> {
    if cfg!(feature = "canary") {
        ALL.iter().map(|(_, n)| *n).collect()
    } else {
        Vec::new()
    }
}

/// Switches one canary on, by name (for the whole process).
pub fn activate(name: &str) -> Result<(), String> {
    let Some((c, _)) = ALL.iter().find(|(_, n)| *n == name) else {
        return Err(format!("no canary named {name:?} (see --canary list)"));
    };
    #[cfg(feature = "canary")]
    {
        ACTIVE.store(*c as u8, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    #[cfg(not(feature = "canary"))]
    {
        let _ = c;
        Err("this build has no canaries: build with --features canary".into())
    }
}

/// Whether the planted bug `c` is on.
#[inline(always)]
pub fn on(c: Canary) -> bool {
    #[cfg(feature = "canary")]
    {
        ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == c as u8
    }
    #[cfg(not(feature = "canary"))]
    {
        let _ = c;
        false
    }
}
