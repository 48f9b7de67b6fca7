//! Configuration: one TOML file, every key also settable by a flag, and
//! defaults such that no file is needed at all.
//!
//! Where the file comes from: `--config FILE`, else `$CKPTFS_CONFIG`, else
//! `/etc/ckptfs.toml` if it exists, else the built-in defaults. Unknown keys
//! and bad values are errors that name the key and the file (or the flag).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::chunk::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::io::{EngineKind, IoOptions};
use crate::store::StoreOptions;

/// The system-wide config file, read when no other is named.
pub const SYSTEM_CONFIG: &str = "/etc/ckptfs.toml";
/// Environment variable naming a config file.
pub const CONFIG_ENV: &str = "CKPTFS_CONFIG";
/// The default cache directory.
pub const DEFAULT_CACHE: &str = "/var/tmp/ckptfs";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {key}: {message}")]
    Value {
        /// The file, or the flag, the value came from.
        origin: String,
        key: &'static str,
        message: String,
    },
}

/// The whole configuration. Later issues add tables (`[drain]`, `[pfs]`…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node-local cache directory (tier 0).
    pub cache: PathBuf,
    pub store: StoreConfig,
    pub io: IoConfig,
    pub mount: MountConfig,
    pub drain: DrainConfig,
    pub pfs: PfsConfig,
    pub dr: DrConfig,
    pub s3: S3Config,
    pub criu: CriuConfig,
    pub api: ApiConfig,
}

/// How the C library (`libckpt.so`) reaches the cache (`api.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiMode {
    /// Mounted when a daemon answers on the cache's control socket, else
    /// embedded.
    #[default]
    Auto,
    /// A ckptfs daemon serves the cache and drains it.
    Mounted,
    /// No daemon: the library drains the cache from a background thread.
    Embedded,
}

impl fmt::Display for ApiMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApiMode::Auto => "auto",
            ApiMode::Mounted => "mounted",
            ApiMode::Embedded => "embedded",
        })
    }
}

impl std::str::FromStr for ApiMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ApiMode::Auto),
            "mounted" => Ok(ApiMode::Mounted),
            "embedded" => Ok(ApiMode::Embedded),
            other => Err(format!(
                "unknown API mode `{other}` (expected auto, mounted or embedded)"
            )),
        }
    }
}

/// `[api]`: the C/Fortran library (`ckpt_init` and friends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `auto`, `mounted` or `embedded`.
    pub mode: ApiMode,
    /// Longest `ckpt_checkpoint_wait` blocks for the drain.
    pub wait_timeout: String,
    /// Longest `ckpt_finalize` waits for the job's checkpoints to drain
    /// (embedded mode).
    pub finalize_timeout: String,
    /// `ckpt_need_checkpoint` says yes every this many calls; 0 is off.
    pub interval: u64,
    /// …or when this many seconds have passed since the last checkpoint;
    /// 0 is off.
    pub seconds: u64,
    /// …or when the last checkpoint took at most this percent of the time
    /// since it ended; 0 is off.
    pub overhead: u8,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            mode: ApiMode::Auto,
            wait_timeout: "10m".into(),
            finalize_timeout: "5m".into(),
            interval: 0,
            seconds: 0,
            overhead: 10,
        }
    }
}

/// `[criu]`: the CRIU that `ckptfs-dump` and `ckptfs-restore` drive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriuConfig {
    /// The criu executable to use, and no other. Unset: a CRIU >= 4 on the
    /// PATH, else the one `scripts/install-criu.sh` put in
    /// `/opt/ckptfs/criu/bin/criu`; the newest that runs wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// `[drain]`: how complete sets move to the lower tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Random delay before a set starts draining, so a thousand nodes that
    /// commit at once do not hit the parallel filesystem at once.
    pub jitter: String,
    /// First retry delay after a failure; doubles up to `backoff_max`.
    pub backoff_min: String,
    pub backoff_max: String,
    /// Evict drained sets when the cache filesystem is fuller than this
    /// (percent), down to `low_watermark`.
    pub high_watermark: u8,
    pub low_watermark: u8,
    /// Drain sealed files of a mount's sets before they are committed, so
    /// the commit leaves less to send (off by default: a file deleted
    /// before the commit has then crossed the network for nothing).
    pub early: bool,
    /// Nice value (0–19) of the drain's threads: the application's
    /// threads come first. 0 runs the drain at the process's priority.
    pub nice: i32,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            jitter: "2s".into(),
            backoff_min: "1s".into(),
            backoff_max: "5m".into(),
            high_watermark: 90,
            low_watermark: 75,
            early: false,
            nice: crate::sched::DEFAULT_NICE,
        }
    }
}

