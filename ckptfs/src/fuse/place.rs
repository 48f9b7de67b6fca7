//! Where a path under `/ckpt` falls: the root (jobs), a job (sets), a set
//! directory, or something inside a set. Names are validated here, so an
//! invalid job or set name never reaches the store.

use std::path::Path;

use libckpt::path::{JobName, NameError, RelPath, SetName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Root,
    Job(JobName),
    Set(JobName, SetName),
    InSet(JobName, SetName, RelPath),
}

impl Place {
    /// Classify a path relative to the cache root.
    pub fn of(path: &Path) -> Result<Place, NameError> {
        let parts: Vec<&str> = path
            .components()
            .map(|c| c.as_os_str().to_str().unwrap_or("\u{fffd}"))
            .collect();
        Ok(match parts.as_slice() {
            [] => Place::Root,
            [job] => Place::Job(JobName::new(*job)?),
            [job, set] => Place::Set(JobName::new(*job)?, SetName::new(*set)?),
            [job, set, rest @ ..] => Place::InSet(
                JobName::new(*job)?,
                SetName::new(*set)?,
                RelPath::new(rest.join("/"))?,
            ),
        })
    }

    /// The set this place belongs to (a set directory or inside one).
    pub fn set(&self) -> Option<(&JobName, &SetName)> {
        match self {
            Place::Set(j, s) | Place::InSet(j, s, _) => Some((j, s)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        assert_eq!(Place::of(Path::new("")).unwrap(), Place::Root);
        assert!(matches!(Place::of(Path::new("j")).unwrap(), Place::Job(_)));
        assert!(matches!(
            Place::of(Path::new("j/s")).unwrap(),
            Place::Set(..)
        ));
        let p = Place::of(Path::new("j/s/a/b")).unwrap();
        assert!(matches!(&p, Place::InSet(_, _, r) if r.as_str() == "a/b"));
        // The store's own directory is not a job.
        assert!(Place::of(Path::new(".ckptfs")).is_err());
        assert!(Place::of(Path::new("j/.tmp")).is_err());
    }
}
