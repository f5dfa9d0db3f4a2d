//! Scenario, phase and target files: their models, loading with file-line-column errors,
//! linting, and expansion of a phase's matrix into the cases a run executes.

pub mod answers;
pub mod load;
pub mod model;
pub mod plan;
pub mod target;

pub use load::{InputError, Location};
