//! The on-disk log: a fixed, checksummed header, then append-only framed records.
//!
//! ```text
//! header (64 bytes, little endian)
//!   0  magic "STRATAAL"          8  version u16        10 header_len u16
//!   12 mode u8, 3 reserved       16 start_unix_ns u64  24 session u64
//!   32 file_seq u32, 24 reserved 60 crc32 of bytes 0..60
//! frame (repeated)
//!   len u32 | crc32(payload) u32 | payload = tag u8 + bincode body (varint, little endian)
//! ```
//!
//! A new file is written header-first to a hidden temporary name, fsynced and renamed into
//! place, so a log file always has a whole header. Records are appended; a crash can leave at
//! most a torn last frame, which the reader reports as [`ParsedLog::torn_tail`] while returning
//! everything before it. Parsing is pure ([`parse_log`]) and treats its input as hostile.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::config::Mode;
use super::event::{tag, Access, DropRecord, PathRecord, PathRef, ProcessRecord, Record};
use super::Error;

/// File magic. Format constant.
pub const MAGIC: [u8; 8] = *b"STRATAAL";
/// The format version this build writes and the newest it reads. Bumped only when a reader of
/// the previous version would misread a file (new record tags and appended record fields do
/// not need a bump: older readers skip and ignore them).
pub const VERSION: u16 = 1;
/// Header length written by this version. Readers accept longer headers (a later version may
/// add fields) up to [`MAX_HEADER_LEN`].
pub const HEADER_LEN: usize = 64;
/// Largest header length a reader accepts.
pub const MAX_HEADER_LEN: usize = 4096;
/// Bytes of frame header before each payload: length and checksum.
pub const FRAME_HEAD: usize = 8;
/// Largest payload a writer produces or a reader accepts (names are at most 255 bytes and
/// paths 4 KiB; anything larger is corruption).
pub const MAX_RECORD_LEN: usize = 64 << 10;

/// The log header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// Format version of the file.
    pub version: u16,
    /// Recording mode (None: a mode code this build does not know).
    pub mode: Option<Mode>,
    /// Wall clock at the session start (`ts_ns` 0), ns since the Unix epoch.
    pub start_unix_ns: u64,
    /// Random id shared by all files of one session (the live file and its rotations).
    pub session: u64,
    /// 0 for the session's first file, +1 at each rotation.
    pub file_seq: u32,
}

impl LogHeader {
    /// A version-[`VERSION`] header.
    pub fn new(mode: Mode, start_unix_ns: u64, session: u64, file_seq: u32) -> Self {
        Self { version: VERSION, mode: Some(mode), start_unix_ns, session, file_seq }
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[12] = self.mode.map_or(u8::MAX, Mode::code);
        b[16..24].copy_from_slice(&self.start_unix_ns.to_le_bytes());
        b[24..32].copy_from_slice(&self.session.to_le_bytes());
        b[32..36].copy_from_slice(&self.file_seq.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse the header at the start of `data`; returns it and the offset of the first record.
    pub fn decode(data: &[u8]) -> Result<(Self, usize), Error> {
        if data.len() < 12 || data[0..8] != MAGIC {
            if data.len() >= 8 && data[0..8] != MAGIC {
                let mut found = [0u8; 8];
                found.copy_from_slice(&data[0..8]);
                return Err(Error::BadMagic { found });
            }
            return Err(Error::TruncatedHeader { len: data.len() as u64, need: HEADER_LEN as u64 });
        }
        let version = u16::from_le_bytes([data[8], data[9]]);
        if version == 0 {
            return Err(Error::BadVersion);
        }
        if version > VERSION {
            return Err(Error::FutureVersion { found: version, supported: VERSION });
        }
        let header_len = usize::from(u16::from_le_bytes([data[10], data[11]]));
        if !(HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) {
            return Err(Error::BadHeaderLen { len: header_len as u64 });
        }
        if data.len() < header_len {
            return Err(Error::TruncatedHeader { len: data.len() as u64, need: header_len as u64 });
        }
        // The checksum covers the first 60 bytes; a longer (future minor) header protects its
        // extra fields itself.
        let stored = u32::from_le_bytes(data[60..64].try_into().unwrap_or_default());
        let computed = crc32fast::hash(&data[0..60]);
        if stored != computed {
            return Err(Error::HeaderChecksum { stored, computed });
        }
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or_default());
        let header = LogHeader {
            version,
            mode: Mode::from_code(data[12]),
            start_unix_ns: u64_at(16),
            session: u64_at(24),
            file_seq: u32::from_le_bytes(data[32..36].try_into().unwrap_or_default()),
        };
        Ok((header, header_len))
    }
}

/// bincode settings of record bodies. Format constant: varint integers, little endian; trailing
/// bytes allowed so a later writer may append fields to a body.
fn codec(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(limit)
        .allow_trailing_bytes()
}

/// Append `rec` to `out` as one frame.
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) -> Result<(), Error> {
    match rec {
        Record::Access(a) => encode_frame(rec.tag(), a, out),
        Record::Path(p) => encode_frame(rec.tag(), p, out),
        Record::Process(p) => encode_frame(rec.tag(), p, out),
        Record::Dropped(d) => encode_frame(rec.tag(), d, out),
    }
}

