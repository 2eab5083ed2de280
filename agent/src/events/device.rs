//! The details of the device events, raised by the store writer from the drivers' reports.

use serde::{Deserialize, Serialize};

/// `device_connected`: nothing more (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConnected {}

/// `device_lost`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceLost {
    /// Why the connection was lost or could not be made, as the driver words it (the same
    /// sentence the status page shows), e.g. `connect failed: Connection refused (os error 111)`.
    pub reason: String,
}
