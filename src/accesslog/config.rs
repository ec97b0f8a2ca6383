//! The `accesslog` config section and the recording [`Mode`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the recorder keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing: [`super::AccessSink::record`] returns at once.
    #[default]
    Off,
    /// Each file operation per (inode, op) once, each (inode, chunk) read or written once,
    /// in the order they first happened: what prefetch and layout optimisation need. Mutations
    /// (create, unlink, rename, ...) are always kept.
    #[serde(alias = "first_touch", alias = "firsttouch")]
    FirstTouch,
    /// Every event: what audit needs.
    Full,
}

impl Mode {
    /// The on-disk code in the log header. Format constant.
    pub const fn code(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::FirstTouch => 1,
            Mode::Full => 2,
        }
    }

    /// The mode with header code `c`.
    pub const fn from_code(c: u8) -> Option<Mode> {
        match c {
            0 => Some(Mode::Off),
            1 => Some(Mode::FirstTouch),
            2 => Some(Mode::Full),
            _ => None,
        }
    }

    /// The name the config and CLI use.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::FirstTouch => "first-touch",
            Mode::Full => "full",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "off" => Ok(Mode::Off),
            "first-touch" | "firsttouch" => Ok(Mode::FirstTouch),
            "full" => Ok(Mode::Full),
            _ => Err(format!("unknown access log mode {s:?} (expected off, first-touch or full)")),
        }
    }
}

/// Default bound on buffered, not yet written events (16 MiB).
pub const DEFAULT_MAX_MEMORY: u64 = 16 << 20;
/// Default size at which the log rotates (256 MiB).
pub const DEFAULT_ROTATE_SIZE: u64 = 256 << 20;
/// Default number of rotated files kept beside the live one.
pub const DEFAULT_ROTATE_KEEP: u32 = 4;
/// Default interval of the background writer (1 s).
pub const DEFAULT_FLUSH_MS: u64 = 1000;

/// The `accesslog` section of the daemon config:
/// `{"path": "/var/log/strata/access.log", "mode": "first-touch", "max_memory": 16777216,
/// "rotate_size": 268435456}`. Every field has a default; the log is off unless `mode` says
/// otherwise and `path` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// The live log file; rotated files are `path.1`, `path.2`, ... (older is higher).
    pub path: PathBuf,
    /// What to record.
    pub mode: Mode,
    /// Bound on memory used by buffered events, in bytes. Past it events are dropped and
    /// counted; a request never waits.
    pub max_memory: u64,
    /// Rotate when the live file reaches this size in bytes (0: never).
    pub rotate_size: u64,
    /// Rotated files kept (older ones are deleted).
    pub rotate_keep: u32,
    /// How often the background writer drains buffers and writes, in milliseconds.
    pub flush_interval_ms: u64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            mode: Mode::Off,
            max_memory: DEFAULT_MAX_MEMORY,
            rotate_size: DEFAULT_ROTATE_SIZE,
            rotate_keep: DEFAULT_ROTATE_KEEP,
            flush_interval_ms: DEFAULT_FLUSH_MS,
        }
    }
}

impl AccessLogConfig {
    /// Whether this config records anything.
    pub fn enabled(&self) -> bool {
        self.mode != Mode::Off && !self.path.as_os_str().is_empty()
    }

    /// The writer's interval (at least 1 ms).
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_round_trip() {
        for (s, m) in [
            ("off", Mode::Off),
            ("first-touch", Mode::FirstTouch),
            ("first_touch", Mode::FirstTouch),
            ("FULL", Mode::Full),
        ] {
            assert_eq!(s.parse::<Mode>(), Ok(m));
            assert_eq!(Mode::from_code(m.code()), Some(m));
        }
        assert!("sometimes".parse::<Mode>().is_err());
        assert_eq!(Mode::from_code(7), None);
    }

    #[test]
    fn config_defaults_and_json() {
        let c: AccessLogConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, AccessLogConfig::default());
        assert!(!c.enabled());
        let c: AccessLogConfig = serde_json::from_str(
            r#"{"path":"/tmp/a.log","mode":"first-touch","max_memory":1024,"rotate_size":0}"#,
        )
        .unwrap();
        assert!(c.enabled());
        assert_eq!(c.mode, Mode::FirstTouch);
        assert_eq!(c.max_memory, 1024);
        assert_eq!(c.rotate_size, 0);
        assert_eq!(c.rotate_keep, DEFAULT_ROTATE_KEEP);
        let c: AccessLogConfig = toml::from_str("path = \"x\"\nmode = \"full\"\n").unwrap();
        assert_eq!(c.mode, Mode::Full);
        assert!(serde_json::from_str::<AccessLogConfig>(r#"{"mdoe":"full"}"#).is_err());
    }
}
