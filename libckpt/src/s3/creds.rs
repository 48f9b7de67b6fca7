//! S3 credentials from the usual places, never from the command line (a
//! secret on a command line is in every `ps` listing).
//!
//! In order:
//! 1. a profile named in the config (`s3.profile`): from the shared files;
//! 2. `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with
//!    `AWS_SESSION_TOKEN` if set);
//! 3. the profile `AWS_PROFILE` names, else `default`, from the shared
//!    credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), then the shared config file
//!    (`AWS_CONFIG_FILE`, else `~/.aws/config`, where it is
//!    `[profile NAME]`).
//!
//! The files are INI as the AWS tools write them; [`parse_ini`] reads them
//! with a bound on size and never panics (it has a fuzz target).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keys for signing requests, and where they came from (for messages;
/// never the secret itself).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why no credentials could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    #[error(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put profile \
         {profile:?} in {} (looked in: {})",
        files.first().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.aws/credentials".into()),
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        profile: String,
        files: Vec<PathBuf>,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: profile {profile:?} has {missing} but not {other}")]
    Incomplete {
        path: PathBuf,
        profile: String,
        missing: &'static str,
        other: &'static str,
    },
}

/// Largest credentials or config file read.
pub const MAX_FILE: usize = 1 << 20;

/// Sections of an INI file: `[name]` → key → value. Keys are lowercased;
/// values are trimmed; `#` and `;` start comment lines. A key before any
/// section, a line that is neither, or a file over [`MAX_FILE`] is an
/// error naming the line.
pub type Ini = BTreeMap<String, BTreeMap<String, String>>;

pub fn parse_ini(text: &str) -> Result<Ini, String> {
    if text.len() > MAX_FILE {
        return Err(format!("over {MAX_FILE} bytes"));
    }
    let mut out = Ini::new();
    let mut section: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a section header without ']'", n + 1))?
                .trim();
            out.entry(name.to_owned()).or_default();
            section = Some(name.to_owned());
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: neither [section] nor key = value", n + 1))?;
        let Some(s) = &section else {
            return Err(format!("line {}: a key before any [section]", n + 1));
        };
        out.entry(s.clone())
            .or_default()
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    Ok(out)
}

