//! The request/response messages shared by every transport. The byte-level codec (framed,
//! versioned, bounds-checked) lives here too so TCP and UCX speak the same protocol.

use bytes::Bytes;

/// Largest data payload one request may ask for (16 MiB).
pub const MAX_PAYLOAD: u32 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    /// Read `len` bytes of `path` (relative to the UFS root) at `offset`. A short reply means EOF.
    /// With `expect`, the bytes must come from that version of the file: a worker whose file is
    /// at another version answers `ErrorCode::Stale` instead of serving other bytes.
    Read {
        path: String,
        offset: u64,
        len: u32,
        expect: Option<FileVersion>,
    },
    Stat {
        path: String,
    },
    List {
        path: String,
    },
    /// bench: reply with `len` bytes from registered memory.
    BenchRead {
        len: u32,
    },
    /// bench: the client sends `payload`; the reply is `Ack`.
    BenchWrite {
        payload: Bytes,
    },
    /// Warm-up: fill the pages of `path` covering `[offset, offset + len)` from the under-storage
    /// into the worker's tiers without sending them (`fill`), or only count which of them are
    /// resident (`fill` false, a residency check). With `expect`, only that version of the file
    /// counts (`Stale` otherwise). The reply is `Loaded`. The range is cut at EOF.
    Load {
        path: String,
        offset: u64,
        len: u64,
        fill: bool,
        expect: Option<FileVersion>,
    },
    /// Authentication, step 1 (`auth` module): the client asks for a challenge. The reply is
    /// `AuthChallenge`; an empty nonce means the server does not ask for authentication.
    AuthHello,
    /// Authentication, step 2: HMAC-SHA256(secret, nonce || context) of the last challenge.
    /// The reply is `Pong`, or an `Unauthenticated` error after which the server closes.
    AuthProof {
        mac: Bytes,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Pong,
    Data(Bytes),
    Stat(FileStat),
    List(Vec<DirEntry>),
    Ack,
    /// The answer to `Load`.
    Loaded(LoadCounts),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The answer to `AuthHello`: the server's fresh nonce (empty: no authentication asked).
    AuthChallenge {
        nonce: Bytes,
    },
}

/// What a `Load` found and did, in pages of the worker's page size within the asked range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LoadCounts {
    /// Pages the range covers (cut at EOF).
    pub pages: u64,
    /// Pages that were resident (MEM or SSD) before the request.
    pub resident: u64,
    /// Pages this request filled from the under-storage.
    pub filled: u64,
    /// Bytes of the range resident after the request (resident + filled pages, cut to the range).
    pub bytes: u64,
    /// Of `bytes`, those that were resident before the request.
    pub resident_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileStat {
    pub size: u64,
    pub is_dir: bool,
    /// POSIX mode bits (permission bits and file type).
    pub mode: u32,
    pub mtime_ns: i64,
}

/// One version of an under-storage file, as a `Stat` answer reports it: its size and mtime. A
/// client that opened a file at a version pins its reads to it (`Request::Read::expect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileVersion {
    pub fn of(stat: &FileStat) -> FileVersion {
        FileVersion {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
        }
    }
}

impl From<&FileStat> for FileVersion {
    fn from(stat: &FileStat) -> Self {
        FileVersion::of(stat)
    }
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
    /// A pinned read (`Read` with `expect`) found the file at another version (or gone): the
    /// caller's view of the file is out of date; it must stat/open the file again.
    Stale = 9,
    /// The connection has not proven knowledge of the cluster's secret (or proved it wrong);
    /// the server closes it after this reply.
    Unauthenticated = 10,
}

// ---------------------------------------------------------------------------------------------
// Codec.
//
// A frame is a fixed 24-byte header, then `meta_len` bytes of metadata (paths, stat fields,
// error text), then `data_len` bytes of payload (file bytes for `Data`/`BenchWrite`). The payload
// travels separately so TCP can send it with a vectored write and UCX can send it as the active
// message's data (rendezvous, registered memory) while the header and metadata form the AM header.
//
// header: magic u32 | version u16 | op u16 | id u64 | meta_len u32 | data_len u32  (little endian)

use bytes::{Buf, BufMut, BytesMut};

