//! nydusd configuration (v1 JSON, v2 JSON, v2 TOML) mapped onto one internal [`DaemonConfig`].
//!
//! [`parse`] detects the format in nydusd's order (`ConfigV2::from_str`): JSON with
//! `"version": 2`, then TOML with `version = 2`, then v1 JSON. All three end up in the same
//! [`DaemonConfig`]. Differences from nydusd, all in the accepting direction so that every
//! config nydusd takes is taken here unchanged:
//!
//! * unknown keys are ignored like nydusd does, but each one leaves a sentence in
//!   [`DaemonConfig::warnings`];
//! * JSON with `//` or `/* */` comments and trailing commas (as in the nydusd docs' commented
//!   examples) is accepted with a warning; nydusd's JSON parser rejects it;
//! * v2 `backend.localfs` may be a plain directory string (the docs' overlay example writes it
//!   that way; nydusd needs an object), and v2 prefetch sections also take the v1 key names
//!   (`threads_count`, `merging_size`, `bandwidth_rate`);
//! * a missing v1 `mode` means `direct`, a blob cache without its `config`/`filecache` section
//!   uses work dir `.`, and the `http-proxy` backend is also known in v1;
//! * backends strata does not implement (registry, oss, s3, localdisk) have their
//!   keys type-checked but their required fields are not enforced: they become
//!   [`BackendConfig::Unsupported`] and the daemon refuses them at start.
//!
//! Every known field is type-checked; a bad value is a [`ConfigError`] naming the dotted field,
//! what was found and what is accepted.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::accesslog::config::{
    DEFAULT_FLUSH_MS, DEFAULT_MAX_MEMORY, DEFAULT_ROTATE_KEEP, DEFAULT_ROTATE_SIZE,
};
use crate::accesslog::{AccessLogConfig, Mode};

/// Where blobs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendConfig {
    /// nydusd `localfs`: blobs named by id in `dir` (then `alt_dirs`), or one `blob_file`.
    Localfs {
        /// Blob directory.
        dir: Option<PathBuf>,
        /// Extra blob directories searched after `dir`.
        alt_dirs: Vec<PathBuf>,
        /// A single blob file used for every blob id.
        blob_file: Option<PathBuf>,
    },
    /// nydusd `http-proxy`: blobs over plain HTTP/1.1 (a TCP address or a unix socket).
    HttpProxy(crate::storage::HttpProxyConfig),
    /// A backend type nydusd knows that strata does not implement yet (registry, oss, s3,
    /// localdisk): parsed, then refused at start with a clear message.
    Unsupported {
        /// The `type` string.
        kind: String,
    },
}

/// Cache kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// Persistent chunk cache (`blobcache` / `filecache`).
    Blobcache,
    /// No cache: every read goes to the backend (`dummycache` or empty).
    Dummy,
    /// Kernel fscache (parsed; not supported by stratad's FUSE mode).
    Fscache,
}

/// `cache` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Kind.
    pub kind: CacheKind,
    /// Work dir of the chunk cache (default ".").
    pub work_dir: PathBuf,
    /// Keep compressed chunks (parsed; strata caches uncompressed data).
    pub compressed: bool,
    /// Re-verify cached chunks on every read.
    pub validate: bool,
}

/// Prefetch settings (`fs_prefetch` in v1, `prefetch` in v2); stored for the prefetch issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Prefetch at all.
    pub enable: bool,
    /// Worker threads (default 8).
    pub threads_count: usize,
    /// Merge adjacent requests up to this many bytes (default 1 MiB).
    pub merging_size: u64,
    /// Bandwidth cap in bytes/s (0 = unlimited).
    pub bandwidth_rate: u64,
    /// Prefetch every blob after the hinted files.
    pub prefetch_all: bool,
    /// Files to prefetch first, in order (`--prefetch-files`, the mount API's
    /// `prefetch_files`); not read from config text.
    pub files: Vec<String>,
    /// An access log whose reads are prefetched after `files` (`stratad --prefetch-log`).
    pub log: Option<PathBuf>,
}

/// RAFS-level settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RafsConfig {
    /// `direct` or `cached` (accepted; both read from the bootstrap mapping).
    pub mode: String,
    /// Verify chunk digests (strata always verifies a chunk before caching it).
    pub digest_validate: bool,
    /// Serve xattrs.
    pub enable_xattr: bool,
    /// Per-file io statistics (`/api/v1/metrics/files`).
    pub iostats_files: bool,
    /// Access pattern recording (`/api/v1/metrics/pattern`).
    pub access_pattern: bool,
    /// Recently read files (`/api/v1/metrics/files?latest=true`).
    pub latest_read_files: bool,
    /// Read amplification in bytes (`amplify_io` v1, `batch_size` v2; default 1 MiB).
    pub amplify_io: u64,
}

/// `overlay` section (v2): a writable upper directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// Upper directory.
    pub upper_dir: PathBuf,
    /// Work directory.
    pub work_dir: PathBuf,
}

/// The daemon's configuration, whatever format it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// `id` (v2) / `device.id` (v1).
    pub id: Option<String>,
    /// Blob backend.
    pub backend: BackendConfig,
    /// Chunk cache.
    pub cache: CacheConfig,
    /// RAFS settings.
    pub rafs: RafsConfig,
    /// Prefetch settings.
    pub prefetch: PrefetchConfig,
    /// Writable overlay, if configured.
    pub overlay: Option<OverlayConfig>,
    /// strata's access log (`accesslog` section, v1 and v2); off unless configured.
    pub accesslog: AccessLogConfig,
    /// Which format the text was: "v1", "v2-json", "v2-toml".
    pub format: &'static str,
    /// Unknown keys and other tolerated oddities, one sentence each (logged as warnings).
    pub warnings: Vec<String>,
}

/// Default RAFS read amplification (`amplify_io` / `rafs.batch_size`): 1 MiB.
pub const DEFAULT_AMPLIFY_IO: u64 = 1 << 20;
/// Default number of prefetch worker threads.
pub const DEFAULT_PREFETCH_THREADS: usize = 8;
/// Default prefetch request merging size: 1 MiB.
pub const DEFAULT_MERGING_SIZE: u64 = 1 << 20;
/// Largest accepted `amplify_io` / batch / merging size (256 MiB, as nydusd).
pub const MAX_BATCH_SIZE: u64 = 0x1000_0000;
/// Largest accepted prefetch thread count when prefetch is enabled (as nydusd).
pub const MAX_PREFETCH_THREADS: u64 = 1024;
/// Largest config file [`from_file`] reads (1 MiB, as nydusd).
pub const MAX_CONFIG_FILE_SIZE: u64 = 1 << 20;

/// Backend `type` strings nydusd knows.
const BACKEND_TYPES: &[&str] = &["localfs", "localdisk", "oss", "s3", "registry", "http-proxy"];
/// Cache `type` strings nydusd knows (besides the empty string).
const CACHE_TYPES: &[&str] = &["blobcache", "filecache", "fscache", "dummycache"];
/// RAFS modes.
const MODES: &[&str] = &["direct", "cached"];

/// Known keys of v1 `device.cache.config` / v2 `cache.filecache`.
const FILECACHE_KEYS: &[&str] = &[
    "work_dir",
    "disable_indexed_map",
    "enable_encryption",
    "enable_convergent_encryption",
    "encryption_key",
];
/// Known keys of v1 `device.backend.config` / v2 `backend.localfs`.
const LOCALFS_KEYS: &[&str] = &["dir", "alt_dirs", "blob_file"];

/// Why a config was refused. Every message is a sentence naming the file or the dotted field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be opened or read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The config file is larger than [`MAX_CONFIG_FILE_SIZE`].
    #[error(
        "config file {} is larger than {MAX_CONFIG_FILE_SIZE} bytes, the most nydusd and stratad accept",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The config file is not UTF-8 text.
    #[error("config file {} is not UTF-8 text (bad byte at offset {offset})", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Offset of the first bad byte.
        offset: usize,
    },
    /// The text of a named config file was refused.
    #[error("config file {}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why its text was refused.
        error: Box<ConfigError>,
    },
    /// The text is empty or only whitespace.
    #[error("the config is empty")]
    Empty,
    /// The text looks like JSON but does not parse.
    #[error("the config is not valid JSON: {message} at line {line}, column {column}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The text looks like TOML but does not parse.
    #[error("the config is not valid TOML: {message} at line {line}, column {column}")]
    Toml {
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The JSON text is valid but not an object.
    #[error("the config must be a JSON object, but it is {found}")]
    NotAnObject {
        /// What it is.
        found: String,
    },
    /// `version` is present but not 2.
    #[error(
        "version: {found} is not supported; a v2 config has version 2 and a v1 config has no version key"
    )]
    Version {
        /// The value found.
        found: String,
    },
    /// A TOML config without a version.
    #[error("the TOML config has no version = 2; nydusd reads TOML only as a v2 config")]
    TomlWithoutVersion,
    /// A field has the wrong type or a value outside the accepted ones.
    #[error("{field}: {found} is not {expected}")]
    Invalid {
        /// Dotted field path, e.g. `cache.type`.
        field: String,
        /// The value found, e.g. `"memcache"`.
        found: String,
        /// What is accepted, e.g. `one of blobcache, filecache, fscache, dummycache`.
        expected: String,
    },
    /// A required field is absent.
    #[error("{field} is missing: {why}")]
    Missing {
        /// Dotted field path.
        field: String,
        /// Why it is needed.
        why: String,
    },
    /// A section is present but inconsistent.
    #[error("{field}: {message}")]
    Bad {
        /// Dotted field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl DaemonConfig {
    /// The config nydusd builds for `--localfs-dir <dir>` given without `--config`
    /// (`src/bin/nydusd/main.rs`): a v1 config with a localfs backend reading blobs from `dir`
    /// and a blob cache (uncompressed) whose work dir is the same `dir`, mode `direct`, digest
    /// validation and per-file io stats off; everything else at its v1 default.
    pub fn localfs(dir: PathBuf) -> Self {
        DaemonConfig {
            id: None,
            backend: BackendConfig::Localfs {
                dir: Some(dir.clone()),
                alt_dirs: Vec::new(),
                blob_file: None,
            },
            cache: CacheConfig {
                kind: CacheKind::Blobcache,
                work_dir: dir,
                compressed: false,
                validate: false,
            },
            rafs: default_rafs(),
            prefetch: default_prefetch(true),
            overlay: None,
            accesslog: AccessLogConfig::default(),
            format: "v1",
            warnings: Vec::new(),
        }
    }
}