/// Where the lookup reads: the environment (a function, so tests need not
/// touch the process's own).
pub struct Lookup<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Lookup<'_> {
    fn var(&self, k: &str) -> Option<String> {
        (self.env)(k).filter(|v| !v.is_empty())
    }

    fn home_file(&self, var: &str, rel: &str) -> Option<PathBuf> {
        self.var(var)
            .map(PathBuf::from)
            .or_else(|| self.var("HOME").map(|h| Path::new(&h).join(rel)))
    }

    /// The process environment.
    pub fn process() -> Lookup<'static> {
        Lookup {
            env: &|k| std::env::var(k).ok(),
        }
    }

    /// Find credentials; `profile` is the config's `s3.profile`.
    pub fn resolve(&self, profile: Option<&str>) -> Result<Credentials, CredsError> {
        if profile.is_none() {
            if let (Some(id), Some(secret)) = (
                self.var("AWS_ACCESS_KEY_ID"),
                self.var("AWS_SECRET_ACCESS_KEY"),
            ) {
                return Ok(Credentials {
                    key_id: id,
                    secret,
                    token: self.var("AWS_SESSION_TOKEN"),
                    source: "the environment (AWS_ACCESS_KEY_ID)".into(),
                });
            }
        }
        let profile = profile
            .map(str::to_owned)
            .or_else(|| self.var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let files = [
            (
                self.home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
                profile.clone(),
            ),
            (
                self.home_file("AWS_CONFIG_FILE", ".aws/config"),
                if profile == "default" {
                    profile.clone()
                } else {
                    format!("profile {profile}")
                },
            ),
        ];
        let mut looked = Vec::new();
        for (path, section) in files {
            let Some(path) = path else { continue };
            looked.push(path.clone());
            let text = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(CredsError::File {
                        path,
                        message: e.to_string(),
                    })
                }
            };
            let text = String::from_utf8_lossy(&text);
            let ini = parse_ini(&text).map_err(|message| CredsError::File {
                path: path.clone(),
                message,
            })?;
            let Some(s) = ini.get(&section) else { continue };
            let id = s.get("aws_access_key_id").filter(|v| !v.is_empty());
            let secret = s.get("aws_secret_access_key").filter(|v| !v.is_empty());
            match (id, secret) {
                (Some(id), Some(secret)) => {
                    return Ok(Credentials {
                        key_id: id.clone(),
                        secret: secret.clone(),
                        token: s.get("aws_session_token").cloned(),
                        source: format!("{} [{section}]", path.display()),
                    })
                }
                (None, None) => continue,
                (id, _) => {
                    let (missing, other) = if id.is_some() {
                        ("aws_access_key_id", "aws_secret_access_key")
                    } else {
                        ("aws_secret_access_key", "aws_access_key_id")
                    };
                    return Err(CredsError::Incomplete {
                        path,
                        profile,
                        missing,
                        other,
                    });
                }
            }
        }
        Err(CredsError::NotFound {
            profile,
            files: looked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup<'a>(vars: &'a HashMap<&'a str, String>) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn ini_as_the_aws_tools_write_it() {
        let ini = parse_ini(
            "# comment\n[default]\naws_access_key_id = AK\nAWS_Secret_Access_Key=SK \n\n\
             ; other\n[profile site]\nregion = eu-west-1\n",
        )
        .unwrap();
        assert_eq!(ini["default"]["aws_access_key_id"], "AK");
        assert_eq!(ini["default"]["aws_secret_access_key"], "SK");
        assert_eq!(ini["profile site"]["region"], "eu-west-1");
        assert!(parse_ini("k = v\n").unwrap_err().contains("line 1"));
        assert!(parse_ini("[a]\njunk\n").unwrap_err().contains("line 2"));
        assert!(parse_ini("[a\n").unwrap_err().contains("']'"));
        assert!(parse_ini(&"#".repeat(MAX_FILE + 1)).is_err());
    }

    #[test]
    fn environment_then_files_then_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("HOME", home.clone());
        let env = lookup(&vars);
        let e = Lookup { env: &env }.resolve(None).unwrap_err();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert!(e.to_string().contains(".aws/credentials"), "{e}");

        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id=D\naws_secret_access_key=DS\n[site]\naws_access_key_id=S\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[profile other]\naws_access_key_id=O\naws_secret_access_key=OS\naws_session_token=T\n",
        )
        .unwrap();
        let c = Lookup { env: &env }.resolve(None).unwrap();
        assert_eq!((c.key_id.as_str(), c.secret.as_str()), ("D", "DS"));
        assert!(c.source.ends_with(".aws/credentials [default]"));
        let c = Lookup { env: &env }.resolve(Some("other")).unwrap();
        assert_eq!(c.token.as_deref(), Some("T"));
        assert!(c.source.contains("[profile other]"));
        let e = Lookup { env: &env }.resolve(Some("site")).unwrap_err();
        assert!(matches!(e, CredsError::Incomplete { .. }), "{e}");
        let e = Lookup { env: &env }.resolve(Some("nope")).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");

        drop(env);
        vars.insert("AWS_ACCESS_KEY_ID", "E".into());
        vars.insert("AWS_SECRET_ACCESS_KEY", "s3cr3t-value".into());
        let env = lookup(&vars);
        let c = Lookup { env: &env }.resolve(None).unwrap();
        assert_eq!(c.key_id, "E");
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "the secret is never printed"
        );
        // A profile named in the config wins over the environment.
        let c = Lookup { env: &env }.resolve(Some("other")).unwrap();
        assert_eq!(c.key_id, "O");
    }
}
