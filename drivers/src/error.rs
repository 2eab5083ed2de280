//! Why a device is not connected, as its driver says: the reason a driver hands to the
//! agent with [`crate::ReportKind::Disconnected`]. The agent turns it into the operator's
//! sentence (`Display`) where it shows it: the device's line on the status page and the
//! `device_lost` event.

use std::sync::Arc;

use crate::modbus::ModbusError;
use crate::opcua::OpcuaError;

/// Why a device's connection was lost or could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    /// From the Modbus driver (shared: one failure of a bus loses every device on it).
    #[error(transparent)]
    Modbus(Arc<ModbusError>),
    #[error(transparent)]
    Opcua(OpcuaError),
}

impl From<Arc<ModbusError>> for DeviceError {
    fn from(e: Arc<ModbusError>) -> Self {
        DeviceError::Modbus(e)
    }
}

impl From<OpcuaError> for DeviceError {
    fn from(e: OpcuaError) -> Self {
        DeviceError::Opcua(e)
    }
}
