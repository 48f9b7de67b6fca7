//! Validated names: job and set names, and file paths relative to a set.
//!
//! Every name that reaches the store, the manifest or (later) a receiver
//! comes through here, so "can this escape its directory?" has one answer.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest job or set name, in bytes. Well under NAME_MAX (255) so
/// suffixes such as `.tmp` still fit.
pub const MAX_NAME_LEN: usize = 128;
/// Longest relative file path inside a set, in bytes.
pub const MAX_REL_PATH_LEN: usize = 4096;

/// Why a name or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid {kind} name {name:?}: {reason}")]
    Name {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("invalid file path {path:?} in a set: {reason}")]
    RelPath { path: String, reason: &'static str },
}

fn check_component(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s == "." || s == ".." {
        return Err("'.' and '..' are not names");
    }
    if s.contains('/') {
        return Err("it contains '/'");
    }
    if s.contains('\0') {
        return Err("it contains a NUL byte");
    }
    if s.chars().any(char::is_control) {
        return Err("it contains a control character");
    }
    Ok(())
}

fn check_name(kind: &'static str, s: &str) -> Result<(), NameError> {
    let fail = |reason| NameError::Name {
        kind,
        name: s.to_owned(),
        reason,
    };
    check_component(s).map_err(fail)?;
    if s.len() > MAX_NAME_LEN {
        return Err(fail("it is longer than 128 bytes"));
    }
    // Leading dots are reserved: the store keeps its own metadata in
    // `<cache>/.ckptfs`, and temp files start with a dot.
    if s.starts_with('.') {
        return Err(fail("it starts with '.'"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check_name($kind, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<Path> for $ty {
            fn as_ref(&self) -> &Path {
                Path::new(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A job: one application run's checkpoints, `<cache>/<job>`.
    JobName,
    "job"
);
name_type!(
    /// A set: one checkpoint of a job, `<cache>/<job>/<set>`.
    SetName,
    "set"
);

/// A file's path inside a set: relative, normalised, never leaving the set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let fail = |reason| NameError::RelPath {
            path: s.clone(),
            reason,
        };
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        if s.len() > MAX_REL_PATH_LEN {
            return Err(fail("it is longer than 4096 bytes"));
        }
        if s.starts_with('/') {
            return Err(fail("it is absolute"));
        }
        if s.ends_with('/') {
            return Err(fail("it ends with '/'"));
        }
        for part in s.split('/') {
            check_component(part).map_err(|_| {
                fail(if part.is_empty() {
                    "it has an empty component ('//')"
                } else if part == "." || part == ".." {
                    "it has a '.' or '..' component"
                } else {
                    "a component contains NUL or a control character"
                })
            })?;
            if part.len() > 255 {
                return Err(fail("a component is longer than 255 bytes"));
            }
        }
        Ok(Self(s))
    }

    /// From a path found on disk under a set directory.
    pub fn from_path(p: &Path) -> Result<Self, NameError> {
        let mut parts = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(os) => match os.to_str() {
                    Some(s) => parts.push(s),
                    None => {
                        return Err(NameError::RelPath {
                            path: p.to_string_lossy().into_owned(),
                            reason: "it is not valid UTF-8",
                        })
                    }
                },
                _ => {
                    return Err(NameError::RelPath {
                        path: p.to_string_lossy().into_owned(),
                        reason: "it is not a plain relative path",
                    })
                }
            }
        }
        Self::new(parts.join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base` joined with this path; stays under `base` by construction.
    pub fn under(&self, base: &Path) -> PathBuf {
        base.join(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for n in ["run1", "lulesh-2024_05", "set.000042", "a", "x:y@z+1"] {
            JobName::new(n).unwrap();
            SetName::new(n).unwrap();
        }
        JobName::new("j".repeat(MAX_NAME_LEN)).unwrap();
    }

    #[test]
    fn bad_names_say_why_and_name_it() {
        let long = "j".repeat(MAX_NAME_LEN + 1);
        let cases = [
            ("", "empty"),
            (".", "'.'"),
            ("..", "'.'"),
            ("a/b", "'/'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            (".hidden", "starts with '.'"),
            (long.as_str(), "longer"),
        ];
        for (name, why) in cases {
            let e = JobName::new(name).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
            assert!(e.contains("job name"), "{e}");
            let e = SetName::new(name).unwrap_err().to_string();
            assert!(e.contains("set name"), "{e}");
        }
    }

    #[test]
    fn rel_paths() {
        for p in ["a", "a/b/c.dat", "rank-0/x.h5", ".hidden/ok"] {
            RelPath::new(p).unwrap();
        }
        for p in [
            "", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/\0", "a/.",
        ] {
            assert!(RelPath::new(p).is_err(), "{p:?} accepted");
        }
        assert_eq!(
            RelPath::from_path(Path::new("x/y")).unwrap().as_str(),
            "x/y"
        );
        assert!(RelPath::from_path(Path::new("../y")).is_err());
        assert!(RelPath::from_path(Path::new("/y")).is_err());
    }

    #[test]
    fn serde_refuses_bad_names() {
        let r: Result<JobName, _> = serde_json::from_str("\"../etc\"");
        assert!(r.is_err());
        let r: Result<RelPath, _> = serde_json::from_str("\"a/../../etc/passwd\"");
        assert!(r.is_err());
    }
}