/// `[pfs]`: the parallel-filesystem tier (a POSIX directory). Off unless
/// `dir` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PfsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Complete sets kept per job on this tier; 0 keeps all.
    pub keep: usize,
    /// Bytes per second; 0 is unlimited.
    pub rate: ByteSize,
}

impl Default for PfsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            keep: 5,
            rate: ByteSize::b(0),
        }
    }
}

/// `[dr]`: the disaster-recovery site (`ckptfs serve`). Off unless
/// `address` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrConfig {
    /// `host:port` of a `ckptfs serve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Shared key file (mode 0600).
    pub key: PathBuf,
    pub keep: usize,
    pub rate: ByteSize,
    /// zstd level for chunks on the wire and at rest: 1–19, -7 to -1
    /// (zstd's fast levels), or `auto` (-5 to 9, after whichever of
    /// compression and the link is slower).
    pub zstd_level: crate::dr::level::ZstdLevel,
    /// `auto` (RDMA when a verbs device reaches the site, else TCP),
    /// `tcp` or `rdma`.
    pub transport: crate::dr::transport::Choice,
    /// Registered buffers per RDMA connection, each way: the receive
    /// depth (the peer's credits) and the sends in flight.
    pub rdma_buffers: u16,
    /// Size of each registered buffer: the largest RDMA message.
    pub rdma_buffer_size: ByteSize,
}

impl Default for DrConfig {
    fn default() -> Self {
        let rdma = crate::dr::transport::RdmaOptions::default();
        Self {
            address: None,
            key: PathBuf::from("/etc/ckptfs/dr.key"),
            keep: 10,
            rate: ByteSize::b(0),
            zstd_level: crate::dr::level::ZstdLevel::Auto,
            transport: crate::dr::transport::Choice::Auto,
            rdma_buffers: rdma.recv_bufs,
            rdma_buffer_size: ByteSize::b(rdma.buf_size.into()),
        }
    }
}

impl DrConfig {
    /// The client's transport settings (validated by [`Config::validate`]).
    pub fn transport(&self) -> crate::dr::Transport {
        crate::dr::Transport {
            choice: self.transport,
            rdma: crate::dr::transport::RdmaOptions {
                recv_bufs: self.rdma_buffers,
                send_bufs: self.rdma_buffers,
                buf_size: u32::try_from(self.rdma_buffer_size.as_u64()).unwrap_or(u32::MAX),
            },
        }
    }
}

/// `[s3]`: an S3-compatible object store. Off unless `url` is set.
/// Credentials never come from here: see [`crate::s3::creds`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// `s3://BUCKET/PREFIX`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `http(s)://host:port` of the server; else `$AWS_ENDPOINT_URL_S3`,
    /// `$AWS_ENDPOINT_URL`, else AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Else `$AWS_REGION`, `$AWS_DEFAULT_REGION`, else us-east-1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests; default: yes with an endpoint, no for AWS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Credentials profile in the shared AWS files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub keep: usize,
    pub rate: ByteSize,
    /// Requests in flight at once (1–256).
    pub parallel: usize,
    /// zstd level for chunk objects: 1–19, -7 to -1, or `auto`.
    pub zstd_level: crate::dr::level::ZstdLevel,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: ByteSize,
    /// Part size of a multipart upload (at least 5 MiB, S3's minimum).
    pub part_size: ByteSize,
    /// Send a SHA-256 checksum with each upload for the server to check.
    pub checksum: bool,
    /// Retries of one request (throttling, 5xx, timeouts) before the drain
    /// backs off.
    pub retries: usize,
    pub retry_timeout: String,
    pub request_timeout: String,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            path_style: None,
            profile: None,
            keep: 10,
            rate: ByteSize::b(0),
            parallel: 16,
            zstd_level: crate::dr::level::ZstdLevel::Fixed(3),
            multipart_threshold: ByteSize::mib(16),
            part_size: ByteSize::mib(8),
            checksum: false,
            retries: 6,
            retry_timeout: "2m".into(),
            request_timeout: "60s".into(),
        }
    }
}

