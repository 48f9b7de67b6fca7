//! Per-page deduplication of CRIU page images against a parent set, and
//! the page index that says where every page lives.
//!
//! CRIU writes a process's memory as `pages-N.img`: raw 4 KiB pages, in
//! the order `pagemap-*.img` describes. A full dump's set keeps those files
//! as they are. An incremental dump's set keeps, for each `pages-N.img`,
//! only the pages no earlier set of its chain holds, in `pages-N.img.delta`,
//! and one page index, `ckptfs-pages.idx`, that lists for every page of
//! every image its BLAKE3 hash (128 bits) and the set and file holding it.
//! Restore rebuilds each `pages-N.img` from the index (checking every
//! page's hash) before `criu restore` reads it; every other image file is
//! small and kept whole in every set.
//!
//! # Index format, version 1 (little-endian)
//!
//! ```text
//! 0   8  magic "CKPTPIDX"
//! 8   4  format version (1)
//! 12  4  page size (4096)
//! 16  4  chain depth: 1 for the first incremental set on a full one, …
//! 20  4  number of source sets S (1..=1024); source 0 is the set itself
//! 24  4  number of files F (..=65536)
//! 28  4  number of images I (..=65536)
//! 32     S set names, F file paths (relative to a set's directory) and
//!        I image names, each as u16 length + UTF-8 bytes, then per image:
//!          u64 pages P, u32 runs R,
//!          R runs of (u32 source, u32 file, u64 first page, u64 pages),
//!          P page hashes of 16 bytes
//! ```
//! The runs of an image cover its pages in order (their page counts add up
//! to P); a run reads `pages` consecutive pages of file `file` in source
//! set `source` from page `first page` on. Nothing may follow the last
//! image. Every count is checked against the bytes left before anything is
//! allocated, so a damaged or hostile index is an error, never a panic or
//! a huge allocation.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::durable::{IoContext, PathError};
use crate::path::{RelPath, SetName};

/// The page index's file name in a set.
pub const INDEX_FILE: &str = "ckptfs-pages.idx";
/// Suffix of the file holding an image's new pages in an incremental set.
pub const DELTA_SUFFIX: &str = ".delta";
/// CRIU's page size (x86-64, arm64 with 4 KiB pages).
pub const PAGE: usize = 4096;
pub const MAGIC: [u8; 8] = *b"CKPTPIDX";
/// The index version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
pub const MAX_SOURCES: u32 = 1024;
pub const MAX_FILES: u32 = 1 << 16;
pub const MAX_IMAGES: u32 = 1 << 16;
/// Largest index read: 1 GiB describes 64 TiB of memory.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;
/// Pages read, hashed and written per step.
const BLOCK_PAGES: usize = 256;

/// A page's identity: the first 128 bits of its BLAKE3 hash.
pub type PageHash = [u8; 16];

pub fn hash_page(page: &[u8]) -> PageHash {
    let mut h = [0u8; 16];
    h.copy_from_slice(&blake3::hash(page).as_bytes()[..16]);
    h
}

/// True for CRIU's raw page image names, `pages-N.img`.
pub fn is_page_image(name: &str) -> bool {
    name.strip_prefix("pages-")
        .and_then(|n| n.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page index: {0}")]
    Format(String),
    #[error("page index version {found} is newer than this ckptfs understands (up to {VERSION})")]
    FutureVersion { found: u32 },
    #[error("{path}: {size} bytes is not a whole number of {PAGE}-byte pages")]
    Unaligned { path: PathBuf, size: u64 },
    #[error(
        "{image} page {page}: the copy in {path} does not match the page index (hash mismatch)"
    )]
    Mismatch {
        image: String,
        page: u64,
        path: PathBuf,
    },
    #[error("{path} is shorter than the page index says (page {page} of it is missing)")]
    Short { path: PathBuf, page: u64 },
    #[error(transparent)]
    Io(#[from] PathError),
}

fn bad(msg: impl Into<String>) -> PageError {
    PageError::Format(msg.into())
}

/// Consecutive pages of one image that live together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub source: u32,
    pub file: u32,
    pub start: u64,
    pub count: u64,
}

/// One logical `pages-N.img`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: RelPath,
    pub runs: Vec<Run>,
    pub hashes: Vec<PageHash>,
}