/// Parses a nydusd config text: v2 JSON (`"version": 2`), else v2 TOML (`version = 2`), else
/// v1 JSON, the order nydusd tries them in. Sets [`DaemonConfig::format`] and collects
/// warnings for ignored keys.
pub fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ConfigError::Empty);
    }
    let mut ctx = Ctx { warnings: Vec::new(), toml: false };
    match parse_json(text, &mut ctx.warnings) {
        Ok(value) => {
            let Value::Object(map) = &value else {
                return Err(ConfigError::NotAnObject { found: describe(&value, false) });
            };
            match map.get("version") {
                None | Some(Value::Null) => parse_v1(&value, ctx),
                Some(v) if v.as_u64() == Some(2) => parse_v2(&value, "v2-json", ctx),
                Some(v) => Err(ConfigError::Version { found: describe(v, false) }),
            }
        }
        Err(json_error) => match toml::from_str::<toml::Table>(text) {
            Ok(table) => {
                ctx.toml = true;
                let value = toml_to_json(toml::Value::Table(table), 0);
                match value.get("version") {
                    None => Err(ConfigError::TomlWithoutVersion),
                    Some(v) if v.as_u64() == Some(2) => parse_v2(&value, "v2-toml", ctx),
                    Some(v) => Err(ConfigError::Version { found: describe(v, true) }),
                }
            }
            Err(toml_error) => {
                if text.trim_start().starts_with('{') {
                    Err(json_error_to_config(&json_error))
                } else {
                    Err(toml_error_to_config(text, &toml_error))
                }
            }
        },
    }
}

/// Reads and parses a config file (at most [`MAX_CONFIG_FILE_SIZE`] bytes); every error names
/// the file.
pub fn from_file(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let read_error = |error| ConfigError::Read { path: path.to_path_buf(), error };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_SIZE {
        return Err(ConfigError::TooLarge { path: path.to_path_buf() });
    }
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    parse(&text)
        .map_err(|error| ConfigError::File { path: path.to_path_buf(), error: Box::new(error) })
}

// ---------------------------------------------------------------------------------------------
// Format detection helpers
// ---------------------------------------------------------------------------------------------

/// Strict JSON first; if that fails, the same text with comments and trailing commas blanked
/// out (positions kept, so the parser's line/column still point into the original text).
fn parse_json(text: &str, warnings: &mut Vec<String>) -> Result<Value, serde_json::Error> {
    let strict = match serde_json::from_str::<Value>(text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let Some(cleaned) = blank_json_extras(text) else {
        return Err(strict);
    };
    let value = serde_json::from_str::<Value>(&cleaned)?;
    warnings.push(
        "the JSON config has comments or trailing commas; accepted, though nydusd rejects them"
            .to_string(),
    );
    Ok(value)
}

/// Replaces `//` and `/* */` comments and trailing commas outside strings with spaces.
/// Returns `None` when there is nothing to replace.
fn blank_json_extras(text: &str) -> Option<String> {
    let src = text.as_bytes();
    let mut out = src.to_vec();
    let mut changed = false;

    let mut i = 0;
    let mut in_string = false;
    while i < src.len() {
        let c = src[i];
        if in_string {
            match c {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        match (c, src.get(i + 1)) {
            (b'"', _) => {
                in_string = true;
                i += 1;
            }
            (b'/', Some(b'/')) => {
                changed = true;
                while i < src.len() && src[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                changed = true;
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                while i < src.len() {
                    if src[i] == b'*' && src.get(i + 1) == Some(&b'/') {
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        break;
                    }
                    if src[i] != b'\n' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }

    // A comma is trailing when it follows a value and only whitespace separates it from `}`/`]`.
    let mut i = 0;
    let mut in_string = false;
    let mut pending_comma = None;
    let mut prev = 0u8;
    while i < out.len() {
        let c = out[i];
        if in_string {
            match c {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    prev = b'"';
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                pending_comma = None;
            }
            b',' => {
                let after_value =
                    matches!(prev, b'"' | b'}' | b']') || prev.is_ascii_alphanumeric();
                pending_comma = if pending_comma.is_none() && after_value { Some(i) } else { None };
                prev = c;
            }
            b'}' | b']' => {
                if let Some(at) = pending_comma.take() {
                    out[at] = b' ';
                    changed = true;
                }
                prev = c;
            }
            c if c.is_ascii_whitespace() => {}
            _ => {
                pending_comma = None;
                prev = c;
            }
        }
        i += 1;
    }

    if !changed {
        return None;
    }
    String::from_utf8(out).ok()
}

fn json_error_to_config(error: &serde_json::Error) -> ConfigError {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    ConfigError::Json { line: error.line(), column: error.column(), message }
}

fn toml_error_to_config(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map(|s| s.start).unwrap_or(0);
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|p| p + 1).unwrap_or(0);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    ConfigError::Toml { line, column, message: error.message().trim_end().to_string() }
}

/// Marker key prefix for TOML values JSON has no type for (datetimes, non-finite floats).
const TOML_SPECIAL: &str = "\u{0}toml ";
/// Nesting beyond this is dropped when converting TOML (no known field is that deep).
const MAX_TOML_DEPTH: usize = 64;

fn toml_to_json(value: toml::Value, depth: usize) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| toml_special("float", f.to_string())),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => toml_special("datetime", d.to_string()),
        toml::Value::Array(items) => {
            if depth >= MAX_TOML_DEPTH {
                return Value::Null;
            }
            Value::Array(items.into_iter().map(|v| toml_to_json(v, depth + 1)).collect())
        }
        toml::Value::Table(table) => {
            if depth >= MAX_TOML_DEPTH {
                return Value::Null;
            }
            Value::Object(table.into_iter().map(|(k, v)| (k, toml_to_json(v, depth + 1))).collect())
        }
    }
}

fn toml_special(kind: &str, text: String) -> Value {
    let mut map = Map::new();
    map.insert(format!("{TOML_SPECIAL}{kind}"), Value::String(text));
    Value::Object(map)
}

/// How a value reads in an error message.
fn describe(value: &Value, toml: bool) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let shown: String = if s.chars().count() > 64 {
                s.chars().take(61).chain("...".chars()).collect()
            } else {
                s.clone()
            };
            serde_json::to_string(&shown).unwrap_or(shown)
        }
        Value::Array(_) => "an array".to_string(),
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some((key, Value::String(text))) = map.iter().next() {
                    if let Some(kind) = key.strip_prefix(TOML_SPECIAL) {
                        return format!("a TOML {kind} {text}");
                    }
                }
            }
            if toml {
                "a table".to_string()
            } else {
                "an object".to_string()
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn one_of(accepted: &[&str]) -> String {
    format!("one of {}", accepted.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Walking a value tree with known keys
// ---------------------------------------------------------------------------------------------

/// Parse state shared by all sections.
struct Ctx {
    warnings: Vec<String>,
    /// The text was TOML (error messages say "table", not "object").
    toml: bool,
}

impl Ctx {
    fn warn(&mut self, sentence: String) {
        self.warnings.push(sentence);
    }
}

/// A JSON object / TOML table with a dotted path; unknown keys were warned about on creation.
struct Section<'a> {
    path: String,
    map: &'a Map<String, Value>,
    toml: bool,
}

impl<'a> Section<'a> {
    fn new(
        path: String,
        value: &'a Value,
        known: &[&str],
        ctx: &mut Ctx,
    ) -> Result<Self, ConfigError> {
        let Value::Object(map) = value else {
            return Err(ConfigError::Invalid {
                field: path,
                found: describe(value, ctx.toml),
                expected: if ctx.toml { "a table" } else { "an object" }.to_string(),
            });
        };
        let section = Section { path, map, toml: ctx.toml };
        section.warn_unknown(known, ctx);
        Ok(section)
    }

    fn warn_unknown(&self, known: &[&str], ctx: &mut Ctx) {
        for key in self.map.keys() {
            if !known.contains(&key.as_str()) {
                ctx.warn(format!("unknown key {} ignored", join(&self.path, key)));
            }
        }
    }

    fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn invalid(&self, key: &str, value: &Value, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: self.field(key),
            found: describe(value, self.toml),
            expected: expected.into(),
        }
    }

    fn sub(
        &self,
        key: &str,
        known: &[&str],
        ctx: &mut Ctx,
    ) -> Result<Option<Section<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Section::new(self.field(key), v, known, ctx).map(Some),
        }
    }

    fn required_sub(
        &self,
        key: &str,
        known: &[&str],
        ctx: &mut Ctx,
        why: &str,
    ) -> Result<Section<'a>, ConfigError> {
        self.sub(key, known, ctx)?
            .ok_or_else(|| ConfigError::Missing { field: self.field(key), why: why.to_string() })
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(key, v, "a boolean (true or false)")),
        }
    }

    /// A non-negative integer no larger than `max`.
    fn uint(&self, key: &str, default: u64, max: u64) -> Result<u64, ConfigError> {
        let expected = || {
            if max == u64::MAX {
                "a non-negative integer".to_string()
            } else {
                format!("an integer from 0 to {max}")
            }
        };
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(n),
                _ => Err(self.invalid(key, v, expected())),
            },
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.invalid(key, v, "a string")),
        }
    }

    /// A string; an empty string counts as absent (nydusd treats "" as unset).
    fn nonempty_string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        Ok(self.string(key)?.filter(|s| !s.is_empty()))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ConfigError::Invalid {
                        field: format!("{}[{i}]", self.field(key)),
                        found: describe(other, self.toml),
                        expected: "a string".to_string(),
                    }),
                })
                .collect(),
            Some(v) => Err(self.invalid(key, v, "an array of strings")),
        }
    }

    /// One of `accepted`, or absent.
    fn choice(&self, key: &str, accepted: &[&str]) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if accepted.contains(&s.as_str()) => Ok(Some(s.as_str())),
            Some(v) => Err(self.invalid(key, v, one_of(accepted))),
        }
    }

    /// Which of two spellings of one setting is present (`primary` if neither); both is an error.
    fn either(
        &self,
        primary: &'static str,
        alias: &'static str,
    ) -> Result<&'static str, ConfigError> {
        match (self.get(primary).is_some(), self.get(alias).is_some()) {
            (true, true) => Err(ConfigError::Bad {
                field: self.field(primary),
                message: format!(
                    "{} and {} are the same setting; give only one",
                    self.field(primary),
                    self.field(alias)
                ),
            }),
            (false, true) => Ok(alias),
            _ => Ok(primary),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared section parsers
// ---------------------------------------------------------------------------------------------

fn default_rafs() -> RafsConfig {
    RafsConfig {
        mode: "direct".to_string(),
        digest_validate: false,
        enable_xattr: false,
        iostats_files: false,
        access_pattern: false,
        latest_read_files: false,
        amplify_io: DEFAULT_AMPLIFY_IO,
    }
}

/// `prefetch_all` defaults to true in v1 and false in v2.
fn default_prefetch(prefetch_all: bool) -> PrefetchConfig {
    PrefetchConfig {
        enable: false,
        threads_count: DEFAULT_PREFETCH_THREADS,
        merging_size: DEFAULT_MERGING_SIZE,
        bandwidth_rate: 0,
        prefetch_all,
        files: Vec::new(),
        log: None,
    }
}

fn default_cache() -> CacheConfig {
    CacheConfig {
        kind: CacheKind::Dummy,
        work_dir: PathBuf::from("."),
        compressed: false,
        validate: false,
    }
}

/// v1 `fs_prefetch` (v1 key names only) or a v2 `prefetch` section (v2 or v1 key names).
fn parse_prefetch(section: Option<&Section<'_>>, v2: bool) -> Result<PrefetchConfig, ConfigError> {
    let Some(s) = section else {
        return Ok(default_prefetch(!v2));
    };
    let (threads_key, size_key, rate_key) = if v2 {
        (
            s.either("threads", "threads_count")?,
            s.either("batch_size", "merging_size")?,
            s.either("bandwidth_limit", "bandwidth_rate")?,
        )
    } else {
        ("threads_count", "merging_size", "bandwidth_rate")
    };
    let enable = s.bool("enable", false)?;
    let threads = s.uint(threads_key, DEFAULT_PREFETCH_THREADS as u64, u64::MAX)?;
    let merging_size = s.uint(size_key, DEFAULT_MERGING_SIZE, u64::MAX)?;
    let bandwidth_rate = s.uint(rate_key, 0, u64::from(u32::MAX))?;
    let prefetch_all = s.bool("prefetch_all", !v2)?;
    s.bool("stream_prefetch", false)?;
    if enable {
        if !(1..=MAX_PREFETCH_THREADS).contains(&threads) {
            return Err(ConfigError::Invalid {
                field: s.field(threads_key),
                found: threads.to_string(),
                expected: format!(
                    "an integer from 1 to {MAX_PREFETCH_THREADS} while prefetch is enabled"
                ),
            });
        }
        if merging_size > MAX_BATCH_SIZE {
            return Err(ConfigError::Invalid {
                field: s.field(size_key),
                found: merging_size.to_string(),
                expected: format!(
                    "an integer from 0 to {MAX_BATCH_SIZE} while prefetch is enabled"
                ),
            });
        }
    }
    Ok(PrefetchConfig {
        enable,
        threads_count: usize::try_from(threads).unwrap_or(usize::MAX),
        merging_size,
        bandwidth_rate,
        prefetch_all,
        files: Vec::new(),
        log: None,
    })
}

/// A cache `type` value.
fn parse_cache_kind(s: &Section<'_>) -> Result<CacheKind, ConfigError> {
    match s.get("type") {
        None => Ok(CacheKind::Dummy),
        Some(Value::String(t)) => match t.as_str() {
            "blobcache" | "filecache" => Ok(CacheKind::Blobcache),
            "fscache" => Ok(CacheKind::Fscache),
            "dummycache" | "" => Ok(CacheKind::Dummy),
            _ => Err(s.invalid("type", &Value::String(t.clone()), one_of(CACHE_TYPES))),
        },
        Some(v) => Err(s.invalid("type", v, one_of(CACHE_TYPES))),
    }
}

/// `work_dir` of a filecache / fscache section ("." when absent).
fn parse_work_dir(s: &Section<'_>, ctx: &mut Ctx) -> Result<PathBuf, ConfigError> {
    if s.bool("enable_encryption", false)? {
        ctx.warn(format!(
            "{} is not supported by strata; cached data is stored unencrypted",
            s.field("enable_encryption")
        ));
    }
    match s.string("work_dir")? {
        None => Ok(PathBuf::from(".")),
        Some("") => {
            Err(s.invalid("work_dir", &Value::String(String::new()), "a non-empty directory path"))
        }
        Some(dir) => Ok(PathBuf::from(dir)),
    }
}

/// Type-checks the keys of a filecache section (`FILECACHE_KEYS`).
fn check_filecache(s: &Section<'_>) -> Result<(), ConfigError> {
    s.string("work_dir")?;
    s.bool("disable_indexed_map", false)?;
    s.bool("enable_encryption", false)?;
    s.bool("enable_convergent_encryption", false)?;
    s.string("encryption_key")?;
    Ok(())
}

/// A localfs backend object (`LOCALFS_KEYS`).
fn parse_localfs(s: &Section<'_>) -> Result<BackendConfig, ConfigError> {
    let dir = s.nonempty_string("dir")?.map(PathBuf::from);
    let alt_dirs =
        s.strings("alt_dirs")?.into_iter().filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    let blob_file = s.nonempty_string("blob_file")?.map(PathBuf::from);
    if dir.is_none() && blob_file.is_none() {
        return Err(localfs_needs_dir(&s.path));
    }
    Ok(BackendConfig::Localfs { dir, alt_dirs, blob_file })
}

fn localfs_needs_dir(field: &str) -> ConfigError {
    ConfigError::Bad {
        field: field.to_string(),
        message: "the localfs backend needs dir or blob_file, and neither is set".to_string(),
    }
}

/// Value kinds for the keys of backends strata does not implement.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    /// Unsigned integer up to this maximum.
    Uint(u64),
    StrList,
    Proxy,
}