/// `[mount]`: the FUSE filesystem at /ckpt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// Hand regular files to the kernel (FUSE passthrough) where it allows.
    pub passthrough: bool,
    /// Threads answering FUSE requests (1–64).
    pub threads: usize,
    /// Commit a job's sets once all their files have been closed for this
    /// long: `{ job = "30s" }`, `"*"` for every job. For applications that
    /// cannot call `ckptfs commit`. Off unless set.
    pub idle_commit: BTreeMap<String, String>,
}

impl Default for MountConfig {
    fn default() -> Self {
        Self {
            passthrough: true,
            threads: 4,
            idle_commit: BTreeMap::new(),
        }
    }
}

/// `[store]`: how sets are checksummed and kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// crc32c granularity: a power of two from 4 KiB to 1 GiB.
    pub chunk_size: ByteSize,
    /// Complete sets kept per job in the cache; 0 keeps all. Unset: 3, or
    /// 2 when a lower tier holds the older ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<usize>,
}

/// `[io]`: the I/O engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoConfig {
    /// `auto` (io_uring if the kernel allows it), `uring` or `fallback`.
    pub engine: EngineKind,
    /// I/Os in flight per file on the io_uring path (1–256).
    pub queue_depth: u32,
    /// Size of each registered buffer: a multiple of 4 KiB up to 64 MiB.
    pub buffer_size: ByteSize,
    /// Use O_DIRECT where size and alignment allow.
    pub direct: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cache: PathBuf::from(DEFAULT_CACHE),
            store: StoreConfig::default(),
            io: IoConfig::default(),
            mount: MountConfig::default(),
            drain: DrainConfig::default(),
            pfs: PfsConfig::default(),
            dr: DrConfig::default(),
            s3: S3Config::default(),
            criu: CriuConfig::default(),
            api: ApiConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        let d = StoreOptions::default();
        Self {
            chunk_size: ByteSize::b(d.chunk_size),
            keep: None,
        }
    }
}

impl Default for IoConfig {
    fn default() -> Self {
        let d = IoOptions::default();
        Self {
            engine: d.kind,
            queue_depth: d.queue_depth,
            buffer_size: ByteSize::b(d.buffer_size as u64),
            direct: d.direct,
        }
    }
}

/// Values given as flags; `None` leaves the file's (or default) value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub cache: Option<PathBuf>,
    pub chunk_size: Option<ByteSize>,
    pub keep: Option<usize>,
    pub io_engine: Option<EngineKind>,
    pub io_queue_depth: Option<u32>,
    pub io_buffer_size: Option<ByteSize>,
    pub io_direct: Option<bool>,
    pub mount_passthrough: Option<bool>,
    pub mount_threads: Option<usize>,
    /// `JOB=DURATION` pairs, added to (or replacing) the file's.
    pub mount_idle_commit: Vec<(String, String)>,
    pub pfs: Option<PathBuf>,
    pub pfs_keep: Option<usize>,
    pub pfs_rate: Option<ByteSize>,
    pub dr: Option<String>,
    pub dr_key: Option<PathBuf>,
    pub dr_keep: Option<usize>,
    pub dr_rate: Option<ByteSize>,
    pub dr_zstd_level: Option<crate::dr::level::ZstdLevel>,
    pub dr_transport: Option<crate::dr::transport::Choice>,
    pub dr_rdma_buffers: Option<u16>,
    pub dr_rdma_buffer_size: Option<ByteSize>,
    pub s3: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_profile: Option<String>,
    pub s3_keep: Option<usize>,
    pub s3_rate: Option<ByteSize>,
    pub s3_parallel: Option<usize>,
    pub s3_zstd_level: Option<crate::dr::level::ZstdLevel>,
    pub s3_multipart_threshold: Option<ByteSize>,
    pub s3_part_size: Option<ByteSize>,
    pub s3_checksum: Option<bool>,
    pub s3_retries: Option<usize>,
    pub s3_retry_timeout: Option<String>,
    pub s3_request_timeout: Option<String>,
    pub drain_jitter: Option<String>,
    pub drain_nice: Option<i32>,
    pub drain_backoff_min: Option<String>,
    pub drain_backoff_max: Option<String>,
    pub drain_high_watermark: Option<u8>,
    pub drain_low_watermark: Option<u8>,
    pub drain_early: Option<bool>,
    pub criu: Option<PathBuf>,
    pub api_mode: Option<ApiMode>,
    pub api_wait_timeout: Option<String>,
    pub api_finalize_timeout: Option<String>,
    pub api_interval: Option<u64>,
    pub api_seconds: Option<u64>,
    pub api_overhead: Option<u8>,
}