/// A parsed `ckptfs-pages.idx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageIndex {
    pub depth: u32,
    /// Source 0 is the set the index belongs to.
    pub sources: Vec<SetName>,
    pub files: Vec<RelPath>,
    pub images: Vec<Image>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PageError> {
        if self.b.len() < n {
            return Err(bad(format!("truncated in {what}")));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &str) -> Result<u16, PageError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, PageError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self, what: &str) -> Result<u64, PageError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self, what: &str) -> Result<&'a str, PageError> {
        let n = self.u16(what)? as usize;
        std::str::from_utf8(self.take(n, what)?).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
    fn count(&mut self, what: &str, max: u32) -> Result<usize, PageError> {
        let n = self.u32(what)?;
        if n > max {
            return Err(bad(format!("{n} {what}, over the limit of {max}")));
        }
        Ok(n as usize)
    }
}

fn plain_file(s: &str, what: &str) -> Result<RelPath, PageError> {
    let p = RelPath::new(s).map_err(|e| bad(format!("{what}: {e}")))?;
    if s.contains('/') {
        return Err(bad(format!("{what} {s:?} is not a plain file name")));
    }
    Ok(p)
}

impl PageIndex {
    /// Parse and check an index. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<PageIndex, PageError> {
        let mut r = Reader { b: bytes };
        if r.take(8, "the magic")? != MAGIC {
            return Err(bad("not a ckptfs page index (bad magic)"));
        }
        let version = r.u32("the version")?;
        if version > VERSION {
            return Err(PageError::FutureVersion { found: version });
        }
        if version == 0 {
            return Err(bad("version 0 does not exist"));
        }
        let page = r.u32("the page size")?;
        if page as usize != PAGE {
            return Err(bad(format!("page size {page}, expected {PAGE}")));
        }
        let depth = r.u32("the depth")?;
        let ns = r.count("sources", MAX_SOURCES)?;
        let nf = r.count("files", MAX_FILES)?;
        let ni = r.count("images", MAX_IMAGES)?;
        if ns == 0 {
            return Err(bad("no source sets"));
        }
        let mut sources = Vec::with_capacity(ns);
        for _ in 0..ns {
            let s = r.str("a source set name")?;
            let s = SetName::new(s).map_err(|e| bad(e.to_string()))?;
            if sources.contains(&s) {
                return Err(bad(format!("source set {s} is listed twice")));
            }
            sources.push(s);
        }
        let mut files = Vec::with_capacity(nf);
        for _ in 0..nf {
            files.push(plain_file(r.str("a file name")?, "file")?);
        }
        let mut images: Vec<Image> = Vec::with_capacity(ni.min(r.b.len() / 14));
        for _ in 0..ni {
            let name = plain_file(r.str("an image name")?, "image")?;
            if images.iter().any(|i| i.name == name) {
                return Err(bad(format!("image {name} is listed twice")));
            }
            let pages = r.u64("a page count")?;
            let nruns = r.u32("a run count")? as usize;
            if nruns.saturating_mul(24) > r.b.len() {
                return Err(bad(format!("image {name}: {nruns} runs do not fit")));
            }
            let mut runs = Vec::with_capacity(nruns);
            let mut covered: u64 = 0;
            for _ in 0..nruns {
                let run = Run {
                    source: r.u32("a run")?,
                    file: r.u32("a run")?,
                    start: r.u64("a run")?,
                    count: r.u64("a run")?,
                };
                if run.source as usize >= ns || run.file as usize >= nf {
                    return Err(bad(format!(
                        "image {name}: a run names a missing source or file"
                    )));
                }
                if run.count == 0 || run.start.checked_add(run.count).is_none() {
                    return Err(bad(format!("image {name}: an empty or overflowing run")));
                }
                covered = covered
                    .checked_add(run.count)
                    .ok_or_else(|| bad(format!("image {name}: page counts overflow")))?;
                runs.push(run);
            }
            if covered != pages {
                return Err(bad(format!(
                    "image {name}: runs cover {covered} pages, the image has {pages}"
                )));
            }
            let hash_bytes = pages
                .checked_mul(16)
                .filter(|n| *n <= r.b.len() as u64)
                .ok_or_else(|| bad(format!("image {name}: {pages} page hashes do not fit")))?;
            let raw = r.take(hash_bytes as usize, "the page hashes")?;
            let hashes = raw
                .chunks_exact(16)
                .map(|c| {
                    let mut h = [0u8; 16];
                    h.copy_from_slice(c);
                    h
                })
                .collect();
            images.push(Image { name, runs, hashes });
        }
        if !r.b.is_empty() {
            return Err(bad(format!("{} bytes after the last image", r.b.len())));
        }
        Ok(PageIndex {
            depth,
            sources,
            files,
            images,
        })
    }

    /// The serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let pages: usize = self.images.iter().map(|i| i.hashes.len()).sum();
        let mut v = Vec::with_capacity(64 + pages * 16);
        v.extend_from_slice(&MAGIC);
        for n in [
            VERSION,
            PAGE as u32,
            self.depth,
            self.sources.len() as u32,
            self.files.len() as u32,
            self.images.len() as u32,
        ] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        let put_str = |v: &mut Vec<u8>, s: &str| {
            v.extend_from_slice(&(s.len() as u16).to_le_bytes());
            v.extend_from_slice(s.as_bytes());
        };
        for s in &self.sources {
            put_str(&mut v, s.as_str());
        }
        for f in &self.files {
            put_str(&mut v, f.as_str());
        }
        for i in &self.images {
            put_str(&mut v, i.name.as_str());
            v.extend_from_slice(&(i.hashes.len() as u64).to_le_bytes());
            v.extend_from_slice(&(i.runs.len() as u32).to_le_bytes());
            for r in &i.runs {
                v.extend_from_slice(&r.source.to_le_bytes());
                v.extend_from_slice(&r.file.to_le_bytes());
                v.extend_from_slice(&r.start.to_le_bytes());
                v.extend_from_slice(&r.count.to_le_bytes());
            }
            for h in &i.hashes {
                v.extend_from_slice(h);
            }
        }
        v
    }

    /// Read and parse `dir`'s index; `None` when the set has none (a full
    /// dump, or not a dump at all).
    pub fn load(dir: &Path) -> Result<Option<PageIndex>, PageError> {
        let path = dir.join(INDEX_FILE);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::new("opening", &path, e).into()),
        };
        let mut bytes = Vec::new();
        f.take(MAX_INDEX_BYTES + 1)
            .read_to_end(&mut bytes)
            .at("reading", &path)?;
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(bad(format!(
                "{} is over {MAX_INDEX_BYTES} bytes",
                path.display()
            )));
        }
        PageIndex::parse(&bytes).map(Some)
    }

    /// The sets other than itself whose files this index reads.
    pub fn needs(&self) -> Vec<SetName> {
        let mut used = vec![false; self.sources.len()];
        for r in self.images.iter().flat_map(|i| &i.runs) {
            used[r.source as usize] = true;
        }
        self.sources
            .iter()
            .zip(used)
            .skip(1)
            .filter(|(_, u)| *u)
            .map(|(s, _)| s.clone())
            .collect()
    }
}