const PROXY_SCHEMA: &[(&str, Kind)] = &[
    ("url", Kind::Str),
    ("ping_url", Kind::Str),
    ("fallback", Kind::Bool),
    ("check_interval", Kind::Uint(u64::MAX)),
    ("use_http", Kind::Bool),
    ("check_pause_elapsed", Kind::Uint(u64::MAX)),
    ("dragonfly_scheduler_endpoint", Kind::Str),
];

/// Keys every http-based backend has.
const HTTP_COMMON: &[(&str, Kind)] = &[
    ("skip_verify", Kind::Bool),
    ("ca_cert_files", Kind::StrList),
    ("timeout", Kind::Uint(u32::MAX as u64)),
    ("connect_timeout", Kind::Uint(u32::MAX as u64)),
    ("retry_limit", Kind::Uint(u8::MAX as u64)),
    ("proxy", Kind::Proxy),
];

/// The keys (beyond [`HTTP_COMMON`] where `http` is true) of a backend strata does not
/// implement, by `type`.
fn unsupported_schema(kind: &str) -> (&'static [(&'static str, Kind)], bool) {
    match kind {
        "localdisk" => (&[("device_path", Kind::Str), ("disable_gpt", Kind::Bool)], false),
        "oss" => (
            &[
                ("scheme", Kind::Str),
                ("endpoint", Kind::Str),
                ("bucket_name", Kind::Str),
                ("object_prefix", Kind::Str),
                ("access_key_id", Kind::Str),
                ("access_key_secret", Kind::Str),
            ],
            true,
        ),
        "s3" => (
            &[
                ("scheme", Kind::Str),
                ("endpoint", Kind::Str),
                ("region", Kind::Str),
                ("bucket_name", Kind::Str),
                ("object_prefix", Kind::Str),
                ("access_key_id", Kind::Str),
                ("access_key_secret", Kind::Str),
            ],
            true,
        ),
        "registry" => (
            &[
                ("scheme", Kind::Str),
                ("host", Kind::Str),
                ("repo", Kind::Str),
                ("auth", Kind::Str),
                ("registry_token", Kind::Str),
                ("blob_url_scheme", Kind::Str),
                ("blob_redirected_host", Kind::Str),
            ],
            true,
        ),
        "http-proxy" => (&[("addr", Kind::Str), ("path", Kind::Str)], true),
        _ => (&[], false),
    }
}

/// Warns about unknown keys and type-checks known ones of an unimplemented backend's section.
fn check_unsupported_backend(
    path: String,
    value: &Value,
    kind: &str,
    ctx: &mut Ctx,
) -> Result<(), ConfigError> {
    let (own, http) = unsupported_schema(kind);
    let schema: Vec<(&str, Kind)> =
        own.iter().chain(if http { HTTP_COMMON } else { &[] }).copied().collect();
    check_schema(path, value, &schema, ctx)
}

/// An `http-proxy` backend object: type-checked like nydusd's (unknown keys warned about),
/// `addr` required; `timeout` and `connect_timeout` in seconds (nydusd's default 5).
fn parse_http_proxy(
    path: String,
    value: &Value,
    ctx: &mut Ctx,
) -> Result<BackendConfig, ConfigError> {
    check_unsupported_backend(path.clone(), value, "http-proxy", ctx)?;
    let Value::Object(map) = value else { unreachable!("check_schema accepted an object") };
    let s = Section { path, map, toml: ctx.toml };
    let addr = s.nonempty_string("addr")?.ok_or_else(|| ConfigError::Missing {
        field: s.field("addr"),
        why: "the http-proxy backend needs addr (http://host:port or a unix socket path)".into(),
    })?;
    let secs = |key: &str| -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(s.uint(key, 5, u64::from(u32::MAX))?.max(1)))
    };
    Ok(BackendConfig::HttpProxy(crate::storage::HttpProxyConfig {
        addr: addr.to_string(),
        path: s.string("path")?.unwrap_or_default().to_string(),
        skip_verify: s.bool("skip_verify", false)?,
        timeout: secs("timeout")?,
        connect_timeout: secs("connect_timeout")?,
        retry_limit: s.uint("retry_limit", 0, u64::from(u8::MAX))? as u8,
    }))
}

fn check_schema(
    path: String,
    value: &Value,
    schema: &[(&str, Kind)],
    ctx: &mut Ctx,
) -> Result<(), ConfigError> {
    let known: Vec<&str> = schema.iter().map(|(k, _)| *k).collect();
    let s = Section::new(path, value, &known, ctx)?;
    for (key, kind) in schema {
        match kind {
            Kind::Str => {
                s.string(key)?;
            }
            Kind::Bool => {
                s.bool(key, false)?;
            }
            Kind::Uint(max) => {
                s.uint(key, 0, *max)?;
            }
            Kind::StrList => {
                s.strings(key)?;
            }
            Kind::Proxy => {
                if let Some(v) = s.get(key) {
                    check_schema(s.field(key), v, PROXY_SCHEMA, ctx)?;
                }
            }
        }
    }
    Ok(())
}