/// Where the configuration in force came from, for `status` and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Defaults,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Defaults => f.write_str("built-in defaults"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Config {
    /// Pick the config file (`explicit`, else `$CKPTFS_CONFIG`, else
    /// `/etc/ckptfs.toml` when present) and load it.
    pub fn discover(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        let named = explicit
            .map(Path::to_owned)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        match named {
            Some(p) => Ok((Config::from_file(&p)?, Source::File(p))),
            None if Path::new(SYSTEM_CONFIG).exists() => {
                let p = PathBuf::from(SYSTEM_CONFIG);
                Ok((Config::from_file(&p)?, Source::File(p)))
            }
            None => Ok((Config::default(), Source::Defaults)),
        }
    }

    /// Load and check one file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string()).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and check TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from(origin),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if !cfg.cache.is_absolute() {
            return Err(ConfigError::Value {
                origin: origin.to_owned(),
                key: "cache",
                message: format!("{} is not an absolute path", cfg.cache.display()),
            });
        }
        cfg.check(|key| (origin.to_owned(), key))?;
        Ok(cfg)
    }

    /// Apply flags on top. A bad flag value is an error naming the flag.
    pub fn apply(mut self, o: &Overrides) -> Result<Config, ConfigError> {
        if let Some(c) = &o.cache {
            self.cache = std::path::absolute(c).unwrap_or_else(|_| c.clone());
        }
        if let Some(v) = o.chunk_size {
            self.store.chunk_size = v;
        }
        if let Some(v) = o.keep {
            self.store.keep = Some(v);
        }
        if let Some(v) = o.io_engine {
            self.io.engine = v;
        }
        if let Some(v) = o.io_queue_depth {
            self.io.queue_depth = v;
        }
        if let Some(v) = o.io_buffer_size {
            self.io.buffer_size = v;
        }
        if let Some(v) = o.io_direct {
            self.io.direct = v;
        }
        if let Some(v) = o.mount_passthrough {
            self.mount.passthrough = v;
        }
        if let Some(v) = o.mount_threads {
            self.mount.threads = v;
        }
        for (job, t) in &o.mount_idle_commit {
            self.mount.idle_commit.insert(job.clone(), t.clone());
        }
        if let Some(v) = &o.pfs {
            self.pfs.dir = Some(std::path::absolute(v).unwrap_or_else(|_| v.clone()));
        }
        set(&mut self.pfs.keep, o.pfs_keep);
        set(&mut self.pfs.rate, o.pfs_rate);
        if let Some(v) = &o.dr {
            self.dr.address = Some(v.clone());
        }
        if let Some(v) = &o.dr_key {
            self.dr.key = std::path::absolute(v).unwrap_or_else(|_| v.clone());
        }
        set(&mut self.dr.keep, o.dr_keep);
        set(&mut self.dr.rate, o.dr_rate);
        set(&mut self.dr.zstd_level, o.dr_zstd_level);
        set(&mut self.dr.transport, o.dr_transport);
        set(&mut self.dr.rdma_buffers, o.dr_rdma_buffers);
        set(&mut self.dr.rdma_buffer_size, o.dr_rdma_buffer_size);
        let s3 = &mut self.s3;
        for (slot, v) in [
            (&mut s3.url, &o.s3),
            (&mut s3.endpoint, &o.s3_endpoint),
            (&mut s3.region, &o.s3_region),
            (&mut s3.profile, &o.s3_profile),
        ] {
            if v.is_some() {
                slot.clone_from(v);
            }
        }
        if o.s3_path_style.is_some() {
            s3.path_style = o.s3_path_style;
        }
        set(&mut s3.keep, o.s3_keep);
        set(&mut s3.rate, o.s3_rate);
        set(&mut s3.parallel, o.s3_parallel);
        set(&mut s3.zstd_level, o.s3_zstd_level);
        set(&mut s3.multipart_threshold, o.s3_multipart_threshold);
        set(&mut s3.part_size, o.s3_part_size);
        set(&mut s3.checksum, o.s3_checksum);
        set(&mut s3.retries, o.s3_retries);
        set(&mut s3.retry_timeout, o.s3_retry_timeout.clone());
        set(&mut s3.request_timeout, o.s3_request_timeout.clone());
        set(&mut self.drain.jitter, o.drain_jitter.clone());
        set(&mut self.drain.nice, o.drain_nice);
        set(&mut self.drain.backoff_min, o.drain_backoff_min.clone());
        set(&mut self.drain.backoff_max, o.drain_backoff_max.clone());
        set(&mut self.drain.high_watermark, o.drain_high_watermark);
        set(&mut self.drain.low_watermark, o.drain_low_watermark);
        set(&mut self.drain.early, o.drain_early);
        if let Some(v) = &o.criu {
            self.criu.path = Some(std::path::absolute(v).unwrap_or_else(|_| v.clone()));
        }
        set(&mut self.api.mode, o.api_mode);
        set(&mut self.api.wait_timeout, o.api_wait_timeout.clone());
        set(
            &mut self.api.finalize_timeout,
            o.api_finalize_timeout.clone(),
        );
        set(&mut self.api.interval, o.api_interval);
        set(&mut self.api.seconds, o.api_seconds);
        set(&mut self.api.overhead, o.api_overhead);
        self.check(|key| (format!("--{}", flag_of(key)), key))?;
        Ok(self)
    }

    /// Semantic checks; `origin` maps a key to (where it came from, key).
    fn check(
        &self,
        origin: impl Fn(&'static str) -> (String, &'static str),
    ) -> Result<(), ConfigError> {
        let fail = |key, message: String| {
            let (origin, key) = origin(key);
            Err(ConfigError::Value {
                origin,
                key,
                message,
            })
        };
        let cs = self.store.chunk_size.as_u64();
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return fail(
                "store.chunk_size",
                format!(
                    "{} is not a power of two between {} and {}",
                    self.store.chunk_size,
                    ByteSize::b(MIN_CHUNK_SIZE),
                    ByteSize::b(MAX_CHUNK_SIZE)
                ),
            );
        }
        if !(1..=256).contains(&self.io.queue_depth) {
            return fail(
                "io.queue_depth",
                format!("{} is outside 1..=256", self.io.queue_depth),
            );
        }
        let bs = self.io.buffer_size.as_u64();
        if !bs.is_multiple_of(4096) || !(4096..=64 << 20).contains(&bs) {
            return fail(
                "io.buffer_size",
                format!(
                    "{} is not a multiple of 4 KiB between 4 KiB and 64 MiB",
                    self.io.buffer_size
                ),
            );
        }
        if !(1..=64).contains(&self.mount.threads) {
            return fail(
                "mount.threads",
                format!("{} is outside 1..=64", self.mount.threads),
            );
        }
        for (key, value) in [
            ("drain.jitter", &self.drain.jitter),
            ("drain.backoff_min", &self.drain.backoff_min),
            ("drain.backoff_max", &self.drain.backoff_max),
            ("api.wait_timeout", &self.api.wait_timeout),
            ("api.finalize_timeout", &self.api.finalize_timeout),
            ("s3.retry_timeout", &self.s3.retry_timeout),
            ("s3.request_timeout", &self.s3.request_timeout),
        ] {
            if humantime::parse_duration(value).is_err() {
                return fail(
                    key,
                    format!("{value:?} is not a duration (e.g. \"2s\", \"5m\")"),
                );
            }
        }
        if self.api.overhead > 100 {
            return fail(
                "api.overhead",
                format!("{}% is over 100%", self.api.overhead),
            );
        }
        if !crate::sched::NICE_RANGE.contains(&self.drain.nice) {
            return fail(
                "drain.nice",
                format!("{} is outside 0..=19", self.drain.nice),
            );
        }
        let (hi, lo) = (self.drain.high_watermark, self.drain.low_watermark);
        if hi > 100 || lo >= hi {
            return fail(
                "drain.high_watermark",
                format!("high {hi}% and low {lo}% must satisfy low < high <= 100"),
            );
        }
        if let Some(dir) = &self.pfs.dir {
            if !dir.is_absolute() {
                return fail(
                    "pfs.dir",
                    format!("{} is not an absolute path", dir.display()),
                );
            }
        }
        if let Some(addr) = &self.dr.address {
            if !addr.contains(':') {
                return fail("dr.address", format!("{addr:?} is not HOST:PORT"));
            }
        }
        for (key, level) in [
            ("dr.zstd_level", self.dr.zstd_level),
            ("s3.zstd_level", self.s3.zstd_level),
        ] {
            if !level.is_valid() {
                return fail(
                    key,
                    format!("{level} is not one of {}", crate::dr::level::FIXED_TEXT),
                );
            }
        }
        {
            use crate::dr::rdma::private::{MAX_BUF, MAX_BUFS, MIN_BUF, MIN_BUFS};
            if !(MIN_BUFS..=MAX_BUFS).contains(&self.dr.rdma_buffers) {
                return fail(
                    "dr.rdma_buffers",
                    format!(
                        "{} is outside {MIN_BUFS}..={MAX_BUFS}",
                        self.dr.rdma_buffers
                    ),
                );
            }
            let size = self.dr.rdma_buffer_size.as_u64();
            if !(u64::from(MIN_BUF)..=u64::from(MAX_BUF)).contains(&size) {
                return fail(
                    "dr.rdma_buffer_size",
                    format!(
                        "{} is outside {}..={}",
                        self.dr.rdma_buffer_size,
                        ByteSize::b(MIN_BUF.into()),
                        ByteSize::b(MAX_BUF.into())
                    ),
                );
            }
        }
        if let Some(url) = &self.s3.url {
            if let Err(e) = crate::s3::S3Url::parse(url) {
                return fail("s3.url", e.to_string());
            }
        }
        if let Some(e) = &self.s3.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return fail(
                    "s3.endpoint",
                    format!("{e:?} is not an http:// or https:// address"),
                );
            }
        }
        if !(1..=256).contains(&self.s3.parallel) {
            return fail(
                "s3.parallel",
                format!("{} is outside 1..=256", self.s3.parallel),
            );
        }
        let part = self.s3.part_size.as_u64();
        if !(5 << 20..=5 << 30).contains(&part) {
            return fail(
                "s3.part_size",
                format!(
                    "{} is outside S3's part sizes, 5 MiB to 5 GiB",
                    self.s3.part_size
                ),
            );
        }
        if self.s3.multipart_threshold.as_u64() < part {
            return fail(
                "s3.multipart_threshold",
                format!(
                    "{} is below the part size ({})",
                    self.s3.multipart_threshold, self.s3.part_size
                ),
            );
        }
        for (job, t) in &self.mount.idle_commit {
            if job != "*" && crate::path::JobName::new(job.as_str()).is_err() {
                return fail(
                    "mount.idle_commit",
                    format!("{job:?} is neither a job name nor \"*\""),
                );
            }
            if humantime::parse_duration(t).is_err() {
                return fail(
                    "mount.idle_commit",
                    format!("{job} = {t:?} is not a duration (e.g. \"30s\", \"5m\")"),
                );
            }
        }
        Ok(())
    }

    /// The idle-commit rules, parsed (checked at load).
    pub fn idle_rules(&self) -> BTreeMap<String, std::time::Duration> {
        self.mount
            .idle_commit
            .iter()
            .filter_map(|(j, t)| Some((j.clone(), humantime::parse_duration(t).ok()?)))
            .collect()
    }

    pub fn io_options(&self) -> IoOptions {
        IoOptions {
            kind: self.io.engine,
            queue_depth: self.io.queue_depth,
            buffer_size: self.io.buffer_size.as_u64() as usize,
            direct: self.io.direct,
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            chunk_size: self.store.chunk_size.as_u64(),
            keep: self.cache_keep(),
            required_tiers: self.tier_names(),
        }
    }

    /// Complete sets kept per job in the cache: as configured, else 3, or
    /// 2 when lower tiers hold the older sets anyway.
    pub fn cache_keep(&self) -> usize {
        self.store.keep.unwrap_or(if self.tier_names().is_empty() {
            StoreOptions::default().keep
        } else {
            2
        })
    }

    /// The lower tiers configured, by their journal names.
    pub fn tier_names(&self) -> Vec<String> {
        let mut t = Vec::new();
        if self.pfs.dir.is_some() {
            t.push("pfs".to_owned());
        }
        if self.dr.address.is_some() {
            t.push("dr".to_owned());
        }
        if self.s3.url.is_some() {
            t.push("s3".to_owned());
        }
        t
    }

    /// The configuration as a TOML file (for `ckptfs config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

