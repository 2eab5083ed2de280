//! Maintenance scheduling: remaining-useful-life estimates with their uncertainty, the
//! production calendar (shifts, planned stops) and the crews available → proposed
//! maintenance windows, each with the risk of waiting for the next one. Pure Rust, no I/O,
//! no clock: every time is in hours from "now" (the caller converts its calendar).
//!
//! - [`risk`]: the probability that an asset fails before a given time, from its RUL band.
//! - [`calendar`]: shifts with their crews, planned stops, work already booked; the crew
//!   free at any time.
//! - [`plan`]: the proposal for each job.
//!
//! The rule, per asset, most urgent first: take the **latest planned stop** the job fits in
//! (duration, crew) whose risk of failing before it starts is at most `max_risk`: the
//! production is stopped anyway and the part's life is used. If there is none, the latest
//! production-time window (a shift start) within `max_risk`; if there is none either (the
//! asset is already at risk), the earliest window there is. The next window after the
//! proposed one (a planned stop if there is one) gives the **risk of waiting**: the
//! probability of a failure before it starts.

pub mod calendar;
pub mod plan;
pub mod risk;

pub use calendar::{Booking, Calendar, PlannedStop, Shift};
pub use plan::{propose, Job, PlanOptions, Proposal, Window};
pub use risk::RulEstimate;