/// Append a frame of record kind `tag` with body `body` to `out`. Encoded without bincode's
/// size limit (which serializes everything twice, once to count); the length is checked after.
fn encode_frame<T: Serialize>(tag: u8, body: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEAD]);
    out.push(tag);
    let r = bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .serialize_into(&mut *out, body)
        .map_err(|e| Error::Encode(e.to_string()));
    let len = out.len() - start - FRAME_HEAD;
    if let Err(e) = r {
        out.truncate(start);
        return Err(e);
    }
    if len > MAX_RECORD_LEN {
        out.truncate(start);
        return Err(Error::RecordTooLarge { len: len as u64, max: MAX_RECORD_LEN as u64 });
    }
    let crc = crc32fast::hash(&out[start + FRAME_HEAD..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    codec(body.len() as u64).deserialize(body).ok()
}

/// One step of walking the frames of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A record this build knows.
    Record(Record),
    /// A well-framed record with a tag this build does not know (written by a newer strata).
    Unknown {
        /// Its tag.
        tag: u8,
    },
}

/// Iterator over the frames after the header. Stops at the end or at the first frame that is
/// short, oversized, fails its checksum or does not decode; [`Frames::torn_at`] then says where.
pub struct Frames<'a> {
    data: &'a [u8],
    pos: usize,
    torn: Option<u64>,
}

impl<'a> Frames<'a> {
    /// Frames of `data` starting at byte `pos` (the first byte after the header).
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos: pos.min(data.len()), torn: None }
    }

    /// File offset of the first byte that is not part of a whole, valid frame, once iteration
    /// has reached it; None while iterating and when the log ends cleanly.
    pub fn torn_at(&self) -> Option<u64> {
        self.torn
    }

    /// Offset of the next frame.
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    fn parse_one(&self) -> Option<(Frame, usize)> {
        let rest = &self.data[self.pos..];
        if rest.len() < FRAME_HEAD {
            return None;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().ok()?);
        // A zero length never comes from the writer (every payload has a tag): zero-filled
        // tails (delayed allocation after a power cut) stop here.
        if len == 0 || len > MAX_RECORD_LEN || rest.len() - FRAME_HEAD < len {
            return None;
        }
        let payload = &rest[FRAME_HEAD..FRAME_HEAD + len];
        if crc32fast::hash(payload) != crc {
            return None;
        }
        let body = &payload[1..];
        let frame = match payload[0] {
            tag::ACCESS => Frame::Record(Record::Access(decode_body::<Access>(body)?)),
            tag::PATH => Frame::Record(Record::Path(decode_body::<PathRecord>(body)?)),
            tag::PROCESS => Frame::Record(Record::Process(decode_body::<ProcessRecord>(body)?)),
            tag::DROPPED => Frame::Record(Record::Dropped(decode_body::<DropRecord>(body)?)),
            t => Frame::Unknown { tag: t },
        };
        Some((frame, FRAME_HEAD + len))
    }
}

