//! The gateway's config file (TOML): its shape, loading and validation.
//!
//! - [`types`]: the sections, with doc-commented fields and defaults.
//! - [`validate`]: the pure check that collects *every* problem with its path.
//! - [`build`]: a validated config → [`AgentConfig`], the values the agent runs with,
//!   every default resolved once.
//! - [`load`]: read, parse, catch unknown keys, validate, and point at the line of each problem.
//! - [`former`]: keys older versions had, so an old config is told what to change.
//! - [`reference`]: the config reference (`docs/configuration.md`), generated from the
//!   keys and their defaults (`edge-agent config-reference`).

pub mod build;
pub mod former;
pub mod load;
pub mod reference;
pub mod types;
pub mod validate;

pub use build::{AgentConfig, ModelRun};
pub use load::{load_file, load_str, reread, ConfigError, Problem, RereadError, REREAD_TIMEOUT};
pub use types::{Config, GatewayConfig, MqttConfig, StoreConfig, WebConfig};

#[cfg(test)]
mod tests;
