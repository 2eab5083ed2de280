//! Subcommands beyond `run`, `demo`, `check-config` and `watch`: one file per subcommand
//! family (commissioning tools for each protocol, model training and evaluation, the status page's users). `main.rs`
//! only parses the arguments and calls the `run` function of the matching file.

#[cfg(feature = "demo")]
pub mod demo;
pub mod modbus;
pub mod models;
pub mod opcua;
pub mod user;