/// `external_backends` (v1 `device.external_backends`, v2 top level): an array; not used.
fn check_external_backends(s: &Section<'_>, ctx: &mut Ctx) -> Result<(), ConfigError> {
    match s.get("external_backends") {
        None => Ok(()),
        Some(Value::Array(items)) => {
            if !items.is_empty() {
                ctx.warn(format!(
                    "{} is not supported by strata; ignored",
                    s.field("external_backends")
                ));
            }
            Ok(())
        }
        Some(v) => Err(s.invalid("external_backends", v, "an array")),
    }
}

fn parse_id(s: &Section<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(s.nonempty_string(key)?.map(str::to_string))
}

/// The `accesslog` section (ours, at the top level of v1 and v2 configs):
/// `{"path", "mode": "off|first-touch|full", "max_memory", "rotate_size", "rotate_keep",
/// "flush_interval_ms"}`. A mode other than off needs a path.
fn parse_accesslog(top: &Section<'_>, ctx: &mut Ctx) -> Result<AccessLogConfig, ConfigError> {
    const KEYS: &[&str] =
        &["path", "mode", "max_memory", "rotate_size", "rotate_keep", "flush_interval_ms"];
    const MODES: &[&str] = &["off", "first-touch", "first_touch", "full"];
    let Some(s) = top.sub("accesslog", KEYS, ctx)? else {
        return Ok(AccessLogConfig::default());
    };
    let mode = match s.choice("mode", MODES)? {
        None => Mode::FirstTouch,
        Some(m) => m.parse::<Mode>().map_err(|why| s.invalid("mode", &Value::from(m), why))?,
    };
    let path = PathBuf::from(s.string("path")?.unwrap_or(""));
    if mode != Mode::Off && path.as_os_str().is_empty() {
        return Err(ConfigError::Missing {
            field: s.field("path"),
            why: format!("access log mode {mode} needs the log file's path"),
        });
    }
    let rotate_keep = s.uint("rotate_keep", u64::from(DEFAULT_ROTATE_KEEP), 1 << 16)?;
    Ok(AccessLogConfig {
        path,
        mode,
        max_memory: s.uint("max_memory", DEFAULT_MAX_MEMORY, 1 << 40)?,
        rotate_size: s.uint("rotate_size", DEFAULT_ROTATE_SIZE, u64::MAX)?,
        rotate_keep: rotate_keep as u32,
        flush_interval_ms: s.uint("flush_interval_ms", DEFAULT_FLUSH_MS, 3_600_000)?,
    })
}

// ---------------------------------------------------------------------------------------------
// v1
// ---------------------------------------------------------------------------------------------

fn parse_v1(root: &Value, mut ctx: Ctx) -> Result<DaemonConfig, ConfigError> {
    let ctx = &mut ctx;
    let top = Section::new(
        String::new(),
        root,
        &[
            "device",
            "mode",
            "digest_validate",
            "iostats_files",
            "fs_prefetch",
            "enable_xattr",
            "access_pattern",
            "latest_read_files",
            "amplify_io",
            "accesslog",
        ],
        ctx,
    )?;
    let accesslog = parse_accesslog(&top, ctx)?;
    let device = top.required_sub(
        "device",
        &["backend", "cache", "id", "external_backends"],
        ctx,
        "a v1 config needs device.backend",
    )?;
    let id = parse_id(&device, "id")?;
    check_external_backends(&device, ctx)?;

    let backend_section = device.required_sub(
        "backend",
        &["type", "config"],
        ctx,
        "a v1 config needs device.backend with a type and a config",
    )?;
    let kind =
        backend_section.choice("type", BACKEND_TYPES)?.ok_or_else(|| ConfigError::Missing {
            field: backend_section.field("type"),
            why: format!("the backend type must be {}", one_of(BACKEND_TYPES)),
        })?;
    let backend = if kind == "localfs" {
        match backend_section.sub("config", LOCALFS_KEYS, ctx)? {
            Some(s) => parse_localfs(&s)?,
            None => return Err(localfs_needs_dir(&backend_section.field("config"))),
        }
    } else if kind == "http-proxy" {
        match backend_section.get("config") {
            Some(v) => parse_http_proxy(backend_section.field("config"), v, ctx)?,
            None => {
                return Err(ConfigError::Missing {
                    field: backend_section.field("config"),
                    why: "the http-proxy backend needs a config with addr".into(),
                })
            }
        }
    } else {
        if let Some(v) = backend_section.get("config") {
            check_unsupported_backend(backend_section.field("config"), v, kind, ctx)?;
        }
        BackendConfig::Unsupported { kind: kind.to_string() }
    };

    let cache = match device.sub("cache", &["type", "compressed", "config", "validate"], ctx)? {
        None => default_cache(),
        Some(s) => {
            let kind = parse_cache_kind(&s)?;
            let compressed = s.bool("compressed", false)?;
            let validate = s.bool("validate", false)?;
            let work_dir = match kind {
                CacheKind::Blobcache => match s.sub("config", FILECACHE_KEYS, ctx)? {
                    Some(c) => {
                        check_filecache(&c)?;
                        parse_work_dir(&c, ctx)?
                    }
                    None => {
                        ctx.warn(format!(
                            "{} is missing; the blob cache uses work dir \".\"",
                            s.field("config")
                        ));
                        PathBuf::from(".")
                    }
                },
                CacheKind::Fscache => match s.sub("config", &["work_dir"], ctx)? {
                    Some(c) => parse_work_dir(&c, ctx)?,
                    None => PathBuf::from("."),
                },
                // nydusd does not look at the config of a dummy cache.
                CacheKind::Dummy => PathBuf::from("."),
            };
            CacheConfig { kind, work_dir, compressed, validate }
        }
    };

    let rafs = RafsConfig {
        mode: top.choice("mode", MODES)?.unwrap_or("direct").to_string(),
        digest_validate: top.bool("digest_validate", false)?,
        enable_xattr: top.bool("enable_xattr", false)?,
        iostats_files: top.bool("iostats_files", false)?,
        access_pattern: top.bool("access_pattern", false)?,
        latest_read_files: top.bool("latest_read_files", false)?,
        amplify_io: top.uint("amplify_io", DEFAULT_AMPLIFY_IO, MAX_BATCH_SIZE)?,
    };
    let fs_prefetch = top.sub(
        "fs_prefetch",
        &[
            "enable",
            "threads_count",
            "merging_size",
            "bandwidth_rate",
            "prefetch_all",
            "stream_prefetch",
        ],
        ctx,
    )?;
    let prefetch = parse_prefetch(fs_prefetch.as_ref(), false)?;

    Ok(DaemonConfig {
        id,
        backend,
        cache,
        rafs,
        prefetch,
        overlay: None,
        accesslog,
        format: "v1",
        warnings: std::mem::take(&mut ctx.warnings),
    })
}

// ---------------------------------------------------------------------------------------------
// v2
// ---------------------------------------------------------------------------------------------

const PREFETCH_V2_KEYS: &[&str] = &[
    "enable",
    "threads",
    "threads_count",
    "batch_size",
    "merging_size",
    "bandwidth_limit",
    "bandwidth_rate",
    "prefetch_all",
    "stream_prefetch",
];

fn parse_v2(root: &Value, format: &'static str, mut ctx: Ctx) -> Result<DaemonConfig, ConfigError> {
    let ctx = &mut ctx;
    let top = Section::new(
        String::new(),
        root,
        &["version", "id", "backend", "external_backends", "cache", "rafs", "overlay", "accesslog"],
        ctx,
    )?;
    let id = parse_id(&top, "id")?;
    let accesslog = parse_accesslog(&top, ctx)?;
    check_external_backends(&top, ctx)?;
    let backend = parse_v2_backend(&top, ctx)?;

    let (cache, cache_prefetch) = match top.sub(
        "cache",
        &["type", "compressed", "validate", "prefetch", "filecache", "fscache"],
        ctx,
    )? {
        None => (default_cache(), default_prefetch(false)),
        Some(s) => parse_v2_cache(&s, ctx)?,
    };

    let (rafs, rafs_prefetch) = match top.sub(
        "rafs",
        &[
            "mode",
            "batch_size",
            "validate",
            "enable_xattr",
            "iostats_files",
            "access_pattern",
            "latest_read_files",
            "prefetch",
        ],
        ctx,
    )? {
        None => (default_rafs(), default_prefetch(false)),
        Some(s) => {
            let rafs = RafsConfig {
                mode: s.choice("mode", MODES)?.unwrap_or("direct").to_string(),
                digest_validate: s.bool("validate", false)?,
                enable_xattr: s.bool("enable_xattr", false)?,
                iostats_files: s.bool("iostats_files", false)?,
                access_pattern: s.bool("access_pattern", false)?,
                latest_read_files: s.bool("latest_read_files", false)?,
                amplify_io: s.uint("batch_size", DEFAULT_AMPLIFY_IO, MAX_BATCH_SIZE)?,
            };
            let prefetch = s.sub("prefetch", PREFETCH_V2_KEYS, ctx)?;
            (rafs, parse_prefetch(prefetch.as_ref(), true)?)
        }
    };
    // nydusd copies rafs.prefetch into cache.prefetch when only the former is enabled.
    let prefetch =
        if !cache_prefetch.enable && rafs_prefetch.enable { rafs_prefetch } else { cache_prefetch };

    let overlay = match top.sub("overlay", &["upper_dir", "work_dir"], ctx)? {
        None => None,
        Some(s) => {
            let dir = |key: &str| -> Result<PathBuf, ConfigError> {
                match s.string(key)? {
                    None => Err(ConfigError::Missing {
                        field: s.field(key),
                        why: "the overlay section needs both upper_dir and work_dir".to_string(),
                    }),
                    Some("") => Err(s.invalid(
                        key,
                        &Value::String(String::new()),
                        "a non-empty directory path",
                    )),
                    Some(d) => Ok(PathBuf::from(d)),
                }
            };
            Some(OverlayConfig { upper_dir: dir("upper_dir")?, work_dir: dir("work_dir")? })
        }
    };

    Ok(DaemonConfig {
        id,
        backend,
        cache,
        rafs,
        prefetch,
        overlay,
        accesslog,
        format,
        warnings: std::mem::take(&mut ctx.warnings),
    })
}