impl Iterator for Frames<'_> {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.torn.is_some() || self.pos >= self.data.len() {
            return None;
        }
        match self.parse_one() {
            Some((f, n)) => {
                self.pos += n;
                Some(f)
            }
            None => {
                self.torn = Some(self.pos as u64);
                None
            }
        }
    }
}

/// A whole log file, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLog {
    /// Its header.
    pub header: LogHeader,
    /// Every whole record, in file order.
    pub records: Vec<Record>,
    /// Records skipped because their tag is unknown to this build.
    pub unknown_records: u64,
    /// Offset of the first byte after the last whole record when the file does not end on a
    /// record boundary (a crash mid-write, or corruption); everything before it was read.
    pub torn_tail: Option<u64>,
    /// Bytes of the file.
    pub len: u64,
}

/// Parse a whole log from its bytes. Errors only for a header that is missing, malformed or
/// from a future version; a bad record ends the read with [`ParsedLog::torn_tail`] set.
pub fn parse_log(data: &[u8]) -> Result<ParsedLog, Error> {
    let (header, start) = LogHeader::decode(data)?;
    let mut frames = Frames::new(data, start);
    let mut records = Vec::new();
    let mut unknown_records = 0;
    for f in frames.by_ref() {
        match f {
            Frame::Record(r) => records.push(r),
            Frame::Unknown { .. } => unknown_records += 1,
        }
    }
    Ok(ParsedLog {
        header,
        records,
        unknown_records,
        torn_tail: frames.torn_at(),
        len: data.len() as u64,
    })
}

/// Read and parse the log file at `path`.
pub fn read_log(path: &Path) -> Result<ParsedLog, Error> {
    let data = fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_log(&data)
}

/// `path.n`: the n-th rotated file of the log at `path` (n ≥ 1, higher is older).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of the session whose live log is `path`, oldest first: `path.N`, ..., `path.1`,
/// `path`, keeping only rotated files whose header names the same session as `path`.
pub fn session_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let live = fs::read(path).map_err(|e| Error::io(path, e))?;
    let (head, _) = LogHeader::decode(&live)?;
    let mut older = Vec::new();
    for n in 1..=u32::from(u16::MAX) {
        let p = rotated_path(path, n);
        let mut buf = [0u8; HEADER_LEN];
        let ok = File::open(&p).and_then(|mut f| io::Read::read_exact(&mut f, &mut buf));
        match ok {
            Ok(()) => match LogHeader::decode(&buf) {
                Ok((h, _)) if h.session == head.session => older.push(p),
                _ => break,
            },
            Err(_) => break,
        }
    }
    older.reverse();
    older.push(path.to_path_buf());
    Ok(older)
}

/// Appends records to a live log file, rotating it by size.
pub struct LogWriter {
    path: PathBuf,
    header: LogHeader,
    file: File,
    /// Bytes of the file that hold whole records (what a failed write is cut back to).
    len: u64,
    rotate_size: u64,
    rotate_keep: u32,
    buf: Vec<u8>,
}

impl LogWriter {
    /// Start a new log at `path` with `header` (its `file_seq` is used as given). An existing
    /// file there is rotated out of the way first: a log is never appended to across sessions.
    pub fn create(
        path: &Path,
        header: LogHeader,
        rotate_size: u64,
        rotate_keep: u32,
    ) -> Result<Self, Error> {
        if path.exists() {
            shift_rotated(path, rotate_keep)?;
        }
        let file = install_new(path, &header)?;
        Ok(Self {
            path: path.to_path_buf(),
            header,
            file,
            len: HEADER_LEN as u64,
            rotate_size,
            rotate_keep,
            buf: Vec::with_capacity(64 << 10),
        })
    }

    /// The live file's header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// Bytes in the live file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the live file holds only its header.
    pub fn is_empty(&self) -> bool {
        self.len <= HEADER_LEN as u64
    }

    /// Bytes encoded but not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Encode `rec` into the pending buffer.
    pub fn push(&mut self, rec: &Record) -> Result<(), Error> {
        encode_record(rec, &mut self.buf)
    }

