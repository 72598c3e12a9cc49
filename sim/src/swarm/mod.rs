//! The simulator proper (SPEC §7): plans drawn from a seed (`plan`), run on
//! the harness with faults then a heal (`run`), judged by the oracle
//! (`oracle`).

pub mod oracle;
pub mod plan;
pub mod run;
pub mod shrink;

pub use oracle::Failure;
pub use plan::Plan;
pub use run::{run, Outcome, Stats};