fn parse_v2_backend(top: &Section<'_>, ctx: &mut Ctx) -> Result<BackendConfig, ConfigError> {
    let mut known = vec!["type"];
    known.extend_from_slice(BACKEND_TYPES);
    let s = top.required_sub(
        "backend",
        &known,
        ctx,
        "a v2 config needs a backend section with a type",
    )?;
    let kind = s.choice("type", BACKEND_TYPES)?.ok_or_else(|| ConfigError::Missing {
        field: s.field("type"),
        why: format!("the backend type must be {}", one_of(BACKEND_TYPES)),
    })?;
    // nydusd deserializes (so type-checks) every backend section present, used or not.
    // The used http-proxy section is checked as it is parsed, below.
    let checked_later = |t: &str| t == "localfs" || (t == "http-proxy" && kind == t);
    for other in BACKEND_TYPES.iter().filter(|t| !checked_later(t)) {
        if let Some(v) = s.get(other) {
            check_unsupported_backend(s.field(other), v, other, ctx)?;
        }
    }
    let localfs = match s.get("localfs") {
        None => None,
        Some(Value::String(dir)) => {
            ctx.warn(format!(
                "{} is a string; taken as its dir, though nydusd needs {}",
                s.field("localfs"),
                if ctx.toml { "a table with dir" } else { "an object {\"dir\": ...}" }
            ));
            if dir.is_empty() {
                Some(Err(localfs_needs_dir(&s.field("localfs"))))
            } else {
                Some(Ok(BackendConfig::Localfs {
                    dir: Some(PathBuf::from(dir)),
                    alt_dirs: Vec::new(),
                    blob_file: None,
                }))
            }
        }
        Some(v @ Value::Object(_)) => {
            let section = Section::new(s.field("localfs"), v, LOCALFS_KEYS, ctx)?;
            Some(parse_localfs(&section))
        }
        Some(v) => {
            return Err(s.invalid(
                "localfs",
                v,
                if ctx.toml {
                    "a table with dir, alt_dirs or blob_file, or a directory path string"
                } else {
                    "an object with dir, alt_dirs or blob_file, or a directory path string"
                },
            ))
        }
    };
    if kind == "localfs" {
        match localfs {
            Some(result) => result,
            None => Err(localfs_needs_dir(&s.field("localfs"))),
        }
    } else {
        // An unused localfs section is only type-checked; its missing dir is no error.
        if let Some(Err(e @ ConfigError::Invalid { .. })) = localfs {
            return Err(e);
        }
        if kind == "http-proxy" {
            return match s.get("http-proxy") {
                Some(v) => parse_http_proxy(s.field("http-proxy"), v, ctx),
                None => Err(ConfigError::Missing {
                    field: s.field("http-proxy"),
                    why: "the http-proxy backend needs its section with addr".into(),
                }),
            };
        }
        Ok(BackendConfig::Unsupported { kind: kind.to_string() })
    }
}

