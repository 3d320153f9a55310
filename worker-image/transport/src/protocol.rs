//! The request/response messages shared by every transport. The byte-level codec (framed,
//! versioned, bounds-checked) lives here too so TCP and UCX speak the same protocol.

use bytes::Bytes;

/// Largest data payload one request may ask for (16 MiB).
pub const MAX_PAYLOAD: u32 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    /// Read `len` bytes of `path` (relative to the UFS root) at `offset`. A short reply means EOF.
    Read { path: String, offset: u64, len: u32 },
    Stat { path: String },
    List { path: String },
    /// bench: reply with `len` bytes from registered memory.
    BenchRead { len: u32 },
    /// bench: the client sends `payload`; the reply is `Ack`.
    BenchWrite { payload: Bytes },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Pong,
    Data(Bytes),
    Stat(FileStat),
    List(Vec<DirEntry>),
    Ack,
    Error { code: ErrorCode, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileStat {
    pub size: u64,
    pub is_dir: bool,
    /// POSIX mode bits (permission bits and file type).
    pub mode: u32,
    pub mtime_ns: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub stat: FileStat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotFound = 1,
    InvalidRequest = 2,
    Io = 3,
    TooLarge = 4,
    Unsupported = 5,
    NotADirectory = 6,
    IsADirectory = 7,
    Unavailable = 8,
}
