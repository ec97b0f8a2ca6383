//! What one access looks like: the hot-path [`Event`] the FUSE side hands to the sink, and the
//! owned [`Record`]s the log stores (accesses, inode→path, pid→process, drop counts).
//!
//! Every numeric code here (operation codes, cache codes, record tags) is part of the on-disk
//! format (docs/access-log.md): a code once given never changes meaning. New operations and new
//! record types get new codes; readers show unknown operation codes as `op#N` and skip unknown
//! record tags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A filesystem operation, as the FUSE paths name them.
///
/// The discriminants are the on-disk codes. Codes below 32 only read; 32 and up change the tree
/// or file data ([`Op::is_mutation`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Name lookup: `inode` is the parent, `name` the name, `aux` the found inode (0: none).
    Lookup = 1,
    /// getattr.
    Getattr = 2,
    /// readlink.
    Readlink = 3,
    /// open of a file.
    Open = 4,
    /// read: `range` is what was asked for (offset, bytes returned).
    Read = 5,
    /// opendir.
    Opendir = 6,
    /// readdir / readdirplus.
    Readdir = 7,
    /// getxattr.
    Getxattr = 8,
    /// listxattr.
    Listxattr = 9,
    /// access.
    Access = 10,
    /// statfs.
    Statfs = 11,
    /// release (last close) of a file.
    Release = 12,
    /// write: `range` is (offset, bytes written).
    Write = 32,
    /// create of a regular file: `inode` parent, `name`, `aux` the new inode.
    Create = 33,
    /// mknod: like create.
    Mknod = 34,
    /// mkdir: like create.
    Mkdir = 35,
    /// symlink: like create.
    Symlink = 36,
    /// link: `inode` the linked inode, `aux` the new parent, `name` the new name.
    Link = 37,
    /// unlink: `inode` parent, `name`.
    Unlink = 38,
    /// rmdir: `inode` parent, `name`.
    Rmdir = 39,
    /// rename: `inode` old parent, `name` old name, `aux` new parent, `name2` new name.
    Rename = 40,
    /// setattr (chmod, chown, truncate, utimes).
    Setattr = 41,
    /// setxattr.
    Setxattr = 42,
    /// removexattr.
    Removexattr = 43,
    /// fsync / fsyncdir.
    Fsync = 44,
    /// fallocate.
    Fallocate = 45,
    /// An overlay copied a lower file up (internal, caused by the op that follows it).
    CopyUp = 46,
}

impl Op {
    /// Every operation, in code order.
    pub const ALL: [Op; 27] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readlink,
        Op::Open,
        Op::Read,
        Op::Opendir,
        Op::Readdir,
        Op::Getxattr,
        Op::Listxattr,
        Op::Access,
        Op::Statfs,
        Op::Release,
        Op::Write,
        Op::Create,
        Op::Mknod,
        Op::Mkdir,
        Op::Symlink,
        Op::Link,
        Op::Unlink,
        Op::Rmdir,
        Op::Rename,
        Op::Setattr,
        Op::Setxattr,
        Op::Removexattr,
        Op::Fsync,
        Op::Fallocate,
        Op::CopyUp,
    ];

    /// The on-disk code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The operation with on-disk code `c`, if this build knows it.
    pub fn from_code(c: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|o| o.code() == c)
    }

    /// Lower-case name, as the CLI and JSON show it.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readlink => "readlink",
            Op::Open => "open",
            Op::Read => "read",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Access => "access",
            Op::Statfs => "statfs",
            Op::Release => "release",
            Op::Write => "write",
            Op::Create => "create",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Symlink => "symlink",
            Op::Link => "link",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Rename => "rename",
            Op::Setattr => "setattr",
            Op::Setxattr => "setxattr",
            Op::Removexattr => "removexattr",
            Op::Fsync => "fsync",
            Op::Fallocate => "fallocate",
            Op::CopyUp => "copyup",
        }
    }

    /// Whether the operation changes the tree or file data.
    pub const fn is_mutation(self) -> bool {
        self.code() >= 32
    }

    /// Whether `inode` is a directory and `name` an entry in it (so the event's path is
    /// `path(inode)/name`).
    pub const fn names_child(self) -> bool {
        matches!(
            self,
            Op::Lookup
                | Op::Create
                | Op::Mknod
                | Op::Mkdir
                | Op::Symlink
                | Op::Unlink
                | Op::Rmdir
                | Op::Rename
        )
    }

    /// Whether `aux` is the inode the operation found or made under `inode`/`name`.
    pub const fn aux_is_child(self) -> bool {
        matches!(self, Op::Lookup | Op::Create | Op::Mknod | Op::Mkdir | Op::Symlink)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operation name the CLI did not recognise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?} (expected one of: lookup, getattr, read, open, write, ...)")]
pub struct UnknownOp(pub String);

impl FromStr for Op {
    type Err = UnknownOp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.to_ascii_lowercase();
        Op::ALL.iter().copied().find(|o| o.name() == l).ok_or(UnknownOp(s.to_string()))
    }
}