/// First four bytes of every frame: `RCC1` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RCC1");
/// Protocol version; a peer speaking another version gets `ErrorCode::Unsupported`.
pub const VERSION: u16 = 1;
/// Fixed header length in bytes.
pub const HEADER_LEN: usize = 24;
/// Largest metadata section (a directory listing is the largest legitimate one).
pub const MAX_META: u32 = 16 << 20;
/// Largest path accepted in a request.
pub const MAX_PATH: usize = 4096;
/// Largest authentication nonce or proof (both are 32 bytes today).
pub const MAX_AUTH_BYTES: usize = 64;

/// Operation codes. Requests have the high bit clear, responses set.
pub mod op {
    pub const PING: u16 = 0x0001;
    pub const READ: u16 = 0x0002;
    pub const STAT: u16 = 0x0003;
    pub const LIST: u16 = 0x0004;
    pub const BENCH_READ: u16 = 0x0005;
    pub const BENCH_WRITE: u16 = 0x0006;
    pub const LOAD: u16 = 0x0007;
    pub const AUTH_HELLO: u16 = 0x0008;
    pub const AUTH_PROOF: u16 = 0x0009;
    pub const PONG: u16 = 0x8001;
    pub const DATA: u16 = 0x8002;
    pub const STAT_REPLY: u16 = 0x8003;
    pub const LIST_REPLY: u16 = 0x8004;
    pub const ACK: u16 = 0x8005;
    pub const ERROR: u16 = 0x8006;
    pub const LOADED: u16 = 0x8007;
    pub const AUTH_CHALLENGE: u16 = 0x8008;
}

