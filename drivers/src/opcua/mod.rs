//! OPC-UA client driver (async-opcua, pure-Rust crypto).
//!
//! - [`browse`]: commissioning: the address-space tree and a config snippet.
//! - [`config`]: the `[devices.opcua]` table and the OPC-UA checks of tags.
//! - [`device`]: the built device (every default resolved once) the driver runs on.
//! - [`pki`]: the agent's certificate directory: list, trust.
//! - [`session`]: the client with the agent's PKI, one connection attempt, the endpoint gate.
//! - [`subscription`]: groups, browse-path resolution, subscriptions and monitored items.
//! - [`driver`]: the device task: reports, writes, recovery after a lost session.
//! - [`error`]: why a device is not connected, with the server's status code.
//! - [`reconnect`]: the jittered wait between two session attempts, and its bound.
//! - [`value`]: data values → samples, engineering values → variants.

pub mod browse;
pub mod config;
pub mod device;
pub mod driver;
pub mod error;
pub mod pki;
pub mod reconnect;
pub mod session;
pub mod subscription;
pub mod value;

pub use config::OpcuaConfig;
pub use device::{build_opcua, Connection, Identity, OpcuaDevice, OpcuaTag, PasswordSource};
pub use driver::{run_device, run_device_beating};
pub use error::{OpcuaError, ServiceError};
pub use opcua::types::NodeId;
pub use session::pki_dir;