fn parse_v2_cache(
    s: &Section<'_>,
    ctx: &mut Ctx,
) -> Result<(CacheConfig, PrefetchConfig), ConfigError> {
    let kind = parse_cache_kind(s)?;
    let compressed = s.bool("compressed", false)?;
    let validate = s.bool("validate", false)?;
    let filecache = s.sub("filecache", FILECACHE_KEYS, ctx)?;
    if let Some(f) = &filecache {
        check_filecache(f)?;
    }
    let fscache = s.sub("fscache", &["work_dir"], ctx)?;
    if let Some(f) = &fscache {
        f.string("work_dir")?;
    }
    let chosen = match kind {
        CacheKind::Blobcache => Some((filecache, "filecache")),
        CacheKind::Fscache => Some((fscache, "fscache")),
        CacheKind::Dummy => None,
    };
    let work_dir = match chosen {
        None => PathBuf::from("."),
        Some((Some(section), _)) => parse_work_dir(&section, ctx)?,
        Some((None, name)) => {
            ctx.warn(format!("{} is missing; the cache uses work dir \".\"", s.field(name)));
            PathBuf::from(".")
        }
    };
    let prefetch = s.sub("prefetch", PREFETCH_V2_KEYS, ctx)?;
    let prefetch = parse_prefetch(prefetch.as_ref(), true)?;
    Ok((CacheConfig { kind, work_dir, compressed, validate }, prefetch))
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/nydusd-config/", $name))
        };
    }

    const LOCALFS_V1: &str = fixture!("localfs.v1.json");
    const COMMON_FIELDS_V1: &str = fixture!("common-fields.v1.json");
    const REGISTRY_V1: &str = fixture!("registry-backend.edited.v1.json");
    const MIRRORS_V1: &str = fixture!("mirrors.edited.v1.json");
    const PROXY_V1: &str = fixture!("proxy.edited.v1.json");
    const OVERLAY_V2: &str = fixture!("overlay.v2.json");
    const OVERLAY_OBJECT_V2: &str = fixture!("overlay-object.v2.json");
    const OVERLAY_V2_TOML: &str = fixture!("overlay.v2.toml");

    const LENIENT: &str =
        "the JSON config has comments or trailing commas; accepted, though nydusd rejects them";

    /// All defaults of `format`, with a localfs backend reading `/b`.
    fn base(format: &'static str) -> DaemonConfig {
        DaemonConfig {
            id: None,
            backend: localfs_dir("/b"),
            cache: default_cache(),
            rafs: default_rafs(),
            prefetch: default_prefetch(format == "v1"),
            overlay: None,
            accesslog: AccessLogConfig::default(),
            format,
            warnings: Vec::new(),
        }
    }

    fn with(format: &'static str, edit: impl FnOnce(&mut DaemonConfig)) -> DaemonConfig {
        let mut config = base(format);
        edit(&mut config);
        config
    }

    fn localfs_dir(dir: &str) -> BackendConfig {
        BackendConfig::Localfs {
            dir: Some(PathBuf::from(dir)),
            alt_dirs: Vec::new(),
            blob_file: None,
        }
    }

    fn unsupported(kind: &str) -> BackendConfig {
        BackendConfig::Unsupported { kind: kind.to_string() }
    }

    fn blobcache(work_dir: &str, compressed: bool) -> CacheConfig {
        CacheConfig {
            kind: CacheKind::Blobcache,
            work_dir: PathBuf::from(work_dir),
            compressed,
            validate: false,
        }
    }

    fn warnings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The docs' overlay example, as it should come out (format and warnings aside).
    fn overlay_example(format: &'static str, warn: &[&str]) -> DaemonConfig {
        with(format, |c| {
            c.backend = localfs_dir("/var/lib/nydus/blobs");
            c.cache = blobcache("/var/lib/nydus/cache", false);
            c.rafs.enable_xattr = true;
            c.overlay = Some(OverlayConfig {
                upper_dir: PathBuf::from("/path/to/upperdir"),
                work_dir: PathBuf::from("/path/to/workdir"),
            });
            c.warnings = warnings(warn);
        })
    }

    fn check_table(cases: &[(&str, String, DaemonConfig)]) {
        for (name, text, want) in cases {
            match parse(text) {
                Ok(got) => assert_eq!(&got, want, "case {name}"),
                Err(e) => panic!("case {name}: unexpected error: {e}"),
            }
        }
    }

    fn check_errors(cases: &[(&str, &str, &str)]) {
        for (name, text, want) in cases {
            match parse(text) {
                Ok(got) => panic!("case {name}: parsed, wanted error {want:?}: {got:?}"),
                Err(e) => assert_eq!(e.to_string(), *want, "case {name}"),
            }
        }
    }

    #[test]
    fn seed_doc_examples_map_to_daemon_configs() {
        let common_registry =
            COMMON_FIELDS_V1.replacen("\"type\": \"localfs\"", "\"type\": \"registry\"", 1);
        assert_ne!(common_registry, COMMON_FIELDS_V1);
        let cases = [
            (
                "localfs v1 (Run Nydusd Daemon)",
                LOCALFS_V1.to_string(),
                with("v1", |c| {
                    c.backend = localfs_dir("/var/lib/nydus/blobs");
                    c.cache = blobcache("/var/lib/nydus/cache", false);
                    c.rafs.enable_xattr = true;
                }),
            ),
            (
                "common fields v1 with the registry backend",
                common_registry,
                with("v1", |c| {
                    c.backend = unsupported("registry");
                    c.cache = blobcache("/cache", true);
                    c.rafs.iostats_files = true;
                    c.rafs.amplify_io = 1_048_576;
                    c.prefetch = PrefetchConfig {
                        enable: false,
                        threads_count: 10,
                        merging_size: 131_072,
                        bandwidth_rate: 1_048_576,
                        prefetch_all: true,
                        files: Vec::new(),
                        log: None,
                    };
                    c.warnings = warnings(&[LENIENT]);
                }),
            ),
            (
                "registry backend v1",
                REGISTRY_V1.to_string(),
                with("v1", |c| {
                    c.backend = unsupported("registry");
                    c.warnings = warnings(&[LENIENT]);
                }),
            ),
            (
                "registry mirrors v1 (mirrors were removed from nydusd)",
                MIRRORS_V1.to_string(),
                with("v1", |c| {
                    c.backend = unsupported("registry");
                    c.warnings = warnings(&[
                        LENIENT,
                        "unknown key device.backend.config.mirrors ignored",
                    ]);
                }),
            ),
            (
                "registry p2p proxy v1",
                PROXY_V1.to_string(),
                with("v1", |c| {
                    c.backend = unsupported("registry");
                    c.warnings = warnings(&[LENIENT]);
                }),
            ),
            (
                "overlay v2, localfs as a string",
                OVERLAY_V2.to_string(),
                overlay_example(
                    "v2-json",
                    &["backend.localfs is a string; taken as its dir, though nydusd needs an object {\"dir\": ...}"],
                ),
            ),
            (
                "overlay v2, localfs as an object",
                OVERLAY_OBJECT_V2.to_string(),
                overlay_example("v2-json", &[]),
            ),
            (
                "overlay v2 as TOML",
                OVERLAY_V2_TOML.to_string(),
                overlay_example("v2-toml", &[]),
            ),
            (
                "overlay v2 as TOML, localfs as a string",
                OVERLAY_V2_TOML.replace(
                    "[backend.localfs]\ndir = \"/var/lib/nydus/blobs\"",
                    "localfs = \"/var/lib/nydus/blobs\"",
                ),
                overlay_example(
                    "v2-toml",
                    &["backend.localfs is a string; taken as its dir, though nydusd needs a table with dir"],
                ),
            ),
        ];
        check_table(&cases);
    }

    #[test]
    fn http_proxy_backends_parse_in_every_format() {
        use crate::storage::HttpProxyConfig;
        use std::time::Duration;
        let remote = HttpProxyConfig {
            addr: "http://127.0.0.1:9977".into(),
            path: "/namespace/repo/blobs".into(),
            ..Default::default()
        };
        let tuned = HttpProxyConfig {
            addr: "/run/blobs.sock".into(),
            skip_verify: true,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            retry_limit: 3,
            ..Default::default()
        };
        let cases = [
            (
                r#"{"device":{"backend":{"type":"http-proxy","config":{"addr":"http://127.0.0.1:9977","path":"/namespace/repo/blobs"}}}}"#,
                remote.clone(),
            ),
            (
                r#"{"version":2,"backend":{"type":"http-proxy","http-proxy":{"addr":"/run/blobs.sock","skip_verify":true,"timeout":30,"connect_timeout":2,"retry_limit":3}}}"#,
                tuned,
            ),
            (
                "version = 2\n[backend]\ntype = \"http-proxy\"\n[backend.http-proxy]\naddr = \"http://127.0.0.1:9977\"\npath = \"/namespace/repo/blobs\"\n",
                remote,
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got.backend, BackendConfig::HttpProxy(want), "{text}");
        }
        let warned = parse(
            r#"{"device":{"backend":{"type":"http-proxy","config":{"addr":"/s","bogus":1}}}}"#,
        )
        .unwrap();
        assert_eq!(
            warned.warnings.iter().filter(|w| w.contains("bogus")).count(),
            1,
            "{:?}",
            warned.warnings
        );
        check_errors(&[
            (
                "v1 without addr",
                r#"{"device":{"backend":{"type":"http-proxy","config":{"path":"/x"}}}}"#,
                "device.backend.config.addr is missing: the http-proxy backend needs addr (http://host:port or a unix socket path)",
            ),
            (
                "v2 without section",
                r#"{"version":2,"backend":{"type":"http-proxy"}}"#,
                "backend.http-proxy is missing: the http-proxy backend needs its section with addr",
            ),
            (
                "bad retry_limit",
                r#"{"device":{"backend":{"type":"http-proxy","config":{"addr":"/s","retry_limit":300}}}}"#,
                "device.backend.config.retry_limit: 300 is not an integer from 0 to 255",
            ),
        ]);
    }

    #[test]
    fn seed_common_fields_example_verbatim_has_no_localfs_dir() {
        // The docs' "Common Fields" example uses localfs without a dir: nydusd's validate()
        // refuses that, and so do we, naming the section.
        check_errors(&[(
            "common fields verbatim",
            COMMON_FIELDS_V1,
            "device.backend.config: the localfs backend needs dir or blob_file, and neither is set",
        )]);
    }

    #[test]
    fn fixtures_load_through_from_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nydusd-config");
        let cases = [
            ("localfs.v1.json", "v1"),
            ("overlay.v2.json", "v2-json"),
            ("overlay-object.v2.json", "v2-json"),
            ("overlay.v2.toml", "v2-toml"),
            ("registry-backend.edited.v1.json", "v1"),
        ];
        for (name, format) in cases {
            let config = from_file(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.format, format, "{name}");
        }
    }

    #[test]
    fn defaults_when_sections_are_missing() {
        let cases = [
            (
                "v1 with only a backend",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}}"#
                    .to_string(),
                base("v1"),
            ),
            (
                "v2 JSON with only a backend",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}}}"#
                    .to_string(),
                base("v2-json"),
            ),
            (
                "v2 TOML with only a backend",
                "version = 2\n[backend]\ntype = \"localfs\"\nlocalfs = { dir = \"/b\" }\n"
                    .to_string(),
                base("v2-toml"),
            ),
            (
                "v1 empty sections",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}},
                    "cache": {}}, "fs_prefetch": {}}"#
                    .to_string(),
                base("v1"),
            ),
            (
                "v2 empty sections, prefetch_all defaults to false",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
                    "cache": {"prefetch": {}}, "rafs": {"prefetch": {}}}"#
                    .to_string(),
                base("v2-json"),
            ),
            (
                "v1 blobcache without config uses work dir .",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}},
                    "cache": {"type": "filecache"}}, "mode": "cached"}"#
                    .to_string(),
                with("v1", |c| {
                    c.cache = blobcache(".", false);
                    c.rafs.mode = "cached".to_string();
                    c.warnings = warnings(&[
                        "device.cache.config is missing; the blob cache uses work dir \".\"",
                    ]);
                }),
            ),
            (
                "v2 blobcache without filecache uses work dir .",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
                    "cache": {"type": "blobcache"}}"#
                    .to_string(),
                with("v2-json", |c| {
                    c.cache = blobcache(".", false);
                    c.warnings =
                        warnings(&["cache.filecache is missing; the cache uses work dir \".\""]);
                }),
            ),
            (
                "null counts as absent; empty id and cache type",
                r#"{"device": {"id": "", "backend": {"type": "localfs",
                    "config": {"dir": "/b", "blob_file": null}}, "cache": {"type": ""}},
                    "mode": null}"#
                    .to_string(),
                base("v1"),
            ),
        ];
        check_table(&cases);
    }

    #[test]
    fn every_known_field_maps() {
        let v1 = r#"{
            "device": {
                "id": "dev1",
                "backend": {"type": "localfs",
                    "config": {"blob_file": "/one.blob", "dir": "/b", "alt_dirs": ["/c", "/d"]}},
                "cache": {"type": "fscache", "compressed": true, "validate": true,
                    "config": {"work_dir": "/fs"}}
            },
            "mode": "cached", "digest_validate": true, "iostats_files": true,
            "enable_xattr": true, "access_pattern": true, "latest_read_files": true,
            "amplify_io": 0,
            "fs_prefetch": {"enable": true, "threads_count": 1, "merging_size": 4096,
                "bandwidth_rate": 4294967295, "prefetch_all": false, "stream_prefetch": false}
        }"#;
        let v2 = r#"
            version = 2
            id = "dev1"
            [backend]
            type = "localfs"
            localfs = { blob_file = "/one.blob", dir = "/b", alt_dirs = ["/c", "/d"] }
            [cache]
            type = "fscache"
            compressed = true
            validate = true
            fscache = { work_dir = "/fs" }
            [cache.prefetch]
            enable = true
            threads = 1
            batch_size = 4096
            bandwidth_limit = 4294967295
            prefetch_all = false
            [rafs]
            mode = "cached"
            batch_size = 0
            validate = true
            enable_xattr = true
            iostats_files = true
            access_pattern = true
            latest_read_files = true
        "#;
        let full = |format| {
            with(format, |c| {
                c.id = Some("dev1".to_string());
                c.backend = BackendConfig::Localfs {
                    dir: Some(PathBuf::from("/b")),
                    alt_dirs: vec![PathBuf::from("/c"), PathBuf::from("/d")],
                    blob_file: Some(PathBuf::from("/one.blob")),
                };
                c.cache = CacheConfig {
                    kind: CacheKind::Fscache,
                    work_dir: PathBuf::from("/fs"),
                    compressed: true,
                    validate: true,
                };
                c.rafs = RafsConfig {
                    mode: "cached".to_string(),
                    digest_validate: true,
                    enable_xattr: true,
                    iostats_files: true,
                    access_pattern: true,
                    latest_read_files: true,
                    amplify_io: 0,
                };
                c.prefetch = PrefetchConfig {
                    enable: true,
                    threads_count: 1,
                    merging_size: 4096,
                    bandwidth_rate: 4_294_967_295,
                    prefetch_all: false,
                    files: Vec::new(),
                    log: None,
                };
            })
        };
        check_table(&[
            ("v1 full", v1.to_string(), full("v1")),
            ("v2 TOML full", v2.to_string(), full("v2-toml")),
        ]);
    }

    #[test]
    fn v2_prefetch_aliases_and_rafs_fallback() {
        let doc = |cache: &str, rafs: &str| {
            format!(
                r#"{{"version": 2, "backend": {{"type": "localfs", "localfs": {{"dir": "/b"}}}},
                    "cache": {{"prefetch": {cache}}}, "rafs": {{"prefetch": {rafs}}}}}"#
            )
        };
        let prefetch = |enable, threads_count, merging_size, bandwidth_rate, prefetch_all| {
            with("v2-json", |c| {
                c.prefetch = PrefetchConfig {
                    enable,
                    threads_count,
                    merging_size,
                    bandwidth_rate,
                    prefetch_all,
                    files: Vec::new(),
                    log: None,
                };
            })
        };
        check_table(&[
            (
                "cache.prefetch disabled, rafs.prefetch enabled: rafs wins",
                doc(
                    r#"{"enable": false, "threads": 3}"#,
                    r#"{"enable": true, "threads": 5, "batch_size": 1000, "prefetch_all": true}"#,
                ),
                prefetch(true, 5, 1000, 0, true),
            ),
            (
                "both enabled: cache wins",
                doc(r#"{"enable": true, "threads": 3}"#, r#"{"enable": true, "threads": 5}"#),
                prefetch(true, 3, DEFAULT_MERGING_SIZE, 0, false),
            ),
            (
                "neither enabled: cache values kept",
                doc(r#"{"threads": 3}"#, r#"{"threads": 5}"#),
                prefetch(false, 3, DEFAULT_MERGING_SIZE, 0, false),
            ),
            (
                "v1 key names accepted in v2",
                doc(
                    r#"{"enable": true, "threads_count": 2, "merging_size": 65536, "bandwidth_rate": 7}"#,
                    "{}",
                ),
                prefetch(true, 2, 65536, 7, false),
            ),
        ]);
    }

    #[test]
    fn unknown_keys_warn_and_do_not_fail() {
        let cases = [
            (
                "v1 unknown keys at every level",
                r#"{
                    "device": {
                        "backend": {"type": "localfs",
                            "config": {"dir": "/b", "readahead": true, "readahead_sec": 10}},
                        "cache": {"type": "blobcache", "prefetch_config": {},
                            "config": {"work_dir": ".", "shiny": 1}},
                        "extra": []
                    },
                    "fs_prefetch": {"enable": false, "threads": 4},
                    "version_note": "x"
                }"#
                .to_string(),
                with("v1", |c| {
                    c.cache = blobcache(".", false);
                    c.warnings = warnings(&[
                        "unknown key version_note ignored",
                        "unknown key device.extra ignored",
                        "unknown key device.backend.config.readahead ignored",
                        "unknown key device.backend.config.readahead_sec ignored",
                        "unknown key device.cache.prefetch_config ignored",
                        "unknown key device.cache.config.shiny ignored",
                        "unknown key fs_prefetch.threads ignored",
                    ]);
                }),
            ),
            (
                "v2 TOML unknown keys, misspelt and unused backend sections",
                r#"
                    version = 2
                    metadata_path = "/m"
                    [backend]
                    type = "localfs"
                    localfs = { dir = "/b" }
                    [backend.registy]
                    host = "r"
                    [backend.registry.proxy]
                    url = "http://p2p:65001"
                    colour = "blue"
                    [cache]
                    type = "filecache"
                    enable_encryption = true
                    [cache.filecache]
                    work_dir = "/w"
                    [rafs.prefetch]
                    threads = 2
                    speed = 9
                "#
                .to_string(),
                with("v2-toml", |c| {
                    c.cache = blobcache("/w", false);
                    c.warnings = warnings(&[
                        "unknown key metadata_path ignored",
                        "unknown key backend.registy ignored",
                        "unknown key backend.registry.proxy.colour ignored",
                        "unknown key cache.enable_encryption ignored",
                        "unknown key rafs.prefetch.speed ignored",
                    ]);
                }),
            ),
            (
                "tolerated oddities: external backends, encryption",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
                    "external_backends": [{"type": "x"}],
                    "cache": {"type": "blobcache",
                        "filecache": {"work_dir": "/w", "enable_encryption": true}}}"#
                    .to_string(),
                with("v2-json", |c| {
                    c.cache = blobcache("/w", false);
                    c.warnings = warnings(&[
                        "external_backends is not supported by strata; ignored",
                        "cache.filecache.enable_encryption is not supported by strata; cached data is stored unencrypted",
                    ]);
                }),
            ),
            (
                "comments and a trailing comma in v2 JSON",
                "{\"version\": 2, /* v2 */ \"backend\": {\"type\": \"localfs\", // here\n \"localfs\": {\"dir\": \"/b//c\",},},}"
                    .to_string(),
                with("v2-json", |c| {
                    c.backend = localfs_dir("/b//c");
                    c.warnings = warnings(&[LENIENT]);
                }),
            ),
        ];
        check_table(&cases);
    }

    #[test]
    fn accesslog_section_in_v1_and_v2() {
        const V2: &str = r#"{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}},
            "accesslog": {"path": "/l/a.log", "mode": "full", "max_memory": 4096,
                          "rotate_size": 0, "flush_interval_ms": 50}}"#;
        let c = parse(V2).unwrap();
        assert_eq!(c.accesslog.path, PathBuf::from("/l/a.log"));
        assert_eq!(c.accesslog.mode, Mode::Full);
        assert_eq!(c.accesslog.max_memory, 4096);
        assert_eq!(c.accesslog.rotate_size, 0);
        assert_eq!(c.accesslog.rotate_keep, DEFAULT_ROTATE_KEEP);
        assert_eq!(c.accesslog.flush_interval_ms, 50);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // A section without a mode records first touches; no section records nothing.
        let v1 = r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}},
            "accesslog": {"path": "/l/a.log"}}"#;
        let c = parse(v1).unwrap();
        assert_eq!((c.accesslog.mode, c.accesslog.enabled()), (Mode::FirstTouch, true));
        let c = parse(r#"{"version": 2, "backend": {"type": "localfs", "localfs": "/b"}}"#);
        assert!(!c.unwrap().accesslog.enabled());
        check_errors(&[
            (
                "accesslog without a path",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": "/b"},
                    "accesslog": {"mode": "full"}}"#,
                "accesslog.path is missing: access log mode full needs the log file's path",
            ),
            (
                "accesslog bad mode",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": "/b"},
                    "accesslog": {"path": "/a", "mode": "sometimes"}}"#,
                r#"accesslog.mode: "sometimes" is not one of off, first-touch, first_touch, full"#,
            ),
        ]);
    }

    #[test]
    fn bad_values_are_errors_naming_the_field() {
        const LOCALFS_V2: &str = r#""backend": {"type": "localfs", "localfs": {"dir": "/b"}}"#;
        let v2 = |rest: &str| format!(r#"{{"version": 2, {LOCALFS_V2}{rest}}}"#);
        let v1 = |rest: &str| {
            format!(
                r#"{{"device": {{"backend": {{"type": "localfs", "config": {{"dir": "/b"}}}}}}{rest}}}"#
            )
        };
        let owned = [
            (
                "bad cache type v2",
                v2(r#", "cache": {"type": "memcache"}"#),
                r#"cache.type: "memcache" is not one of blobcache, filecache, fscache, dummycache"#,
            ),
            (
                "bad mode v1",
                v1(r#", "mode": "fast""#),
                r#"mode: "fast" is not one of direct, cached"#,
            ),
            (
                "bad mode v2",
                v2(r#", "rafs": {"mode": "fast"}"#),
                r#"rafs.mode: "fast" is not one of direct, cached"#,
            ),
            (
                "negative threads v2",
                v2(r#", "cache": {"prefetch": {"enable": true, "threads": -1}}"#),
                "cache.prefetch.threads: -1 is not a non-negative integer",
            ),
            (
                "string threads v2",
                v2(r#", "rafs": {"prefetch": {"threads": "8"}}"#),
                r#"rafs.prefetch.threads: "8" is not a non-negative integer"#,
            ),
            (
                "negative threads_count v1",
                v1(r#", "fs_prefetch": {"threads_count": -4}"#),
                "fs_prefetch.threads_count: -4 is not a non-negative integer",
            ),
            (
                "zero threads with prefetch enabled",
                v1(r#", "fs_prefetch": {"enable": true, "threads_count": 0}"#),
                "fs_prefetch.threads_count: 0 is not an integer from 1 to 1024 while prefetch is enabled",
            ),
            (
                "too many threads with prefetch enabled",
                v2(r#", "cache": {"prefetch": {"enable": true, "threads_count": 2000}}"#),
                "cache.prefetch.threads_count: 2000 is not an integer from 1 to 1024 while prefetch is enabled",
            ),
            (
                "huge merging size with prefetch enabled",
                v2(r#", "cache": {"prefetch": {"enable": true, "batch_size": 268435457}}"#),
                "cache.prefetch.batch_size: 268435457 is not an integer from 0 to 268435456 while prefetch is enabled",
            ),
            (
                "float threads",
                v2(r#", "cache": {"prefetch": {"threads": 2.5}}"#),
                "cache.prefetch.threads: 2.5 is not a non-negative integer",
            ),
            (
                "bandwidth over u32",
                v1(r#", "fs_prefetch": {"bandwidth_rate": 4294967296}"#),
                "fs_prefetch.bandwidth_rate: 4294967296 is not an integer from 0 to 4294967295",
            ),
            (
                "both spellings of threads",
                v2(r#", "cache": {"prefetch": {"threads": 1, "threads_count": 1}}"#),
                "cache.prefetch.threads: cache.prefetch.threads and cache.prefetch.threads_count are the same setting; give only one",
            ),
            (
                "amplify_io too large",
                v1(r#", "amplify_io": 268435457"#),
                "amplify_io: 268435457 is not an integer from 0 to 268435456",
            ),
            (
                "rafs batch_size negative",
                v2(r#", "rafs": {"batch_size": -1}"#),
                "rafs.batch_size: -1 is not an integer from 0 to 268435456",
            ),
            (
                "string boolean",
                v1(r#", "enable_xattr": "yes""#),
                r#"enable_xattr: "yes" is not a boolean (true or false)"#,
            ),
            (
                "overlay without upper_dir",
                v2(r#", "overlay": {"work_dir": "/w"}"#),
                "overlay.upper_dir is missing: the overlay section needs both upper_dir and work_dir",
            ),
            (
                "overlay without work_dir",
                v2(r#", "overlay": {"upper_dir": "/u"}"#),
                "overlay.work_dir is missing: the overlay section needs both upper_dir and work_dir",
            ),
            (
                "overlay with an empty upper_dir",
                v2(r#", "overlay": {"upper_dir": "", "work_dir": "/w"}"#),
                r#"overlay.upper_dir: "" is not a non-empty directory path"#,
            ),
            (
                "overlay is not an object",
                v2(r#", "overlay": ["/u", "/w"]"#),
                "overlay: an array is not an object",
            ),
            (
                "empty work dir",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}},
                    "cache": {"type": "blobcache", "config": {"work_dir": ""}}}}"#
                    .to_string(),
                r#"device.cache.config.work_dir: "" is not a non-empty directory path"#,
            ),
            (
                "id is a number",
                v2(r#", "id": 7"#),
                "id: 7 is not a string",
            ),
            (
                "alt_dirs with a number",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b", "alt_dirs": ["/c", 3]}}}}"#.to_string(),
                "device.backend.config.alt_dirs[1]: 3 is not a string",
            ),
        ];
        let owned: Vec<(&str, &str, &str)> =
            owned.iter().map(|(n, t, w)| (*n, t.as_str(), *w)).collect();
        check_errors(&owned);

        check_errors(&[
            (
                "bad cache type v1",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}, "cache": {"type": "lru"}}}"#,
                r#"device.cache.type: "lru" is not one of blobcache, filecache, fscache, dummycache"#,
            ),
            (
                "cache type is not a string",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}, "cache": {"type": true}}}"#,
                "device.cache.type: true is not one of blobcache, filecache, fscache, dummycache",
            ),
            (
                "bad backend type v1",
                r#"{"device": {"backend": {"type": "ftp", "config": {}}}}"#,
                r#"device.backend.type: "ftp" is not one of localfs, localdisk, oss, s3, registry, http-proxy"#,
            ),
            (
                "bad backend type v2 TOML",
                "version = 2\n[backend]\ntype = \"nfs\"\n",
                r#"backend.type: "nfs" is not one of localfs, localdisk, oss, s3, registry, http-proxy"#,
            ),
            (
                "backend without a type",
                r#"{"device": {"backend": {"config": {"dir": "/b"}}}}"#,
                "device.backend.type is missing: the backend type must be one of localfs, localdisk, oss, s3, registry, http-proxy",
            ),
            (
                "v1 without a device",
                r#"{"mode": "direct"}"#,
                "device is missing: a v1 config needs device.backend",
            ),
            (
                "v2 without a backend",
                r#"{"version": 2, "cache": {"type": "dummycache"}}"#,
                "backend is missing: a v2 config needs a backend section with a type",
            ),
            (
                "localfs v1 with neither dir nor blob_file",
                r#"{"device": {"backend": {"type": "localfs", "config": {"alt_dirs": ["/x"], "dir": ""}}}}"#,
                "device.backend.config: the localfs backend needs dir or blob_file, and neither is set",
            ),
            (
                "localfs v1 without a config",
                r#"{"device": {"backend": {"type": "localfs"}}}"#,
                "device.backend.config: the localfs backend needs dir or blob_file, and neither is set",
            ),
            (
                "localfs v2 with an empty object",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": {}}}"#,
                "backend.localfs: the localfs backend needs dir or blob_file, and neither is set",
            ),
            (
                "localfs v2 without its section",
                "version = 2\nbackend.type = \"localfs\"\n",
                "backend.localfs: the localfs backend needs dir or blob_file, and neither is set",
            ),
            (
                "localfs v2 as a number",
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": 5}}"#,
                "backend.localfs: 5 is not an object with dir, alt_dirs or blob_file, or a directory path string",
            ),
            (
                "unused localfs section still type-checked",
                r#"{"version": 2, "backend": {"type": "registry", "localfs": {"dir": 1}}}"#,
                "backend.localfs.dir: 1 is not a string",
            ),
            (
                "registry timeout as a string",
                r#"{"device": {"backend": {"type": "registry", "config": {"timeout": "5"}}}}"#,
                r#"device.backend.config.timeout: "5" is not an integer from 0 to 4294967295"#,
            ),
            (
                "registry retry_limit over u8",
                "version = 2\n[backend]\ntype = \"registry\"\nregistry = { retry_limit = 300 }\n",
                "backend.registry.retry_limit: 300 is not an integer from 0 to 255",
            ),
            (
                "proxy fallback as a string",
                r#"{"device": {"backend": {"type": "oss", "config": {"proxy": {"fallback": "yes"}}}}}"#,
                r#"device.backend.config.proxy.fallback: "yes" is not a boolean (true or false)"#,
            ),
            (
                "cache section is a string (JSON)",
                r#"{"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}, "cache": "blobcache"}}"#,
                r#"device.cache: "blobcache" is not an object"#,
            ),
            (
                "cache section is a string (TOML)",
                "version = 2\ncache = \"blobcache\"\n[backend]\ntype = \"localfs\"\nlocalfs = \"/b\"\n",
                r#"cache: "blobcache" is not a table"#,
            ),
            (
                "TOML datetime where a string belongs",
                "version = 2\n[backend]\ntype = \"localfs\"\nlocalfs = { dir = 1979-05-27T07:32:00Z }\n",
                "backend.localfs.dir: a TOML datetime 1979-05-27T07:32:00Z is not a string",
            ),
            (
                "TOML nan where an integer belongs",
                "version = 2\n[backend]\ntype = \"localfs\"\nlocalfs = \"/b\"\n[rafs]\nbatch_size = nan\n",
                "rafs.batch_size: a TOML float NaN is not an integer from 0 to 268435456",
            ),
            (
                "verbatim common fields example",
                COMMON_FIELDS_V1,
                "device.backend.config: the localfs backend needs dir or blob_file, and neither is set",
            ),
            (
                "version 1",
                r#"{"version": 1, "device": {}}"#,
                "version: 1 is not supported; a v2 config has version 2 and a v1 config has no version key",
            ),
            (
                "version as a string",
                r#"{"version": "2", "backend": {}}"#,
                r#"version: "2" is not supported; a v2 config has version 2 and a v1 config has no version key"#,
            ),
            (
                "TOML version 3",
                "version = 3\n",
                "version: 3 is not supported; a v2 config has version 2 and a v1 config has no version key",
            ),
            (
                "TOML without a version",
                "[backend]\ntype = \"localfs\"\n",
                "the TOML config has no version = 2; nydusd reads TOML only as a v2 config",
            ),
            ("empty text", " \n\t", "the config is empty"),
            (
                "JSON array",
                "[1, 2]",
                "the config must be a JSON object, but it is an array",
            ),
            (
                "malformed JSON",
                "{\n  \"device\": {\n    \"backend\": \n  }\n}",
                "the config is not valid JSON: expected value at line 4, column 3",
            ),
            (
                "malformed JSON with comments keeps its position",
                "{ // c\n  \"mode\": \"direct\" /* x */ \"device\": {}\n}",
                "the config is not valid JSON: expected `,` or `}` at line 2, column 28",
            ),
            (
                "a lone comma is not a trailing comma",
                "{\"device\": {,}}",
                "the config is not valid JSON: key must be a string at line 1, column 13",
            ),
            (
                "a double comma is not a trailing comma",
                "{\"a\": [1,,]} // c",
                "the config is not valid JSON: expected value at line 1, column 10",
            ),
            (
                "malformed TOML with version = 2",
                "version = 2\n[backend\ntype = \"localfs\"\n",
                "the config is not valid TOML: invalid table header\nexpected `.`, `]` at line 2, column 9",
            ),
        ]);
    }

    #[test]
    fn malformed_input_reports_parser_line_and_column() {
        fn position(error: &ConfigError) -> Option<(&'static str, usize, usize)> {
            match error {
                ConfigError::Json { line, column, .. } => Some(("json", *line, *column)),
                ConfigError::Toml { line, column, .. } => Some(("toml", *line, *column)),
                _ => None,
            }
        }
        let cases = [
            ("{\"device\": {\n\"backend\": {\"type\": \"localfs\",,}}}", ("json", 2, 31)),
            ("version = 2\nid = \"x\"\nid = \"y\"\n", ("toml", 3, 1)),
            // Columns count characters, not bytes.
            ("version = 2\n[rafs]\nmode = \"d\u{ef}rect\n", ("toml", 3, 15)),
        ];
        for (text, want) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(position(&error), Some(want), "{text:?}: {error}");
        }
    }

    #[test]
    fn localfs_shortcut_matches_the_config_nydusd_builds() {
        // The config nydusd writes for `--localfs-dir /var/lib/blobs` without `--config`.
        let text = r#"{
            "device": {
                "backend": {"type": "localfs",
                    "config": {"dir": "/var/lib/blobs", "readahead": true}},
                "cache": {"type": "blobcache",
                    "config": {"compressed": false, "work_dir": "/var/lib/blobs"}}
            },
            "mode": "direct", "digest_validate": false, "iostats_files": false
        }"#;
        let mut parsed = parse(text).expect("nydusd's own localfs config");
        assert_eq!(
            parsed.warnings,
            warnings(&[
                "unknown key device.backend.config.readahead ignored",
                "unknown key device.cache.config.compressed ignored",
            ])
        );
        parsed.warnings.clear();
        assert_eq!(parsed, DaemonConfig::localfs(PathBuf::from("/var/lib/blobs")));
    }

    #[test]
    fn format_detection_follows_nydusd_order() {
        let cases = [
            (
                r#"{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/b"}}}"#,
                "v2-json",
            ),
            (
                "version = 2\nbackend = { type = \"localfs\", localfs = { dir = \"/b\" } }",
                "v2-toml",
            ),
            (
                "\u{feff}# leading BOM and a comment\nversion = 2\nbackend.type = \"oss\"\n",
                "v2-toml",
            ),
            (r#"{"device": {"backend": {"type": "s3", "config": {"region": "r"}}}}"#, "v1"),
            (
                "// a commented v1 config\n{\"device\": {\"backend\": {\"type\": \"localdisk\"}}}",
                "v1",
            ),
        ];
        for (text, format) in cases {
            match parse(text) {
                Ok(config) => assert_eq!(config.format, format, "{text:?}"),
                Err(e) => panic!("{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write fixture");
            path
        };
        let bad = write("bad.json", br#"{"version": 2, "backend": {"type": "nope"}}"#);
        let binary = write("binary.json", b"{\"a\": \"\xff\"}");
        let big = write("big.json", &vec![b' '; MAX_CONFIG_FILE_SIZE as usize + 1]);
        let good = write("good.toml", OVERLAY_V2_TOML.as_bytes());
        let missing = dir.path().join("missing.json");

        let message = |path: &Path| match from_file(path) {
            Ok(c) => panic!("{} parsed: {c:?}", path.display()),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            message(&bad),
            format!(
                r#"config file {}: backend.type: "nope" is not one of localfs, localdisk, oss, s3, registry, http-proxy"#,
                bad.display()
            )
        );
        assert_eq!(
            message(&binary),
            format!("config file {} is not UTF-8 text (bad byte at offset 7)", binary.display())
        );
        assert_eq!(
            message(&big),
            format!(
                "config file {} is larger than 1048576 bytes, the most nydusd and stratad accept",
                big.display()
            )
        );
        let missing_message = message(&missing);
        assert!(
            missing_message
                .starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{missing_message}"
        );
        assert_eq!(from_file(&good).expect("good file"), overlay_example("v2-toml", &[]));
    }

    #[test]
    fn odd_input_never_panics() {
        let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep_toml = format!("version = 2\na = {}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep_inline = format!("version = 2\na = {}", "{b = ".repeat(5_000));
        let nasty = [
            "",
            "null",
            "\"str\"",
            "{",
            "}",
            "/*",
            "//",
            "{\"a\": \"\\",
            "{\"a\": /* unterminated",
            "\u{0}",
            "version = 2\n\u{0}",
            "version = 2\nbackend = 1\n",
            "version = 2\n[backend]\ntype = \"localfs\"\nlocalfs = \"\"\n",
            "{\"version\": 2.0}",
            "{\"version\": 18446744073709551616}",
            "{\"device\": {\"backend\": {\"type\": \"localfs\", \"config\": {\"dir\": \"/\u{e9}\"}}}, /* \u{e9} */}",
            deep_json.as_str(),
            deep_toml.as_str(),
            deep_inline.as_str(),
        ];
        for text in nasty {
            let _ = parse(text);
        }
        // Every prefix of every fixture: errors, never a panic.
        let fixtures = [
            LOCALFS_V1,
            COMMON_FIELDS_V1,
            REGISTRY_V1,
            MIRRORS_V1,
            PROXY_V1,
            OVERLAY_V2,
            OVERLAY_OBJECT_V2,
            OVERLAY_V2_TOML,
        ];
        let mut parsed_whole = 0;
        for text in fixtures {
            for (at, _) in text.char_indices() {
                let _ = parse(&text[..at]);
            }
            parsed_whole += usize::from(parse(text).is_ok());
        }
        assert_eq!(parsed_whole, fixtures.len() - 1, "all but common-fields parse");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_json_like_text_never_panics(
            text in r#"[{}\[\]":,/*\n a-z0-9.\-\\]{0,120}"#
        ) {
            let _ = parse(&text);
        }
    }
}