/// Where a page can be read: source set, file, page number.
type Loc = (u32, u32, u64);

/// The pages a new incremental set can refer to instead of storing them,
/// and the tables the new index is built from.
pub struct Catalog {
    sources: Vec<SetName>,
    files: Vec<RelPath>,
    file_ids: HashMap<RelPath, u32>,
    pages: HashMap<PageHash, Loc>,
    /// The parent's depth in its chain (0: a full dump).
    parent_depth: u32,
}

impl Catalog {
    fn new(this_set: &SetName) -> Catalog {
        Catalog {
            sources: vec![this_set.clone()],
            files: Vec::new(),
            file_ids: HashMap::new(),
            pages: HashMap::new(),
            parent_depth: 0,
        }
    }

    fn source_id(&mut self, s: &SetName) -> u32 {
        match self.sources.iter().position(|x| x == s) {
            Some(i) => i as u32,
            None => {
                self.sources.push(s.clone());
                (self.sources.len() - 1) as u32
            }
        }
    }

    fn file_id(&mut self, f: &RelPath) -> u32 {
        if let Some(id) = self.file_ids.get(f) {
            return *id;
        }
        let id = self.files.len() as u32;
        self.files.push(f.clone());
        self.file_ids.insert(f.clone(), id);
        id
    }

