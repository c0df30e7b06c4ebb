//! Restoring a point: the point's state (`state`), the plan against a target tree (`plan`,
//! pure and printable), and its application (`apply`, ordered and convergent).

mod apply;
mod links;
mod plan;
mod state;

pub use apply::{apply, RestoreReport};
pub use plan::{build as build_plan, Action, PlanItem, PlanSummary, RestorePlan};
pub use state::{point_state, rebuild, Packs};