/// Whether a read found its data in the local chunk cache.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cache {
    /// Every chunk was ready in the cache.
    Hit = 1,
    /// No chunk was ready: everything came from the backend.
    Miss = 2,
    /// Some chunks were ready, some were fetched.
    Partial = 3,
}

impl Cache {
    /// The on-disk code (0 means "not recorded").
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The outcome with code `c` (None for 0 and for codes this build does not know).
    pub const fn from_code(c: u8) -> Option<Cache> {
        match c {
            1 => Some(Cache::Hit),
            2 => Some(Cache::Miss),
            3 => Some(Cache::Partial),
            _ => None,
        }
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Cache::Hit => "hit",
            Cache::Miss => "miss",
            Cache::Partial => "partial",
        }
    }
}

/// A byte range of a file: `len` bytes from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Chunk indexes of a file a request touched, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkSpan {
    /// First chunk index touched.
    pub first: u32,
    /// Last chunk index touched (inclusive).
    pub last: u32,
}

impl ChunkSpan {
    /// Number of chunks in the span (0 when `last < first`, which a well-behaved caller never
    /// passes).
    pub const fn count(self) -> u64 {
        if self.last < self.first {
            0
        } else {
            (self.last - self.first) as u64 + 1
        }
    }
}

/// One access, as a FUSE path hands it to [`super::AccessSink::record`].
///
/// Plain data borrowed from the request: building one costs nothing, and the sink copies it
/// into its per-thread buffer (names included) without allocating. The sink stamps the time.
/// What `inode`, `aux`, `name` and `name2` mean depends on the operation (see [`Op`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// What was done.
    pub op: Op,
    /// The inode operated on (the parent directory for operations that name a child).
    pub inode: u64,
    /// Which layer (or mount) served it; the inode namespace is per layer.
    pub layer: u32,
    /// A second inode: the child found or made, or a rename's / link's new parent. 0 if none.
    pub aux: u64,
    /// Bytes read or written.
    pub range: Option<Range>,
    /// Chunk indexes of the file the request touched.
    pub chunks: Option<ChunkSpan>,
    /// Whether the data came from the cache.
    pub cache: Option<Cache>,
    /// The requesting thread's id, as FUSE reports it.
    pub pid: u32,
    /// The requesting uid.
    pub uid: u32,
    /// A name under `inode` (lookup, create, unlink, rename's old name, link's new name).
    pub name: Option<&'a [u8]>,
    /// rename's new name.
    pub name2: Option<&'a [u8]>,
}

impl<'a> Event<'a> {
    /// An event with only the required fields; add the rest with the `with_*` methods.
    #[inline]
    pub const fn new(op: Op, inode: u64, pid: u32, uid: u32) -> Self {
        Self {
            op,
            inode,
            layer: 0,
            aux: 0,
            range: None,
            chunks: None,
            cache: None,
            pid,
            uid,
            name: None,
            name2: None,
        }
    }

    /// Set the layer.
    #[inline]
    pub const fn with_layer(mut self, layer: u32) -> Self {
        self.layer = layer;
        self
    }

    /// Set the second inode (see [`Event::aux`]).
    #[inline]
    pub const fn with_aux(mut self, aux: u64) -> Self {
        self.aux = aux;
        self
    }

    /// Set the byte range.
    #[inline]
    pub const fn with_range(mut self, offset: u64, len: u64) -> Self {
        self.range = Some(Range { offset, len });
        self
    }

    /// Set the chunk span `first..=last`.
    #[inline]
    pub const fn with_chunks(mut self, first: u32, last: u32) -> Self {
        self.chunks = Some(ChunkSpan { first, last });
        self
    }

    /// Set the cache outcome.
    #[inline]
    pub const fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Set the name.
    #[inline]
    pub const fn with_name(mut self, name: &'a [u8]) -> Self {
        self.name = Some(name);
        self
    }

    /// Set the second name.
    #[inline]
    pub const fn with_name2(mut self, name: &'a [u8]) -> Self {
        self.name2 = Some(name);
        self
    }
}

/// A stored access: an [`Event`] with its time, owned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Nanoseconds since the log session started (monotonic clock).
    pub ts_ns: u64,
    /// [`Op`] code (kept as a code so a newer writer's operations still read).
    pub op: u8,
    /// Layer.
    pub layer: u32,
    /// Inode.
    pub inode: u64,
    /// Second inode (see [`Event::aux`]).
    pub aux: u64,
    /// Byte range.
    pub range: Option<Range>,
    /// Chunk span.
    pub chunks: Option<ChunkSpan>,
    /// [`Cache`] code, 0 when not recorded.
    pub cache: u8,
    /// Requesting thread id.
    pub pid: u32,
    /// Requesting uid.
    pub uid: u32,
    /// Name under `inode`.
    #[serde(serialize_with = "bytes::optional")]
    pub name: Option<Vec<u8>>,
    /// rename's new name.
    #[serde(serialize_with = "bytes::optional")]
    pub name2: Option<Vec<u8>>,
}