    /// Append a path record (a [`Record::Path`]) from a borrowed path.
    pub(crate) fn push_path(&mut self, layer: u32, inode: u64, path: &[u8]) -> Result<(), Error> {
        encode_frame(tag::PATH, &PathRef { layer, inode, path }, &mut self.buf)
    }

    /// Write the pending buffer. On failure (a full disk) the file is cut back to its last
    /// whole record, the pending bytes are discarded and the error returned: the file stays
    /// readable and later writes may succeed. Returns the bytes written.
    pub fn commit(&mut self) -> Result<u64, Error> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let n = self.buf.len() as u64;
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        if let Err(e) = r {
            // Best effort: if even this fails the reader still stops at the torn frame.
            let _ = self.file.set_len(self.len);
            return Err(Error::io(&self.path, e));
        }
        self.len += n;
        Ok(n)
    }

    /// fsync the live file.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Whether the live file has reached the rotation size.
    pub fn wants_rotation(&self) -> bool {
        self.rotate_size > 0 && self.len >= self.rotate_size
    }

    /// Close the live file (synced) and start the next one of the session. Pending bytes are
    /// written to the old file first.
    pub fn rotate(&mut self) -> Result<(), Error> {
        self.commit()?;
        self.sync()?;
        shift_rotated(&self.path, self.rotate_keep)?;
        let header = LogHeader { file_seq: self.header.file_seq.wrapping_add(1), ..self.header };
        self.file = install_new(&self.path, &header)?;
        self.header = header;
        self.len = HEADER_LEN as u64;
        Ok(())
    }
}

/// Move `path` to `path.1`, `path.1` to `path.2`, ..., deleting what would pass `keep`.
fn shift_rotated(path: &Path, keep: u32) -> Result<(), Error> {
    if keep == 0 {
        return fs::remove_file(path).map_err(|e| Error::io(path, e));
    }
    let oldest = rotated_path(path, keep);
    if oldest.exists() {
        fs::remove_file(&oldest).map_err(|e| Error::io(&oldest, e))?;
    }
    for n in (1..keep).rev() {
        let from = rotated_path(path, n);
        if from.exists() {
            let to = rotated_path(path, n + 1);
            fs::rename(&from, &to).map_err(|e| Error::io(&from, e))?;
        }
    }
    let to = rotated_path(path, 1);
    fs::rename(path, &to).map_err(|e| Error::io(path, e))
}