impl S3Config {
    /// The tier's options: the config, then the AWS environment for what
    /// it leaves out, and credentials from the usual places.
    pub fn options(&self) -> Result<Option<crate::s3::S3Options>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let url = crate::s3::S3Url::parse(url).map_err(|e| e.to_string())?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let creds = crate::s3::creds::Lookup::process()
            .resolve(self.profile.as_deref())
            .map_err(|e| e.to_string())?;
        let mut o = crate::s3::S3Options::new(url, creds);
        o.endpoint = self
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        o.region = self
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        o.path_style = self.path_style.unwrap_or(o.endpoint.is_some());
        o.parallel = self.parallel;
        o.zstd_level = self.zstd_level;
        o.multipart_threshold = self.multipart_threshold.as_u64();
        o.part_size = self.part_size.as_u64();
        o.checksum = self.checksum;
        o.retries = self.retries;
        o.retry_timeout = duration(&self.retry_timeout);
        o.request_timeout = duration(&self.request_timeout);
        Ok(Some(o))
    }
}

/// A duration key, checked at load.
pub fn duration(v: &str) -> std::time::Duration {
    humantime::parse_duration(v).unwrap_or_default()
}

/// The flag that sets `key`: `store.chunk_size` → `chunk-size`,
/// `io.queue_depth` → `io-queue-depth`.
pub fn flag_of(key: &str) -> String {
    let k = key
        .trim_start_matches("store.")
        .trim_start_matches("mount.");
    match k {
        "pfs.dir" => "pfs".into(),
        "dr.address" => "dr".into(),
        "s3.url" => "s3".into(),
        "criu.path" => "criu".into(),
        _ => k.replace(['.', '_'], "-"),
    }
}

