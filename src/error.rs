//! The library's error type. Every failure carries a message that says what was wrong and
//! where; the C layer turns it into a status code plus the thread-local last-error message.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    InvalidArgument(String),
    Unsupported(String),
    OutOfMemory(String),
    CorruptCheckpoint(String),
    Device(String),
    DeviceUnavailable(String),
    Internal(String),
    /// The caller's all-reduce of a sharded state failed.
    Collective(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::Unsupported(m)
            | Error::OutOfMemory(m)
            | Error::CorruptCheckpoint(m)
            | Error::Device(m)
            | Error::DeviceUnavailable(m)
            | Error::Internal(m)
            | Error::Collective(m) => m,
        }
    }

    /// The same error, its message prefixed with where it happened.
    pub fn context(self, place: &str) -> Error {
        let with = |m: String| format!("{place}: {m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(with(m)),
            Error::Unsupported(m) => Error::Unsupported(with(m)),
            Error::OutOfMemory(m) => Error::OutOfMemory(with(m)),
            Error::CorruptCheckpoint(m) => Error::CorruptCheckpoint(with(m)),
            Error::Device(m) => Error::Device(with(m)),
            Error::DeviceUnavailable(m) => Error::DeviceUnavailable(with(m)),
            Error::Internal(m) => Error::Internal(with(m)),
            Error::Collective(m) => Error::Collective(with(m)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// `Err(InvalidArgument)` built with `format!` syntax.
macro_rules! invalid {
    ($($arg:tt)*) => { Err($crate::error::Error::InvalidArgument(format!($($arg)*))) };
}
pub(crate) use invalid;

/// Allocates a vector of `len` copies of `value`, reporting failure instead of aborting.
pub fn try_filled<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::OutOfMemory(format!("cannot allocate {len} elements of {} bytes for {what}", std::mem::size_of::<T>()))
    })?;
    v.resize(len, value);
    Ok(v)
}

/// Allocates a zeroed f32 vector, reporting failure instead of aborting the process.
pub fn try_zeroed(len: usize, what: &str) -> Result<Vec<f32>> {
    try_filled(len, 0.0, what)
}
