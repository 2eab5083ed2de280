//! Local models for the edge agent, trained and run with Candle on the CPU.
//!
//! Three kinds of model, one artifact format:
//! - **anomaly**: a window of an asset's tags → a score normalised so that 1.0 is the
//!   calibrated alarm threshold, with the share of each tag in it (`conv-ae`, or `pca` T²+Q);
//! - **quality**: a soft sensor predicting a lab value from lagged process tags, with a band
//!   (`ridge`, or `ridge-mlp`: a small net that learns what the ridge misses);
//! - **rul**: remaining useful life from a window of condition signals, normalised per
//!   operating regime, with a band (`tcn`: an ensemble of dilated causal convolution nets).
//!
//! An artifact is a directory with `manifest.json` ([`Manifest`]) and `weights.safetensors`;
//! [`Model::load`] checks the format and the weights' checksum before anything runs.
//! Training ([`train`]) works from a [`dataset::Dataset`], usually read by [`csv`].

pub mod alarm;
mod arch;
pub mod artifact;
pub mod csv;
pub mod dataset;
pub mod eval;
mod linalg;
pub mod manifest;
mod model;
mod nn;
mod norm;
pub mod schedule;
mod threads;
pub mod train;

#[cfg(test)]
mod platform_tests;

pub use artifact::{Artifact, ArtifactError};
pub use manifest::{Manifest, ModelKind, MANIFEST_FORMAT};
pub use model::{Model, ModelError, Prediction};