    /// Every page the parent set `parent` (whose files are in
    /// `parent_dir`) can give a new set named `this_set`: from its page
    /// index when it has one, else by hashing its `pages-*.img`.
    pub fn of_parent(
        this_set: &SetName,
        parent: &SetName,
        parent_dir: &Path,
    ) -> Result<Catalog, PageError> {
        let mut c = Catalog::new(this_set);
        match PageIndex::load(parent_dir)? {
            Some(idx) => {
                c.parent_depth = idx.depth;
                for img in &idx.images {
                    let mut page = 0usize;
                    for run in &img.runs {
                        let src = if run.source == 0 {
                            parent.clone()
                        } else {
                            idx.sources[run.source as usize].clone()
                        };
                        let s = c.source_id(&src);
                        let f = c.file_id(&idx.files[run.file as usize]);
                        for k in 0..run.count {
                            if let Some(h) = img.hashes.get(page) {
                                c.pages.entry(*h).or_insert((s, f, run.start + k));
                            }
                            page += 1;
                        }
                    }
                }
            }
            None => {
                let s = c.source_id(parent);
                for name in page_images(parent_dir)? {
                    let f = c.file_id(&name);
                    let path = name.under(parent_dir);
                    let mut n: u64 = 0;
                    for_each_block(&path, &mut |block: &[u8]| {
                        let hashes: Vec<PageHash> = block.par_chunks(PAGE).map(hash_page).collect();
                        for h in hashes {
                            c.pages.entry(h).or_insert((s, f, n));
                            n += 1;
                        }
                        Ok(())
                    })?;
                }
            }
        }
        Ok(c)
    }
}

