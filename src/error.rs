//! One error type for the whole library. Every message names the operation and the
//! operands involved, so a user can find the faulty call without a debugger.

use crate::{DType, Device};

/// Everything that can go wrong in kiln.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes do not fit the operation,
    /// e.g. `matmul: lhs [2, 3] and rhs [4, 5]: inner dimensions 3 and 4 differ`.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// What was expected and what was found.
        msg: String,
    },

    /// An operand has a dtype the operation does not accept.
    #[error("{op}: {msg}")]
    DType {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// What was expected and what was found.
        msg: String,
    },

    /// Operands live on different devices.
    #[error("{op}: operands are on different devices: {lhs:?} and {rhs:?}")]
    DeviceMismatch {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// The device of the first operand.
        lhs: Device,
        /// The device of the operand that differs.
        rhs: Device,
    },

    /// A dimension index outside `-rank..rank`.
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank} (shape {shape:?})")]
    Dim {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// The dimension asked for (negative counts from the end).
        dim: isize,
        /// The tensor's number of dimensions.
        rank: usize,
        /// The tensor's shape.
        shape: Vec<usize>,
    },

    /// An index (token id, narrow range, ...) outside its dimension.
    #[error("{op}: {msg}")]
    Index {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// The index, its range and which operand it indexes.
        msg: String,
    },

    /// The device cannot be used on this machine (no driver, no such ordinal, not built).
    #[error("device {device:?} is unavailable: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        device: Device,
        /// Why it cannot be used (the driver's error, the number of GPUs present, ...).
        reason: String,
    },

    /// Misuse of the autograd graph (backward of a non-scalar, a freed graph, ...).
    #[error("backward: {0}")]
    Autograd(String),

    /// A value the operation rejects (a probability outside [0, 1), a negative size, ...).
    #[error("{op}: {msg}")]
    Invalid {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// The value, and what is accepted.
        msg: String,
    },

    /// A file whose contents do not follow its format (a corrupt or truncated GGUF, ...),
    /// e.g. `model.gguf: truncated at byte 24 while reading the tensor count`.
    #[error("{file}: {what}")]
    Format {
        /// The file's name or path.
        file: String,
        /// What is wrong and where (a byte offset, a key, a tensor name).
        what: String,
    },

    /// An allocation that the device cannot satisfy: `bytes` is what `op` asked for (computed
    /// without overflow, so a size past `usize::MAX` is reported as it is).
    #[error("{op}: out of memory: cannot allocate {bytes} bytes ({}) on {device}", human_bytes(*.bytes))]
    OutOfMemory {
        /// The operation that failed (`"matmul"`, `"layer_norm"`, ...).
        op: &'static str,
        /// The bytes requested.
        bytes: u128,
        /// The device the allocation was for.
        device: Device,
    },

    /// An I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (`"reading runs/x/model.safetensors"`).
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// `std::result::Result` with kiln's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }

    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }

    pub(crate) fn index(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Index { op, msg: msg.into() }
    }

    /// The operation needs a floating-point operand but got `got`.
    pub(crate) fn not_float(op: &'static str, got: DType) -> Self {
        Error::DType {
            op,
            msg: format!("expected a floating-point tensor (f32, f64, bf16, f16), got {got:?}"),
        }
    }

    pub(crate) fn dtype_mismatch(op: &'static str, lhs: DType, rhs: DType) -> Self {
        Error::DType {
            op,
            msg: format!("operands have different dtypes {lhs} and {rhs}; convert one with to_dtype"),
        }
    }

    /// `op` could not get `count` elements of `elem_bytes` bytes each on `device`.
    pub(crate) fn out_of_memory(op: &'static str, count: usize, elem_bytes: usize, device: Device) -> Self {
        Error::OutOfMemory {
            op,
            bytes: count as u128 * elem_bytes as u128,
            device,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// An I/O failure from code that has no more context to give (the `?` on a `std::io::Result` in a
/// function returning `kiln::Result`); kiln itself says what it was doing (`reading model.safetensors`).
impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::io("I/O error", source)
    }
}

/// `bytes` in binary units for messages: `8000000000000` -> `7.28 TiB`.
pub(crate) fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}
