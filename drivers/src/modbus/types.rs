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

/// How the registers (or bit) of a tag encode its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A coil, a discrete input, or (with `bit`) one bit of a register.
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// ASCII text, two characters per register (`length` registers).
    String,
}

impl DataType {
    pub const ALL: [DataType; 10] = [
        DataType::Bool,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::String,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }

    /// Registers (or bits, for `bool`) one value occupies; a string's length is its own
    /// (`TagConfig::register_count`), so it counts 1 here.
    pub fn register_count(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::String => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// Whether values of this type are numbers (scaled, clamped, deadbanded).
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String)
    }
}

/// Order of a value's bytes on the wire, `A` being the most significant byte.
///
/// The 64-bit orders follow the same rule: `ABCD` is big-endian (`ABCDEFGH`), `CDAB`
/// reverses the order of the registers (`GHEFCDAB`), `BADC` swaps the bytes inside each
/// register (`BADCFEHG`), `DCBA` is little-endian (`HGFEDCBA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
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

impl ByteOrder {
    pub const ALL: [ByteOrder; 4] = [ByteOrder::ABCD, ByteOrder::CDAB, ByteOrder::BADC, ByteOrder::DCBA];

    pub fn as_str(self) -> &'static str {
        match self {
            ByteOrder::ABCD => "ABCD",
            ByteOrder::CDAB => "CDAB",
            ByteOrder::BADC => "BADC",
            ByteOrder::DCBA => "DCBA",
        }
    }

    /// Whether the registers of a multi-register value come least significant first.
    pub fn words_reversed(self) -> bool {
        matches!(self, ByteOrder::CDAB | ByteOrder::DCBA)
    }

    /// Whether the two bytes inside each register are swapped.
    pub fn bytes_swapped(self) -> bool {
        matches!(self, ByteOrder::BADC | ByteOrder::DCBA)
    }
}
