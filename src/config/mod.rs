//! `/etc/system_snapshots.conf`: TOML, every key optional, unknown keys refused. Values are
//! checked while parsing, so every error names the line, the key and what is expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use crate::error::{Error, Result};

/// The commented example, as shipped (`system_snapshot config-example`).
pub const EXAMPLE: &str = include_str!("example.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: Option<PathBuf>,
    pub sources: Vec<String>,
    pub exclude: Vec<String>,
    pub database_locations: Vec<String>,
    pub one_file_system: bool,
    pub retention: Retention,
    pub hooks: Hooks,
    pub boot: Boot,
    pub offsite: Offsite,
    pub monitoring: crate::monitor::Monitoring,
    pub apt: crate::apt::AptHook,
}

/// Copies off the machine (`system_snapshot push`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Offsite {
    /// `s3://BUCKET/PREFIX` or `file:///DIR`: where `push` copies the points when `--to` is
    /// not given. Credentials come from the environment, never from this file.
    pub url: Option<String>,
    /// Points kept off site (the newest); older ones are removed from the remote after each
    /// push. None: every point pushed stays there.
    pub keep_points: Option<MinPoints>,
    /// An AWS-style shared credentials file, its owner's alone (mode 600), read when the
    /// environment has no AWS_ACCESS_KEY_ID.
    pub credentials: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: None,
            sources: vec!["/".into()],
            exclude: Vec::new(),
            database_locations: Vec::new(),
            one_file_system: true,
            retention: Retention::default(),
            hooks: Hooks::default(),
            boot: Boot::default(),
            offsite: Offsite::default(),
            monitoring: Default::default(),
            apt: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub ceiling_ratio: Ratio,
    pub min_points: MinPoints,
    pub age_floor: Span,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ceiling_ratio: Ratio(1.5),
            min_points: MinPoints(2),
            age_floor: Span(Duration::from_secs(24 * 3600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Boot {
    pub capture: bool,
    pub device: Option<PathBuf>,
    /// Keep the recovery kit (the program under both command names, and RECOVERY) in the store.
    pub kit: bool,
}

impl Boot {
    pub fn source(&self) -> crate::boot::Source {
        match (&self.device, self.capture) {
            (_, false) => crate::boot::Source::Off,
            (Some(d), true) => crate::boot::Source::Device(d.clone()),
            (None, true) => crate::boot::Source::Discover,
        }
    }
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            capture: true,
            device: None,
            kit: true,
        }
    }
}

pub use crate::hooks::{Hook, Hooks};

impl<'de> Deserialize<'de> for Hook {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            command: String,
            #[serde(default = "ten_minutes")]
            timeout: Span,
            #[serde(default)]
            optional: bool,
        }
        fn ten_minutes() -> Span {
            Span(Duration::from_secs(600))
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plain(String),
            Full(Full),
        }
        match Either::deserialize(d).map_err(|_| de::Error::custom("expected a command string or { command = \"…\", timeout = \"10m\", optional = true }"))? {
            Either::Plain(command) => Ok(Hook { command, timeout: Duration::from_secs(600), optional: false }),
            Either::Full(f) => Ok(Hook { command: f.command, timeout: f.timeout.0, optional: f.optional }),
        }
    }
}

/// A duration written like "24h", "90m", "7d", "0s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    pub fn parse(s: &str) -> Option<Span> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            "w" => 7 * 86400,
            _ => return None,
        };
        Some(Span(Duration::from_secs(n.checked_mul(secs)?)))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).ok_or_else(|| {
            de::Error::custom(format!(
                "{s:?} is not a duration: write it like \"24h\", \"90m\", \"7d\" or \"0s\""
            ))
        })
    }
}

/// The ceiling ratio: a number of at least 1 (below that no store could ever hold its replica).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of at least 1.0, like 1.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<f64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<f64, E> {
                Ok(v as f64)
            }
        }
        let v = d.deserialize_any(V)?;
        if !(v >= 1.0 && v.is_finite()) {
            return Err(de::Error::custom(format!("{v} is too small: the store holds a full replica, so the ratio must be at least 1.0")));
        }
        Ok(Ratio(v))
    }
}

/// The points always kept: at least 1 (the latest point is never removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPoints(pub usize);

impl<'de> Deserialize<'de> for MinPoints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if v < 1 {
            return Err(de::Error::custom(format!(
                "{v} is too small: at least 1 point (the latest) is always kept"
            )));
        }
        Ok(MinPoints(v as usize))
    }
}

impl Retention {
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            ceiling_ratio: self.ceiling_ratio.0,
            min_points: self.min_points.0,
            age_floor: self.age_floor.0,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file is the defaults unless it was asked for by name.
    pub fn load(path: &Path, required: bool) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(Error::io(
                    format!("reading the config {}", path.display()),
                    e,
                ))
            }
        };
        Config::parse(&text).map_err(|msg| Error::Config {
            path: path.to_path_buf(),
            msg,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_to_the_defaults_it_documents() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.store.as_deref(), Some(Path::new("/root/snapshots")));
        assert_eq!(c.retention.ceiling_ratio, Ratio(1.5));
        assert_eq!(c.retention.min_points, MinPoints(2));
        assert_eq!(c.retention.age_floor, Span(Duration::from_secs(86400)));
        assert!(c.boot.capture && c.one_file_system);
    }

    #[test]
    fn durations() {
        assert_eq!(Span::parse("90m"), Some(Span(Duration::from_secs(5400))));
        assert_eq!(Span::parse("0s"), Some(Span(Duration::ZERO)));
        assert_eq!(Span::parse("7d"), Some(Span(Duration::from_secs(604800))));
        for bad in ["24", "h", "1.5h", "-1h", "24 hours", ""] {
            assert_eq!(Span::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hooks_as_strings_or_tables() {
        let c = Config::parse("[hooks]\npre_snapshot = [\"pg_dumpall > /var/backups/pg.sql\", { command = \"true\", timeout = \"5s\", optional = true }]").unwrap();
        assert_eq!(c.hooks.pre_snapshot.len(), 2);
        assert_eq!(
            c.hooks.pre_snapshot[1],
            Hook {
                command: "true".into(),
                timeout: Duration::from_secs(5),
                optional: true
            }
        );
    }

    #[test]
    fn every_bad_file_names_the_line_the_key_and_what_is_expected() {
        let cases: &[(&str, &[&str])] = &[
            ("stor = \"/x\"\n", &["line 1", "stor", "unknown field"]),
            (
                "[retention]\nceiling_ratio = 0.5\n",
                &["line 2", "ceiling_ratio", "at least 1.0"],
            ),
            (
                "[retention]\nceiling_ratio = \"big\"\n",
                &["line 2", "ceiling_ratio", "a number of at least 1.0"],
            ),
            (
                "[retention]\n\nage_floor = \"1 day\"\n",
                &["line 3", "age_floor", "\"24h\""],
            ),
            (
                "[retention]\nmin_points = 0\n",
                &["line 2", "min_points", "at least 1"],
            ),
            ("sources = \"/\"\n", &["line 1", "sources", "sequence"]),
            (
                "[hooks]\non_failure = [{ cmd = \"x\" }]\n",
                &["line 2", "on_failure", "command"],
            ),
            ("one_file_system = yes\n", &["line 1"]),
        ];
        for (text, wants) in cases {
            let err = Config::parse(text).expect_err(text);
            for w in *wants {
                assert!(err.contains(w), "{text:?}: {w:?} not in:\n{err}");
            }
        }
    }
}