impl Access {
    /// An owned copy of `ev` stamped `ts_ns`.
    pub fn from_event(ev: &Event<'_>, ts_ns: u64) -> Self {
        Self {
            ts_ns,
            op: ev.op.code(),
            layer: ev.layer,
            inode: ev.inode,
            aux: ev.aux,
            range: ev.range,
            chunks: ev.chunks,
            cache: ev.cache.map_or(0, Cache::code),
            pid: ev.pid,
            uid: ev.uid,
            name: ev.name.map(<[u8]>::to_vec),
            name2: ev.name2.map(<[u8]>::to_vec),
        }
    }

    /// The operation, if this build knows its code.
    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.op)
    }
}

/// The path of an inode from this point of the log on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRecord {
    /// Layer of the inode.
    pub layer: u32,
    /// Inode.
    pub inode: u64,
    /// Absolute path inside the mount (`/` for the root), raw bytes.
    #[serde(serialize_with = "bytes::whole")]
    pub path: Vec<u8>,
}

/// A [`PathRecord`] to encode from a borrowed path (the writer's own copy).
#[derive(Serialize)]
pub(crate) struct PathRef<'a> {
    pub layer: u32,
    pub inode: u64,
    #[serde(serialize_with = "bytes::whole")]
    pub path: &'a [u8],
}

/// Byte strings go to the serializer whole (`serialize_bytes`). In bincode that is the same
/// encoding serde gives a `Vec<u8>` by default (a length, then the bytes, which is how they
/// are read back), without a serializer call per byte.
mod bytes {
    use serde::{Serialize, Serializer};

    pub fn whole<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn optional<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(v) => s.serialize_some(&Whole(v)),
            None => s.serialize_none(),
        }
    }

    struct Whole<'a>(&'a [u8]);

    impl Serialize for Whole<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
}

/// The process behind a requesting thread id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Thread id, as events carry it.
    pub pid: u32,
    /// Its thread group (process) id; 0 when it had exited before it was looked up.
    pub tgid: u32,
    /// `/proc/<pid>/comm` (empty when unknown).
    pub name: String,
}

/// Events lost since the previous drop record (memory bound hit, or the log disk failing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    /// When the writer noticed, ns since the session start.
    pub ts_ns: u64,
    /// Events lost.
    pub count: u64,
}

/// One record of the log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An access.
    Access(Access),
    /// inode → path.
    Path(PathRecord),
    /// pid → process.
    Process(ProcessRecord),
    /// Lost events.
    Dropped(DropRecord),
}

impl Record {
    /// The record's tag byte on disk.
    pub const fn tag(&self) -> u8 {
        match self {
            Record::Access(_) => tag::ACCESS,
            Record::Path(_) => tag::PATH,
            Record::Process(_) => tag::PROCESS,
            Record::Dropped(_) => tag::DROPPED,
        }
    }
}

/// Record tags: the first byte of each record's payload. Format constants: a tag never changes
/// meaning, and a record type's body never changes shape (a new shape is a new tag).
pub mod tag {
    /// [`super::Access`].
    pub const ACCESS: u8 = 1;
    /// [`super::PathRecord`].
    pub const PATH: u8 = 2;
    /// [`super::ProcessRecord`].
    pub const PROCESS: u8 = 3;
    /// [`super::DropRecord`].
    pub const DROPPED: u8 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for op in Op::ALL {
            assert!(seen.insert(op.code()), "duplicate code {}", op.code());
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(op.name().parse::<Op>(), Ok(op));
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(200), None);
    }

    #[test]
    fn op_classes() {
        for (op, mutation, child) in [
            (Op::Lookup, false, true),
            (Op::Read, false, false),
            (Op::Write, true, false),
            (Op::Rename, true, true),
            (Op::Unlink, true, true),
            (Op::Getattr, false, false),
        ] {
            assert_eq!(op.is_mutation(), mutation, "{op}");
            assert_eq!(op.names_child(), child, "{op}");
        }
        assert!("READ".parse::<Op>().is_ok());
        assert!("frobnicate".parse::<Op>().is_err());
    }

    #[test]
    fn cache_codes() {
        for c in [Cache::Hit, Cache::Miss, Cache::Partial] {
            assert_eq!(Cache::from_code(c.code()), Some(c));
        }
        assert_eq!(Cache::from_code(0), None);
        assert_eq!(Cache::from_code(9), None);
    }

    #[test]
    fn chunk_span_count() {
        for (first, last, n) in [(0, 0, 1), (3, 5, 3), (5, 3, 0), (0, u32::MAX, 1 << 32)] {
            assert_eq!(ChunkSpan { first, last }.count(), n);
        }
    }

    #[test]
    fn event_builder_and_owned_copy() {
        let ev = Event::new(Op::Rename, 7, 100, 0)
            .with_layer(2)
            .with_aux(9)
            .with_name(b"a")
            .with_name2(b"b");
        let a = Access::from_event(&ev, 42);
        assert_eq!(a.op(), Some(Op::Rename));
        assert_eq!((a.ts_ns, a.layer, a.inode, a.aux), (42, 2, 7, 9));
        assert_eq!(a.name.as_deref(), Some(&b"a"[..]));
        assert_eq!(a.name2.as_deref(), Some(&b"b"[..]));
        assert_eq!(a.cache, 0);
    }
}