/// The `pages-N.img` files in `dir`, by name.
pub fn page_images(dir: &Path) -> Result<Vec<RelPath>, PageError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).at("listing", dir)? {
        let e = e.at("listing", dir)?;
        if let Some(name) = e.file_name().to_str().filter(|n| is_page_image(n)) {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                out.push(plain_file(name, "image")?);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Read `path` in blocks of whole pages.
fn for_each_block(
    path: &Path,
    f: &mut dyn FnMut(&[u8]) -> Result<(), PageError>,
) -> Result<(), PageError> {
    let mut file = File::open(path).at("opening", path)?;
    let size = file.metadata().at("reading", path)?.len();
    if size % PAGE as u64 != 0 {
        return Err(PageError::Unaligned {
            path: path.to_owned(),
            size,
        });
    }
    let mut buf = vec![0u8; BLOCK_PAGES * PAGE];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n]).at("reading", path)?;
        f(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What [`dedup`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DedupStats {
    pub pages: u64,
    pub new_pages: u64,
    /// Bytes of the page index written.
    pub index_bytes: u64,
}

fn create_private(path: &Path) -> Result<File, PathError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .at("creating", path)
}

/// Turn the full images CRIU wrote into `dir` into an incremental set:
/// every page found in `catalog` is referred to, every other one goes to
/// `pages-N.img.delta`; then the index is written and the full
/// `pages-N.img` removed.
pub fn dedup(dir: &Path, mut catalog: Catalog) -> Result<DedupStats, PageError> {
    let mut stats = DedupStats::default();
    let mut images = Vec::new();
    for name in page_images(dir)? {
        let path = name.under(dir);
        let delta_name = plain_file(&format!("{name}{DELTA_SUFFIX}"), "file")?;
        let delta_path = delta_name.under(dir);
        let mut delta: Option<io::BufWriter<File>> = None;
        let mut delta_pages: u64 = 0;
        let mut runs: Vec<Run> = Vec::new();
        let mut hashes: Vec<PageHash> = Vec::new();
        for_each_block(&path, &mut |block: &[u8]| {
            let hs: Vec<PageHash> = block.par_chunks(PAGE).map(hash_page).collect();
            for (page, h) in block.chunks(PAGE).zip(&hs) {
                let loc = match catalog.pages.get(h) {
                    Some(loc) => *loc,
                    None => {
                        let w = match &mut delta {
                            Some(w) => w,
                            None => delta.insert(io::BufWriter::with_capacity(
                                1 << 20,
                                create_private(&delta_path)?,
                            )),
                        };
                        w.write_all(page).at("writing", &delta_path)?;
                        let f = catalog.file_id(&delta_name);
                        let loc = (0, f, delta_pages);
                        delta_pages += 1;
                        catalog.pages.insert(*h, loc);
                        loc
                    }
                };
                match runs.last_mut() {
                    Some(r)
                        if r.source == loc.0 && r.file == loc.1 && r.start + r.count == loc.2 =>
                    {
                        r.count += 1
                    }
                    _ => runs.push(Run {
                        source: loc.0,
                        file: loc.1,
                        start: loc.2,
                        count: 1,
                    }),
                }
            }
            hashes.extend_from_slice(&hs);
            Ok(())
        })?;
        if let Some(w) = delta {
            w.into_inner()
                .map_err(|e| PathError::new("writing", &delta_path, e.into_error()))?
                .sync_all()
                .at("syncing", &delta_path)?;
        }
        stats.pages += hashes.len() as u64;
        stats.new_pages += delta_pages;
        images.push((path, Image { name, runs, hashes }));
    }
    let index = PageIndex {
        depth: catalog.parent_depth + 1,
        sources: catalog.sources,
        files: catalog.files,
        images: images.iter().map(|(_, i)| i.clone()).collect(),
    };
    let bytes = index.to_bytes();
    let path = dir.join(INDEX_FILE);
    let mut f = create_private(&path)?;
    f.write_all(&bytes).at("writing", &path)?;
    f.sync_all().at("syncing", &path)?;
    stats.index_bytes = bytes.len() as u64;
    for (full, _) in images {
        fs::remove_file(&full).at("removing", &full)?;
    }
    Ok(stats)
}

/// Write every image of `index` into `out` (as `pages-N.img`, mode 0600),
/// reading its pages from the sets' directories (`dir_of`) and checking
/// each against its hash. Returns the bytes written.
pub fn rebuild(
    index: &PageIndex,
    dir_of: &dyn Fn(&SetName) -> PathBuf,
    out: &Path,
) -> Result<u64, PageError> {
    let mut open: HashMap<(u32, u32), (File, PathBuf)> = HashMap::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; BLOCK_PAGES * PAGE];
    for img in &index.images {
        let dest = img.name.under(out);
        let mut w = create_private(&dest)?;
        let mut page: u64 = 0;
        for run in &img.runs {
            let (f, path) = match open.entry((run.source, run.file)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    let path = index.files[run.file as usize]
                        .under(&dir_of(&index.sources[run.source as usize]));
                    let f = File::open(&path).at("opening", &path)?;
                    v.insert((f, path))
                }
            };
            let (f, path) = (&*f, &*path);
            let mut done = 0u64;
            while done < run.count {
                let n = (run.count - done).min(BLOCK_PAGES as u64) as usize;
                let at = (run.start + done) * PAGE as u64;
                f.read_exact_at(&mut buf[..n * PAGE], at).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        PageError::Short {
                            path: path.clone(),
                            page: run.start + done,
                        }
                    } else {
                        PathError::new("reading", path, e).into()
                    }
                })?;
                let first = page as usize;
                let want = img
                    .hashes
                    .get(first..first + n)
                    .ok_or_else(|| bad(format!("image {}: fewer hashes than pages", img.name)))?;
                let bad_page = buf[..n * PAGE]
                    .par_chunks(PAGE)
                    .zip(want.par_iter())
                    .position_first(|(p, h)| hash_page(p) != *h);
                if let Some(i) = bad_page {
                    return Err(PageError::Mismatch {
                        image: img.name.to_string(),
                        page: page + i as u64,
                        path: path.clone(),
                    });
                }
                w.write_all(&buf[..n * PAGE]).at("writing", &dest)?;
                done += n as u64;
                page += n as u64;
                written += (n * PAGE) as u64;
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u32) -> Vec<u8> {
        (0..PAGE as u32)
            .map(|i| (i.wrapping_mul(31) ^ fill) as u8)
            .collect::<Vec<u8>>()
            .iter()
            .enumerate()
            .map(|(i, b)| if i < 4 { fill.to_le_bytes()[i] } else { *b })
            .collect()
    }

    fn image(fills: &[u32]) -> Vec<u8> {
        fills.iter().flat_map(|f| page(*f)).collect()
    }

    fn set(s: &str) -> SetName {
        SetName::new(s).unwrap()
    }

    #[test]
    fn index_round_trip_and_refusals() {
        let idx = PageIndex {
            depth: 2,
            sources: vec![set("d+2"), set("d")],
            files: vec![RelPath::new("pages-1.img").unwrap()],
            images: vec![Image {
                name: RelPath::new("pages-1.img").unwrap(),
                runs: vec![Run {
                    source: 1,
                    file: 0,
                    start: 3,
                    count: 2,
                }],
                hashes: vec![[1; 16], [2; 16]],
            }],
        };
        let b = idx.to_bytes();
        assert_eq!(PageIndex::parse(&b).unwrap(), idx);
        assert_eq!(idx.needs(), vec![set("d")]);
        for cut in 0..b.len() {
            assert!(PageIndex::parse(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(PageIndex::parse(&extra).is_err());
        let mut future = b.clone();
        future[8] = 9;
        assert!(matches!(
            PageIndex::parse(&future),
            Err(PageError::FutureVersion { found: 9 })
        ));
        let mut huge = b.clone();
        // The page count of the image: claims far more than the file holds.
        let at = b.len() - 32 - 24 - 4 - 8;
        huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(PageIndex::parse(&huge).is_err());
    }

    #[test]
    fn dedup_then_rebuild_a_chain() {
        let d = crate::testutil::scratch("ckpt-pages-");
        let dir = |s: &SetName| d.path().join(s.as_str());
        // Full dump: two images.
        let full = set("d");
        fs::create_dir(dir(&full)).unwrap();
        let a0 = image(&[1, 2, 3, 4, 5, 6]);
        let b0 = image(&[10, 11]);
        fs::write(dir(&full).join("pages-1.img"), &a0).unwrap();
        fs::write(dir(&full).join("pages-2.img"), &b0).unwrap();

        // First incremental: a page inserted early (every later offset
        // shifts), one changed; image 2 unchanged.
        let i1 = set("d+1");
        fs::create_dir(dir(&i1)).unwrap();
        let a1 = image(&[1, 99, 2, 3, 4, 55, 6]);
        fs::write(dir(&i1).join("pages-1.img"), &a1).unwrap();
        fs::write(dir(&i1).join("pages-2.img"), &b0).unwrap();
        let c = Catalog::of_parent(&i1, &full, &dir(&full)).unwrap();
        let st = dedup(&dir(&i1), c).unwrap();
        assert_eq!((st.pages, st.new_pages), (9, 2));
        assert!(!dir(&i1).join("pages-1.img").exists());
        assert_eq!(
            fs::read(dir(&i1).join("pages-1.img.delta")).unwrap(),
            image(&[99, 55])
        );
        assert!(!dir(&i1).join("pages-2.img.delta").exists());

        // Second incremental on top of the first.
        let i2 = set("d+2");
        fs::create_dir(dir(&i2)).unwrap();
        let a2 = image(&[1, 99, 77, 4, 55, 6, 6]);
        fs::write(dir(&i2).join("pages-1.img"), &a2).unwrap();
        let c = Catalog::of_parent(&i2, &i1, &dir(&i1)).unwrap();
        let st = dedup(&dir(&i2), c).unwrap();
        assert_eq!((st.pages, st.new_pages), (7, 1));
        let idx = PageIndex::load(&dir(&i2)).unwrap().unwrap();
        assert_eq!(idx.depth, 2);
        let mut needs = idx.needs();
        needs.sort();
        assert_eq!(needs, vec![full.clone(), i1.clone()]);

        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        rebuild(&idx, &dir, &out).unwrap();
        assert_eq!(fs::read(out.join("pages-1.img")).unwrap(), a2);

        let idx1 = PageIndex::load(&dir(&i1)).unwrap().unwrap();
        let out1 = d.path().join("out1");
        fs::create_dir(&out1).unwrap();
        rebuild(&idx1, &dir, &out1).unwrap();
        assert_eq!(fs::read(out1.join("pages-1.img")).unwrap(), a1);
        assert_eq!(fs::read(out1.join("pages-2.img")).unwrap(), b0);

        // A flipped byte in a parent's page is caught by its hash.
        let mut bad_full = a0.clone();
        bad_full[PAGE * 3 + 100] ^= 1;
        fs::write(dir(&full).join("pages-1.img"), &bad_full).unwrap();
        let out2 = d.path().join("out2");
        fs::create_dir(&out2).unwrap();
        let e = rebuild(&idx, &dir, &out2).unwrap_err();
        assert!(matches!(e, PageError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn names() {
        assert!(is_page_image("pages-1.img"));
        assert!(is_page_image("pages-123.img"));
        for n in [
            "pages-.img",
            "pages-1.img.delta",
            "pagemap-1.img",
            "pages-x.img",
        ] {
            assert!(!is_page_image(n), "{n}");
        }
    }
}
