//! The words a Modbus tag is described with.

use serde::{Deserialize, Serialize};

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write bits (function code 1).
    Coil,
    /// Read-only bits (function code 2).
    Discrete,
    /// Read/write 16-bit registers (function code 3).
    Holding,
    /// Read-only 16-bit registers (function code 4).
    Input,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }

    /// Most items one request may read (Modbus application protocol, section 6).
    pub fn max_per_request(self) -> u16 {
        match self {
            Table::Coil | Table::Discrete => 2000,
            Table::Holding | Table::Input => 125,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
        }
    }

    /// Registers (or bits, for `bool`) one value occupies.
    pub fn register_count(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }
}

/// Order of a value's bytes on the wire, `A` being the most significant byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ByteOrder {
    /// Big-endian, as the Modbus specification has it.
    #[default]
    ABCD,
    /// Words swapped (common on Schneider and many meters).
    CDAB,
    /// Bytes swapped inside each word.
    BADC,
    /// Little-endian.
    DCBA,
}