// Keep the default in one place: the chunk module's constant.
const _: () = assert!(DEFAULT_CHUNK_SIZE == 1 << 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.cache, PathBuf::from("/var/tmp/ckptfs"));
        assert_eq!(c.store.chunk_size.as_u64(), 1 << 20);
        assert_eq!(c.cache_keep(), 3);
        let with_pfs = Config::from_toml("[pfs]\ndir = \"/pfs\"\n", "t.toml").unwrap();
        assert_eq!(with_pfs.cache_keep(), 2, "older sets are on the PFS");
        assert_eq!(c.io.engine, EngineKind::Auto);
    }

    #[test]
    fn full_file() {
        let c = Config::from_toml(
            r#"
cache = "/scratch/ckpt"
[store]
chunk_size = "4 MiB"
keep = 5
[io]
engine = "fallback"
queue_depth = 16
buffer_size = 2097152
direct = false
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.cache, PathBuf::from("/scratch/ckpt"));
        assert_eq!(c.store.chunk_size.as_u64(), 4 << 20);
        assert_eq!(c.store.keep, Some(5));
        assert_eq!(c.io.engine, EngineKind::Fallback);
        assert_eq!(c.io.queue_depth, 16);
        assert_eq!(c.io.buffer_size.as_u64(), 2 << 20);
        assert!(!c.io.direct);
        // Round trip through the printed form.
        assert_eq!(Config::from_toml(&c.to_toml(), "again").unwrap(), c);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = Config::from_toml("[store]\nkepe = 3\n", "/etc/x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/x.toml") && e.contains("kepe"), "{e}");
        let e = Config::from_toml("bogus = 1\n", "/etc/x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_file() {
        let cases = [
            ("[store]\nchunk_size = \"3 KiB\"\n", "store.chunk_size"),
            ("[store]\nchunk_size = \"2 GiB\"\n", "store.chunk_size"),
            ("[io]\nqueue_depth = 0\n", "io.queue_depth"),
            ("[io]\nbuffer_size = 1000\n", "io.buffer_size"),
            ("cache = \"relative/dir\"\n", "cache"),
        ];
        for (text, key) in cases {
            let e = Config::from_toml(text, "/etc/x.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("/etc/x.toml") && e.contains(key), "{text}: {e}");
        }
        for text in [
            "[io]\nengine = \"turbo\"\n",
            "[store]\nkeep = -1\n",
            "[io]\ndirect = \"yes\"\n",
            "cache = [",
        ] {
            let e = Config::from_toml(text, "/etc/x.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("/etc/x.toml"), "{text}: {e}");
        }
    }

    #[test]
    fn s3_zstd_level_is_a_level_or_auto() {
        use crate::dr::level::ZstdLevel;
        let c = Config::from_toml("[s3]\nzstd_level = \"auto\"\n", "/etc/x.toml").unwrap();
        assert_eq!(c.s3.zstd_level, ZstdLevel::Auto);
        let c = Config::from_toml("[s3]\nzstd_level = -3\n", "/etc/x.toml").unwrap();
        assert_eq!(c.s3.zstd_level, ZstdLevel::Fixed(-3));
        assert_eq!(Config::default().s3.zstd_level, ZstdLevel::Fixed(3));
        for text in ["[s3]\nzstd_level = 0\n", "[s3]\nzstd_level = 20\n"] {
            let e = Config::from_toml(text, "/etc/x.toml")
                .unwrap_err()
                .to_string();
            // Refused while parsing: the error shows the line and why.
            assert!(
                e.contains("/etc/x.toml") && e.contains("zstd_level") && e.contains("not one of"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn flags_override_and_are_checked() {
        let c = Config::default()
            .apply(&Overrides {
                keep: Some(7),
                io_engine: Some(EngineKind::Uring),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.store.keep, Some(7));
        assert_eq!(c.io.engine, EngineKind::Uring);
        let e = Config::default()
            .apply(&Overrides {
                chunk_size: Some(ByteSize::b(5000)),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--chunk-size"), "{e}");
        assert_eq!(flag_of("io.queue_depth"), "io-queue-depth");
    }

    #[test]
    fn mount_table() {
        let c = Config::from_toml(
            "[mount]\npassthrough = false\nthreads = 2\n[mount.idle_commit]\nlegacy = \"30s\"\n\"*\" = \"5m\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(!c.mount.passthrough);
        let rules = c.idle_rules();
        assert_eq!(rules["legacy"], std::time::Duration::from_secs(30));
        assert_eq!(rules["*"], std::time::Duration::from_secs(300));
        let e = Config::from_toml("[mount.idle_commit]\nj = \"soon\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount.idle_commit") && e.contains("soon"), "{e}");
        let e = Config::from_toml("[mount]\nthreads = 0\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount.threads"), "{e}");
    }

    #[test]
    fn api_table() {
        let c = Config::default();
        assert_eq!(c.api.mode, ApiMode::Auto);
        assert_eq!(duration(&c.api.wait_timeout).as_secs(), 600);
        assert_eq!(duration(&c.api.finalize_timeout).as_secs(), 300);
        assert_eq!((c.api.interval, c.api.seconds, c.api.overhead), (0, 0, 10));
        let c = Config::from_toml(
            "[api]\nmode = \"embedded\"\nwait_timeout = \"3s\"\ninterval = 5\nseconds = 60\noverhead = 0\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.api.mode, ApiMode::Embedded);
        assert_eq!((c.api.interval, c.api.seconds, c.api.overhead), (5, 60, 0));
        assert_eq!(Config::from_toml(&c.to_toml(), "again").unwrap(), c);
        for (text, key) in [
            ("[api]\nmode = \"daemon\"\n", "mode"),
            ("[api]\nwait_timeout = \"soon\"\n", "api.wait_timeout"),
            ("[api]\nfinalize_timeout = \"x\"\n", "api.finalize_timeout"),
            ("[api]\noverhead = 101\n", "api.overhead"),
            ("[api]\nintervall = 1\n", "intervall"),
        ] {
            let e = Config::from_toml(text, "/etc/x.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("/etc/x.toml") && e.contains(key), "{text}: {e}");
        }
        let e = Config::default()
            .apply(&Overrides {
                api_wait_timeout: Some("never".into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--api-wait-timeout"), "{e}");
        assert_eq!("Mounted".parse::<ApiMode>().unwrap(), ApiMode::Mounted);
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let e = Config::discover(Some(Path::new("/nonexistent/ckptfs.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ckptfs.toml"), "{e}");
    }
}
