//! Open files and directories, by the handle number given to the kernel.
//!
//! A passthrough backing id is shared by every open of one inode (the
//! kernel requires it) and lives as long as one of them is open.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, Weak};

use fuser::{BackingId, FileType};

pub struct FileHandleEntry {
    pub file: File,
    pub ino: u64,
    pub write: bool,
    /// `file` is also open for reading, with O_NOATIME: the seal after the
    /// last close may read through it.
    pub seal_through: bool,
    pub backing: Mutex<Option<Arc<BackingId>>>,
}

pub struct DirHandle {
    /// Snapshot taken at opendir, so offsets stay stable across readdir calls.
    pub entries: Vec<(u64, FileType, String)>,
}

#[derive(Default)]
pub struct Handles {
    files: HashMap<u64, Arc<FileHandleEntry>>,
    dirs: HashMap<u64, Arc<DirHandle>>,
    backing: HashMap<u64, Weak<BackingId>>,
    next: u64,
}

impl Handles {
    fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    pub fn insert_file(&mut self, f: Arc<FileHandleEntry>) -> u64 {
        let fh = self.next();
        self.files.insert(fh, f);
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandleEntry>> {
        self.files.get(&fh).cloned()
    }

    pub fn remove_file(&mut self, fh: u64) -> Option<Arc<FileHandleEntry>> {
        let f = self.files.remove(&fh)?;
        // Drop the table's weak entry once the last open of the inode goes.
        if let Some(w) = self.backing.get(&f.ino) {
            if w.strong_count() <= 1 {
                self.backing.remove(&f.ino);
            }
        }
        Some(f)
    }

    pub fn insert_dir(&mut self, d: DirHandle) -> u64 {
        let fh = self.next();
        self.dirs.insert(fh, Arc::new(d));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.get(&fh).cloned()
    }

    pub fn remove_dir(&mut self, fh: u64) {
        self.dirs.remove(&fh);
    }

    pub fn backing_for(&self, ino: u64) -> Option<Arc<BackingId>> {
        self.backing.get(&ino).and_then(Weak::upgrade)
    }

    pub fn remember_backing(&mut self, ino: u64, id: &Arc<BackingId>) {
        self.backing.insert(ino, Arc::downgrade(id));
    }
}