/// Write `header` to a hidden temporary file, fsync it and rename it to `path`, so `path`
/// never exists without a whole header. Returns the file open for appending.
fn install_new(path: &Path, header: &LogHeader) -> Result<File, Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, "log path has no file name"))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".new");
    let tmp = dir.join(tmp_name);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&header.encode()).and_then(|()| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(&tmp, e))?;
    // Make the rename itself durable; some filesystems refuse fsync on directories.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    drop(f);
    OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accesslog::event::{Event, Op};

    fn sample() -> Vec<Record> {
        vec![
            Record::Process(ProcessRecord { pid: 10, tgid: 10, name: "cat".into() }),
            Record::Path(PathRecord { layer: 0, inode: 5, path: b"/etc/hosts".to_vec() }),
            Record::Access(Access::from_event(
                &Event::new(Op::Read, 5, 10, 0).with_range(0, 4096).with_chunks(0, 0),
                123,
            )),
            Record::Dropped(DropRecord { ts_ns: 200, count: 3 }),
        ]
    }

    fn file_of(recs: &[Record]) -> Vec<u8> {
        let mut data = LogHeader::new(Mode::Full, 1, 2, 0).encode().to_vec();
        for r in recs {
            encode_record(r, &mut data).unwrap();
        }
        data
    }

    #[test]
    fn header_round_trip() {
        let h = LogHeader::new(Mode::FirstTouch, 1_700_000_000_000_000_000, 0xfeed, 3);
        let (d, off) = LogHeader::decode(&h.encode()).unwrap();
        assert_eq!((d, off), (h, HEADER_LEN));
    }

    #[test]
    fn header_errors() {
        let good = LogHeader::new(Mode::Full, 1, 2, 0).encode();
        let with = |f: &dyn Fn(&mut [u8; HEADER_LEN])| {
            let mut b = good;
            f(&mut b);
            LogHeader::decode(&b).unwrap_err()
        };
        assert!(matches!(with(&|b| b[0] = b'X'), Error::BadMagic { .. }));
        assert!(matches!(with(&|b| b[8] = 9), Error::FutureVersion { found: 9, supported: 1 }));
        assert!(matches!(with(&|b| b[8] = 0), Error::BadVersion));
        assert!(matches!(with(&|b| b[10] = 8), Error::BadHeaderLen { len: 8 }));
        assert!(matches!(with(&|b| b[20] ^= 1), Error::HeaderChecksum { .. }));
        assert!(matches!(
            LogHeader::decode(&good[..30]).unwrap_err(),
            Error::TruncatedHeader { len: 30, need: 64 }
        ));
        assert!(matches!(LogHeader::decode(b"STR").unwrap_err(), Error::TruncatedHeader { .. }));
        let msg = with(&|b| b[8] = 2).to_string();
        assert!(msg.contains("version 2") && msg.contains("upgrade"), "{msg}");
    }

    #[test]
    fn records_round_trip() {
        let recs = sample();
        let log = parse_log(&file_of(&recs)).unwrap();
        assert_eq!(log.records, recs);
        assert_eq!(log.torn_tail, None);
        assert_eq!(log.unknown_records, 0);
    }

    #[test]
    fn byte_strings_encode_as_earlier_builds_wrote_them() {
        // Earlier builds let serde write `Vec<u8>` fields as a sequence of u8; the writer now
        // hands them over whole. The bytes on disk must not differ.
        #[derive(Serialize)]
        struct OldPath {
            layer: u32,
            inode: u64,
            path: Vec<u8>,
        }
        #[derive(Serialize)]
        struct OldNames {
            name: Option<Vec<u8>>,
            name2: Option<Vec<u8>>,
        }
        let body = |rec: &Record| {
            let mut out = Vec::new();
            encode_record(rec, &mut out).unwrap();
            out[FRAME_HEAD + 1..].to_vec()
        };
        fn old<T: Serialize>(v: &T) -> Vec<u8> {
            let o = bincode::DefaultOptions::new().with_varint_encoding().with_little_endian();
            o.serialize(v).unwrap()
        }
        let long: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        for path in [b"/".to_vec(), b"/etc/hosts".to_vec(), long.clone(), Vec::new()] {
            let want = old(&OldPath { layer: 3, inode: 1 << 40, path: path.clone() });
            let rec = Record::Path(PathRecord { layer: 3, inode: 1 << 40, path: path.clone() });
            assert_eq!(body(&rec), want, "path record of {} bytes", path.len());
            let mut w = Vec::new();
            encode_frame(tag::PATH, &PathRef { layer: 3, inode: 1 << 40, path: &path }, &mut w)
                .unwrap();
            assert_eq!(w[FRAME_HEAD + 1..], want[..], "borrowed path of {} bytes", path.len());
        }
        let ev = Event::new(Op::Rename, 5, 10, 0).with_name(b"old").with_name2(&long);
        let a = Access::from_event(&ev, 1);
        let got = body(&Record::Access(a.clone()));
        let tail = old(&OldNames { name: a.name.clone(), name2: a.name2.clone() });
        assert!(got.ends_with(&tail), "access names encode as before");
        let none = Access::from_event(&Event::new(Op::Read, 5, 10, 0), 1);
        let tail = old(&OldNames { name: None, name2: None });
        assert!(body(&Record::Access(none)).ends_with(&tail));
    }

    #[test]
    fn every_truncation_reads_the_whole_records_before_it() {
        let recs = sample();
        let data = file_of(&recs);
        let mut ends = vec![HEADER_LEN];
        let mut buf = Vec::new();
        for r in &recs {
            encode_record(r, &mut buf).unwrap();
            ends.push(HEADER_LEN + buf.len());
        }
        for cut in HEADER_LEN..=data.len() {
            let log = parse_log(&data[..cut]).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
            assert_eq!(log.records, recs[..whole], "cut at {cut}");
            let expect_torn = (!ends.contains(&cut)).then_some(ends[whole] as u64);
            assert_eq!(log.torn_tail, expect_torn, "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_and_zero_tails_stop_reading() {
        let recs = sample();
        let mut data = file_of(&recs);
        let clean = data.len();
        data.extend_from_slice(&[0u8; 100]);
        let log = parse_log(&data).unwrap();
        assert_eq!((log.records.len(), log.torn_tail), (recs.len(), Some(clean as u64)));
        // A flipped bit inside the second record's payload.
        let mut data = file_of(&recs);
        let mut first = Vec::new();
        encode_record(&recs[0], &mut first).unwrap();
        data[HEADER_LEN + first.len() + FRAME_HEAD + 2] ^= 0x40;
        let log = parse_log(&data).unwrap();
        assert_eq!(log.records, recs[..1]);
        assert_eq!(log.torn_tail, Some((HEADER_LEN + first.len()) as u64));
    }

    #[test]
    fn unknown_tags_are_skipped() {
        let mut data = file_of(&sample()[..1]);
        let payload = [99u8, 1, 2, 3];
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
        encode_record(&sample()[1], &mut data).unwrap();
        let log = parse_log(&data).unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.unknown_records, 1);
        assert_eq!(log.torn_tail, None);
    }

    #[test]
    fn a_failed_write_leaves_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut w = LogWriter::create(&path, LogHeader::new(Mode::Full, 1, 7, 0), 0, 1).unwrap();
        let rec = |n| Record::Dropped(DropRecord { ts_ns: n, count: 1 });
        w.push(&rec(1)).unwrap();
        w.commit().unwrap();
        let good = w.len();
        // A full disk: /dev/full fails every write with ENOSPC.
        let real = std::mem::replace(
            &mut w.file,
            OpenOptions::new().append(true).open("/dev/full").unwrap(),
        );
        w.push(&rec(2)).unwrap();
        let e = w.commit().unwrap_err();
        assert!(e.to_string().contains("No space"), "{e}");
        assert_eq!((w.len(), w.pending()), (good, 0));
        w.file = real;
        w.push(&rec(3)).unwrap();
        w.commit().unwrap();
        let log = read_log(&path).unwrap();
        assert_eq!(log.records, vec![rec(1), rec(3)]);
        assert_eq!(log.torn_tail, None);
    }

    #[test]
    fn writer_rotates_and_sessions_list_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut w = LogWriter::create(&path, LogHeader::new(Mode::Full, 1, 77, 0), 200, 2).unwrap();
        for i in 0..40u64 {
            w.push(&Record::Dropped(DropRecord { ts_ns: i, count: 1 })).unwrap();
            w.commit().unwrap();
            if w.wants_rotation() {
                w.rotate().unwrap();
            }
        }
        w.sync().unwrap();
        let files = session_files(&path).unwrap();
        assert_eq!(files, vec![rotated_path(&path, 2), rotated_path(&path, 1), path.clone()]);
        let mut last = None;
        let mut seqs = Vec::new();
        for f in &files {
            let log = read_log(f).unwrap();
            seqs.push(log.header.file_seq);
            for r in log.records {
                let Record::Dropped(d) = r else { panic!("unexpected record") };
                assert!(last.is_none_or(|l| d.ts_ns == l + 1));
                last = Some(d.ts_ns);
            }
        }
        assert_eq!(last, Some(39));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        // A new session moves the old live file aside rather than appending to it.
        let w2 = LogWriter::create(&path, LogHeader::new(Mode::Full, 5, 78, 0), 0, 2).unwrap();
        assert!(w2.is_empty());
        assert_eq!(session_files(&path).unwrap(), vec![path.clone()]);
        assert_eq!(read_log(&rotated_path(&path, 1)).unwrap().header.session, 77);
    }
}
