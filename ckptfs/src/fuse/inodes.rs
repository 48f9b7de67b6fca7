//! Inode numbers for paths under the cache root, handed to the kernel.
//!
//! Numbers are never reused (a u64 counter), so a stale number from the
//! kernel can never name a different file. A node lives while the kernel
//! holds lookups on it; rename moves a node and everything under it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const ROOT: u64 = 1;

struct Node {
    /// Path relative to the cache root; `None` once unlinked or replaced.
    path: Option<PathBuf>,
    lookups: u64,
}

pub struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    pub fn new() -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            ROOT,
            Node {
                path: Some(PathBuf::new()),
                lookups: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(PathBuf::new(), ROOT);
        Inodes {
            by_ino,
            by_path,
            next: ROOT + 1,
        }
    }

    /// The path of `ino`, if it still has one.
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        self.by_ino.get(&ino).and_then(|n| n.path.clone())
    }

    /// The number of `path`, adding one lookup (as a kernel LOOKUP does).
    pub fn lookup(&mut self, path: &Path) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(
            ino,
            Node {
                path: Some(path.to_owned()),
                lookups: 1,
            },
        );
        self.by_path.insert(path.to_owned(), ino);
        ino
    }

    /// The number of `path` if one was handed out, without a lookup.
    pub fn peek(&self, path: &Path) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let gone = match self.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(Node { path: Some(p), .. }) = self.by_ino.remove(&ino) {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    /// `path` was unlinked: its node keeps living for open handles but no
    /// longer answers to the name.
    pub fn unlinked(&mut self, path: &Path) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.path = None;
            }
        }
    }

    /// `from` was renamed to `to` (replacing whatever was there).
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        self.unlinked(to);
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            let Ok(rest) = old.strip_prefix(from) else {
                continue;
            };
            let new = if rest.as_os_str().is_empty() {
                to.to_owned()
            } else {
                to.join(rest)
            };
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.path = Some(new);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_forget_rename() {
        let mut t = Inodes::new();
        let a = t.lookup(Path::new("j/s/a"));
        let d = t.lookup(Path::new("j/s/d"));
        let f = t.lookup(Path::new("j/s/d/f"));
        assert_eq!(t.lookup(Path::new("j/s/a")), a);
        assert_ne!(a, d);
        t.renamed(Path::new("j/s/d"), Path::new("j/s/e"));
        assert_eq!(t.path(f).unwrap(), Path::new("j/s/e/f"));
        assert_eq!(t.path(d).unwrap(), Path::new("j/s/e"));
        assert_eq!(t.peek(Path::new("j/s/d/f")), None);
        // Rename over an existing name detaches the old node.
        t.renamed(Path::new("j/s/a"), Path::new("j/s/e/f"));
        assert_eq!(t.path(f), None);
        assert_eq!(t.path(a).unwrap(), Path::new("j/s/e/f"));
        // "j/s/e2" must not be caught by a prefix match on "j/s/e".
        let e2 = t.lookup(Path::new("j/s/e2"));
        t.renamed(Path::new("j/s/e"), Path::new("j/s/g"));
        assert_eq!(t.path(e2).unwrap(), Path::new("j/s/e2"));
        t.forget(a, 2);
        assert_eq!(t.path(a), None);
        let again = t.lookup(Path::new("j/s/g/f"));
        assert!(again > e2, "numbers are never reused");
        t.forget(ROOT, 10);
        assert_eq!(t.path(ROOT).unwrap(), Path::new(""));
    }
}