/// What went wrong decoding a frame. `fatal()` errors lose framing: the connection is closed
/// after an error reply; the others are answered with an error reply and the connection goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("bad magic {0:#010x} (not an rcache peer?)")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    BadVersion(u16),
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("unknown operation {0:#06x}")]
    UnknownOp(u16),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("unexpected payload of {len} bytes on operation {op:#06x}")]
    UnexpectedPayload { op: u16, len: u32 },
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    #[error("{len} unexpected bytes after {what}")]
    TrailingBytes { what: &'static str, len: usize },
    #[error("unknown {what} tag {tag:#04x}")]
    UnknownTag { what: &'static str, tag: u8 },
}

impl CodecError {
    /// After a fatal error the byte stream cannot be re-synchronised.
    pub fn fatal(&self) -> bool {
        matches!(
            self,
            CodecError::BadMagic(_) | CodecError::BadVersion(_) | CodecError::TooLarge { .. }
        )
    }

    /// The error code a server replies with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::BadVersion(_) | CodecError::UnknownOp(_) => ErrorCode::Unsupported,
            CodecError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

/// The fixed part of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub op: u16,
    pub id: u64,
    pub meta_len: u32,
    pub data_len: u32,
}

impl FrameHeader {
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(MAGIC);
        out.put_u16_le(VERSION);
        out.put_u16_le(self.op);
        out.put_u64_le(self.id);
        out.put_u32_le(self.meta_len);
        out.put_u32_le(self.data_len);
    }

    /// Decodes and bounds-checks a header. `buf` must hold at least `HEADER_LEN` bytes.
    /// On `BadVersion` / `TooLarge` the id is still returned so the error reply can carry it.
    pub fn decode(buf: &[u8]) -> Result<FrameHeader, (Option<u64>, CodecError)> {
        if buf.len() < HEADER_LEN {
            return Err((None, CodecError::Truncated("frame header")));
        }
        let mut b = &buf[..HEADER_LEN];
        let magic = b.get_u32_le();
        if magic != MAGIC {
            return Err((None, CodecError::BadMagic(magic)));
        }
        let version = b.get_u16_le();
        let op = b.get_u16_le();
        let id = b.get_u64_le();
        let meta_len = b.get_u32_le();
        let data_len = b.get_u32_le();
        if version != VERSION {
            return Err((Some(id), CodecError::BadVersion(version)));
        }
        if meta_len > MAX_META {
            let e = CodecError::TooLarge {
                what: "metadata",
                len: meta_len.into(),
                max: MAX_META.into(),
            };
            return Err((Some(id), e));
        }
        if data_len > MAX_PAYLOAD {
            let e = CodecError::TooLarge {
                what: "payload",
                len: data_len.into(),
                max: MAX_PAYLOAD.into(),
            };
            return Err((Some(id), e));
        }
        Ok(FrameHeader {
            op,
            id,
            meta_len,
            data_len,
        })
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn get_u32(b: &mut &[u8], what: &'static str) -> Result<u32, CodecError> {
    b.try_get_u32_le().map_err(|_| CodecError::Truncated(what))
}

fn get_u64(b: &mut &[u8], what: &'static str) -> Result<u64, CodecError> {
    b.try_get_u64_le().map_err(|_| CodecError::Truncated(what))
}

fn get_str(b: &mut &[u8], what: &'static str, max: usize) -> Result<String, CodecError> {
    let len = get_u32(b, what)? as usize;
    if len > max {
        return Err(CodecError::TooLarge {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    if b.len() < len {
        return Err(CodecError::Truncated(what));
    }
    let s = std::str::from_utf8(&b[..len])
        .map_err(|_| CodecError::BadUtf8(what))?
        .to_owned();
    b.advance(len);
    Ok(s)
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn get_bytes(b: &mut &[u8], what: &'static str, max: usize) -> Result<Bytes, CodecError> {
    let len = get_u32(b, what)? as usize;
    if len > max {
        return Err(CodecError::TooLarge {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    if b.len() < len {
        return Err(CodecError::Truncated(what));
    }
    let v = Bytes::copy_from_slice(&b[..len]);
    b.advance(len);
    Ok(v)
}

fn no_trailing(b: &[u8], what: &'static str) -> Result<(), CodecError> {
    if b.is_empty() {
        Ok(())
    } else {
        Err(CodecError::TrailingBytes { what, len: b.len() })
    }
}

fn put_stat(out: &mut BytesMut, s: &FileStat) {
    out.put_u64_le(s.size);
    out.put_u8(s.is_dir as u8);
    out.put_u32_le(s.mode);
    out.put_i64_le(s.mtime_ns);
}

fn get_stat(b: &mut &[u8]) -> Result<FileStat, CodecError> {
    let size = get_u64(b, "stat size")?;
    let is_dir = b
        .try_get_u8()
        .map_err(|_| CodecError::Truncated("stat is_dir"))?
        != 0;
    let mode = get_u32(b, "stat mode")?;
    let mtime_ns = b
        .try_get_i64_le()
        .map_err(|_| CodecError::Truncated("stat mtime"))?;
    Ok(FileStat {
        size,
        is_dir,
        mode,
        mtime_ns,
    })
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::InvalidRequest,
            3 => ErrorCode::Io,
            4 => ErrorCode::TooLarge,
            5 => ErrorCode::Unsupported,
            6 => ErrorCode::NotADirectory,
            7 => ErrorCode::IsADirectory,
            8 => ErrorCode::Unavailable,
            9 => ErrorCode::Stale,
            10 => ErrorCode::Unauthenticated,
            _ => return None,
        })
    }
}

/// Tag of the optional trailer of a `Read`'s metadata: the expected file version follows.
const READ_TRAILER_VERSION: u8 = 1;
/// Tag byte, size u64, mtime i64.
const READ_TRAILER_LEN: usize = 1 + 8 + 8;

/// The optional trailer after a `Read`'s length: nothing (a request without a version, as
/// clients before it send), or exactly one version trailer. Anything else is refused.
fn get_read_trailer(b: &mut &[u8]) -> Result<Option<FileVersion>, CodecError> {
    if b.is_empty() {
        return Ok(None);
    }
    let tag = b[0];
    if tag != READ_TRAILER_VERSION {
        return Err(CodecError::UnknownTag {
            what: "read trailer",
            tag,
        });
    }
    if b.len() < READ_TRAILER_LEN {
        return Err(CodecError::Truncated("read expected version"));
    }
    if b.len() > READ_TRAILER_LEN {
        return Err(CodecError::TrailingBytes {
            what: "read expected version",
            len: b.len() - READ_TRAILER_LEN,
        });
    }
    b.advance(1);
    let size = get_u64(b, "read expected size")?;
    let mtime_ns = b
        .try_get_i64_le()
        .map_err(|_| CodecError::Truncated("read expected mtime"))?;
    Ok(Some(FileVersion { size, mtime_ns }))
}

fn check_no_data(op: u16, data: &Bytes) -> Result<(), CodecError> {
    if data.is_empty() {
        Ok(())
    } else {
        Err(CodecError::UnexpectedPayload {
            op,
            len: data.len() as u32,
        })
    }
}

/// Writes one frame (header, then metadata, then payload) into `out`: the layout both
/// `Request::encode_frame` and `Response::encode_frame` produce.
fn put_frame(op: u16, id: u64, meta: &[u8], data: Option<&Bytes>, out: &mut BytesMut) {
    FrameHeader {
        op,
        id,
        meta_len: meta.len() as u32,
        data_len: data.map_or(0, |d| d.len() as u32),
    }
    .encode(out);
    out.put_slice(meta);
    if let Some(d) = data {
        out.put_slice(d);
    }
}

impl Request {
    /// Appends the metadata to `meta` and returns the op code and the payload (if any).
    pub fn encode_meta(&self, meta: &mut BytesMut) -> (u16, Option<&Bytes>) {
        match self {
            Request::Ping => (op::PING, None),
            Request::Read {
                path,
                offset,
                len,
                expect,
            } => {
                put_str(meta, path);
                meta.put_u64_le(*offset);
                meta.put_u32_le(*len);
                if let Some(v) = expect {
                    meta.put_u8(READ_TRAILER_VERSION);
                    meta.put_u64_le(v.size);
                    meta.put_i64_le(v.mtime_ns);
                }
                (op::READ, None)
            }
            Request::Stat { path } => {
                put_str(meta, path);
                (op::STAT, None)
            }
            Request::List { path } => {
                put_str(meta, path);
                (op::LIST, None)
            }
            Request::BenchRead { len } => {
                meta.put_u32_le(*len);
                (op::BENCH_READ, None)
            }
            Request::BenchWrite { payload } => (op::BENCH_WRITE, Some(payload)),
            Request::Load {
                path,
                offset,
                len,
                fill,
                expect,
            } => {
                put_str(meta, path);
                meta.put_u64_le(*offset);
                meta.put_u64_le(*len);
                meta.put_u8(*fill as u8);
                if let Some(v) = expect {
                    meta.put_u8(READ_TRAILER_VERSION);
                    meta.put_u64_le(v.size);
                    meta.put_i64_le(v.mtime_ns);
                }
                (op::LOAD, None)
            }
            Request::AuthHello => (op::AUTH_HELLO, None),
            Request::AuthProof { mac } => {
                put_bytes(meta, mac);
                (op::AUTH_PROOF, None)
            }
        }
    }

    /// Encodes a whole frame (header, metadata, payload) into `out`; for tests and tools.
    pub fn encode_frame(&self, id: u64, out: &mut BytesMut) {
        let mut meta = BytesMut::new();
        let (op, data) = self.encode_meta(&mut meta);
        put_frame(op, id, &meta, data, out);
    }

    pub fn decode(op: u16, meta: &[u8], data: Bytes) -> Result<Request, CodecError> {
        let mut b = meta;
        let req = match op {
            op::PING => Request::Ping,
            op::READ => {
                let path = get_str(&mut b, "read path", MAX_PATH)?;
                let offset = get_u64(&mut b, "read offset")?;
                let len = get_u32(&mut b, "read length")?;
                if len > MAX_PAYLOAD {
                    return Err(CodecError::TooLarge {
                        what: "read length",
                        len: len.into(),
                        max: MAX_PAYLOAD.into(),
                    });
                }
                let expect = get_read_trailer(&mut b)?;
                Request::Read {
                    path,
                    offset,
                    len,
                    expect,
                }
            }
            op::STAT => Request::Stat {
                path: get_str(&mut b, "stat path", MAX_PATH)?,
            },
            op::LIST => Request::List {
                path: get_str(&mut b, "list path", MAX_PATH)?,
            },
            op::BENCH_READ => {
                let len = get_u32(&mut b, "bench read length")?;
                if len > MAX_PAYLOAD {
                    return Err(CodecError::TooLarge {
                        what: "bench read length",
                        len: len.into(),
                        max: MAX_PAYLOAD.into(),
                    });
                }
                Request::BenchRead { len }
            }
            op::BENCH_WRITE => return Ok(Request::BenchWrite { payload: data }),
            op::LOAD => {
                let path = get_str(&mut b, "load path", MAX_PATH)?;
                let offset = get_u64(&mut b, "load offset")?;
                let len = get_u64(&mut b, "load length")?;
                let fill = match b.try_get_u8() {
                    Ok(0) => false,
                    Ok(1) => true,
                    Ok(tag) => {
                        return Err(CodecError::UnknownTag {
                            what: "load fill flag",
                            tag,
                        });
                    }
                    Err(_) => return Err(CodecError::Truncated("load fill flag")),
                };
                let expect = get_read_trailer(&mut b)?;
                Request::Load {
                    path,
                    offset,
                    len,
                    fill,
                    expect,
                }
            }
            op::AUTH_HELLO => Request::AuthHello,
            op::AUTH_PROOF => {
                let mac = get_bytes(&mut b, "auth proof", MAX_AUTH_BYTES)?;
                no_trailing(b, "auth proof")?;
                Request::AuthProof { mac }
            }
            other => return Err(CodecError::UnknownOp(other)),
        };
        check_no_data(op, &data)?;
        Ok(req)
    }
}

impl Response {
    /// Appends the metadata to `meta` and returns the op code and the payload (if any).
    pub fn encode_meta(&self, meta: &mut BytesMut) -> (u16, Option<&Bytes>) {
        match self {
            Response::Pong => (op::PONG, None),
            Response::Data(d) => (op::DATA, Some(d)),
            Response::Stat(s) => {
                put_stat(meta, s);
                (op::STAT_REPLY, None)
            }
            Response::List(entries) => {
                meta.put_u32_le(entries.len() as u32);
                for e in entries {
                    put_str(meta, &e.name);
                    put_stat(meta, &e.stat);
                }
                (op::LIST_REPLY, None)
            }
            Response::Ack => (op::ACK, None),
            Response::Loaded(c) => {
                meta.put_u64_le(c.pages);
                meta.put_u64_le(c.resident);
                meta.put_u64_le(c.filled);
                meta.put_u64_le(c.bytes);
                meta.put_u64_le(c.resident_bytes);
                (op::LOADED, None)
            }
            Response::Error { code, message } => {
                meta.put_u16_le(*code as u16);
                // Error text is for humans; keep frames small even if a handler is verbose.
                let msg = truncate_utf8(message, 4096);
                put_str(meta, msg);
                (op::ERROR, None)
            }
            Response::AuthChallenge { nonce } => {
                put_bytes(meta, nonce);
                (op::AUTH_CHALLENGE, None)
            }
        }
    }

    /// Encodes a whole frame into `out`; for tests and tools.
    pub fn encode_frame(&self, id: u64, out: &mut BytesMut) {
        let mut meta = BytesMut::new();
        let (op, data) = self.encode_meta(&mut meta);
        put_frame(op, id, &meta, data, out);
    }

    pub fn decode(op: u16, meta: &[u8], data: Bytes) -> Result<Response, CodecError> {
        let mut b = meta;
        let resp = match op {
            op::PONG => Response::Pong,
            op::DATA => return Ok(Response::Data(data)),
            op::STAT_REPLY => Response::Stat(get_stat(&mut b)?),
            op::LIST_REPLY => {
                let n = get_u32(&mut b, "list count")? as usize;
                // Each entry takes at least 25 bytes: a count larger than that is a lie.
                if n > b.len() / 25 {
                    return Err(CodecError::Truncated("list entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = get_str(&mut b, "entry name", MAX_PATH)?;
                    let stat = get_stat(&mut b)?;
                    entries.push(DirEntry { name, stat });
                }
                Response::List(entries)
            }
            op::ACK => Response::Ack,
            op::LOADED => Response::Loaded(LoadCounts {
                pages: get_u64(&mut b, "loaded pages")?,
                resident: get_u64(&mut b, "loaded resident")?,
                filled: get_u64(&mut b, "loaded filled")?,
                bytes: get_u64(&mut b, "loaded bytes")?,
                resident_bytes: get_u64(&mut b, "loaded resident bytes")?,
            }),
            op::ERROR => {
                let raw = b
                    .try_get_u16_le()
                    .map_err(|_| CodecError::Truncated("error code"))?;
                let code = ErrorCode::from_u16(raw).ok_or(CodecError::UnknownErrorCode(raw))?;
                let message = get_str(&mut b, "error message", 1 << 16)?;
                Response::Error { code, message }
            }
            op::AUTH_CHALLENGE => {
                let nonce = get_bytes(&mut b, "auth nonce", MAX_AUTH_BYTES)?;
                no_trailing(b, "auth nonce")?;
                Response::AuthChallenge { nonce }
            }
            other => return Err(CodecError::UnknownOp(other)),
        };
        check_no_data(op, &data)?;
        Ok(resp)
    }

    /// Shorthand for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One decoded frame: header, metadata, payload.
pub type RawFrame = (FrameHeader, Bytes, Bytes);
/// A decode failure with the request id when the header carried one.
pub type FrameError = (Option<u64>, CodecError);

/// Splits one complete frame off the front of `buf`: header, metadata, payload. Returns `Ok(None)`
/// when more bytes are needed. Used by tests and by tools; the TCP transport reads incrementally.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let h = FrameHeader::decode(buf)?;
    let total = HEADER_LEN + h.meta_len as usize + h.data_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let meta = buf.split_to(h.meta_len as usize).freeze();
    let data = buf.split_to(h.data_len as usize).freeze();
    Ok(Some((h, meta, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_req(r: Request) {
        let mut buf = BytesMut::new();
        r.encode_frame(42, &mut buf);
        let (h, meta, data) = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(h.id, 42);
        assert_eq!(Request::decode(h.op, &meta, data).unwrap(), r);
        assert!(buf.is_empty());
    }

    fn roundtrip_resp(r: Response) {
        let mut buf = BytesMut::new();
        r.encode_frame(7, &mut buf);
        let (h, meta, data) = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(h.id, 7);
        assert_eq!(Response::decode(h.op, &meta, data).unwrap(), r);
    }

    #[test]
    fn load_and_its_answer_roundtrip_with_and_without_a_version() {
        for expect in [
            None,
            Some(FileVersion {
                size: 5 << 30,
                mtime_ns: -3,
            }),
        ] {
            for fill in [true, false] {
                roundtrip_req(Request::Load {
                    path: "data/ü.bin".into(),
                    offset: 64 << 20,
                    len: 4 << 20,
                    fill,
                    expect,
                });
            }
        }
        roundtrip_resp(Response::Loaded(LoadCounts {
            pages: 4,
            resident: 1,
            filled: 3,
            bytes: 4 << 20,
            resident_bytes: 1 << 20,
        }));
    }

    #[test]
    fn a_load_with_an_unknown_fill_flag_is_refused_naming_it() {
        let mut meta = BytesMut::new();
        put_str(&mut meta, "a");
        meta.put_u64_le(0);
        meta.put_u64_le(1);
        meta.put_u8(7);
        let e = Request::decode(op::LOAD, &meta, Bytes::new()).unwrap_err();
        assert_eq!(
            e,
            CodecError::UnknownTag {
                what: "load fill flag",
                tag: 7
            }
        );
    }

    #[test]
    fn every_request_roundtrips() {
        roundtrip_req(Request::Ping);
        roundtrip_req(Request::AuthHello);
        roundtrip_req(Request::AuthProof {
            mac: Bytes::from(vec![9u8; 32]),
        });
        roundtrip_req(Request::Read {
            path: "a/b/ü.bin".into(),
            offset: 1 << 40,
            len: 1 << 20,
            expect: None,
        });
        roundtrip_req(Request::Read {
            path: "a/b/ü.bin".into(),
            offset: 7,
            len: 4096,
            expect: Some(FileVersion {
                size: 1 << 33,
                mtime_ns: -1_700_000_000_123_456_789,
            }),
        });
        roundtrip_req(Request::Stat { path: "x".into() });
        roundtrip_req(Request::List { path: "".into() });
        roundtrip_req(Request::BenchRead { len: 4096 });
        roundtrip_req(Request::BenchWrite {
            payload: Bytes::from(vec![7u8; 70_000]),
        });
    }

    #[test]
    fn every_response_roundtrips() {
        roundtrip_resp(Response::Pong);
        roundtrip_resp(Response::Data(Bytes::from_static(b"hello")));
        roundtrip_resp(Response::Data(Bytes::new()));
        let st = FileStat {
            size: 5,
            is_dir: false,
            mode: 0o100644,
            mtime_ns: -3,
        };
        roundtrip_resp(Response::Stat(st.clone()));
        roundtrip_resp(Response::List(vec![DirEntry {
            name: "f".into(),
            stat: st,
        }]));
        roundtrip_resp(Response::List(vec![]));
        roundtrip_resp(Response::Ack);
        roundtrip_resp(Response::error(ErrorCode::NotFound, "no such file: a"));
        roundtrip_resp(Response::error(ErrorCode::Stale, "a changed; reopen it"));
        roundtrip_resp(Response::error(
            ErrorCode::Unauthenticated,
            "authentication failed: wrong proof",
        ));
        roundtrip_resp(Response::AuthChallenge {
            nonce: Bytes::from(vec![7u8; 32]),
        });
        roundtrip_resp(Response::AuthChallenge {
            nonce: Bytes::new(),
        });
    }

    /// The metadata of a `Read` as a client without versions (before the trailer) writes it.
    fn read_meta_without_trailer(path: &str, offset: u64, len: u32) -> BytesMut {
        let mut meta = BytesMut::new();
        put_str(&mut meta, path);
        meta.put_u64_le(offset);
        meta.put_u32_le(len);
        meta
    }

    #[test]
    fn a_read_without_the_version_trailer_still_decodes_as_unpinned() {
        let meta = read_meta_without_trailer("f", 9, 100);
        assert_eq!(
            Request::decode(op::READ, &meta, Bytes::new()).unwrap(),
            Request::Read {
                path: "f".into(),
                offset: 9,
                len: 100,
                expect: None
            }
        );
    }

    #[test]
    fn a_malformed_read_trailer_is_an_error_not_a_panic() {
        let base = read_meta_without_trailer("f", 0, 10);
        let with = |extra: &[u8]| {
            let mut m = base.clone();
            m.put_slice(extra);
            Request::decode(op::READ, &m, Bytes::new())
        };
        // Unknown tag.
        assert_eq!(
            with(&[2; 17]).unwrap_err(),
            CodecError::UnknownTag {
                what: "read trailer",
                tag: 2
            }
        );
        // Tag, but the version is cut short.
        assert!(matches!(
            with(&[1, 0, 0, 0]).unwrap_err(),
            CodecError::Truncated(_)
        ));
        assert!(matches!(with(&[1]).unwrap_err(), CodecError::Truncated(_)));
        // A whole trailer and then more.
        let mut long = vec![1u8];
        long.extend_from_slice(&[0; 16]);
        long.push(0);
        assert_eq!(
            with(&long).unwrap_err(),
            CodecError::TrailingBytes {
                what: "read expected version",
                len: 1
            }
        );
        assert_eq!(with(&long).unwrap_err().code(), ErrorCode::InvalidRequest);
        assert!(!with(&long).unwrap_err().fatal());
    }

    #[test]
    fn header_with_wrong_magic_is_fatal() {
        let mut buf = BytesMut::new();
        Request::Ping.encode_frame(1, &mut buf);
        buf[0] = b'X';
        let (id, e) = split_frame(&mut buf).unwrap_err();
        assert_eq!(id, None);
        assert!(matches!(e, CodecError::BadMagic(_)));
        assert!(e.fatal());
    }

    #[test]
    fn header_with_other_version_reports_id_and_unsupported() {
        let mut buf = BytesMut::new();
        Request::Ping.encode_frame(9, &mut buf);
        buf[4] = 99;
        let (id, e) = split_frame(&mut buf).unwrap_err();
        assert_eq!(id, Some(9));
        assert_eq!(e.code(), ErrorCode::Unsupported);
    }

    #[test]
    fn payload_over_max_is_refused_before_reading_it() {
        let mut buf = BytesMut::new();
        FrameHeader {
            op: op::BENCH_WRITE,
            id: 3,
            meta_len: 0,
            data_len: MAX_PAYLOAD + 1,
        }
        .encode(&mut buf);
        let (id, e) = split_frame(&mut buf).unwrap_err();
        assert_eq!(id, Some(3));
        assert_eq!(e.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn truncated_or_lying_metadata_is_an_error_not_a_panic() {
        assert!(Request::decode(op::READ, &[1, 0, 0, 0], Bytes::new()).is_err());
        assert!(Request::decode(op::READ, &[255, 255, 255, 255], Bytes::new()).is_err());
        assert!(Response::decode(op::LIST_REPLY, &[255, 255, 255, 255], Bytes::new()).is_err());
        assert!(Request::decode(op::STAT, &[2, 0, 0, 0, 0xff, 0xfe], Bytes::new()).is_err());
        assert_eq!(
            Request::decode(0x7777, &[], Bytes::new()).unwrap_err(),
            CodecError::UnknownOp(0x7777)
        );
        assert!(Request::decode(op::PING, &[], Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut full = BytesMut::new();
        Request::Stat { path: "abc".into() }.encode_frame(1, &mut full);
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert!(split_frame(&mut part).unwrap().is_none());
    }
}
