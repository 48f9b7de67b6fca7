//! Command-line definition: the one source of `--help`.

use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use libckpt::config::Overrides;
use libckpt::io::EngineKind;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  error (I/O, configuration, a set that cannot be written or read)
  2  usage error (unknown flag, bad argument)
  3  not found (no such job or set, or no complete set to offer)
  4  verification failed (a missing, truncated or corrupt file in a set)

Configuration: --config FILE, else $CKPTFS_CONFIG, else /etc/ckptfs.toml if it
exists, else built-in defaults (cache /var/tmp/ckptfs). Every key of the file
is also a flag below; flags win.";

/// ckptfs: a burst-buffer checkpoint store.
///
/// Checkpoints are written to a node-local cache (<cache>/<job>/<set>/…) at
/// local-disk speed; a set becomes complete when it is committed, and only
/// complete sets are ever offered for restart.
#[derive(Debug, Parser)]
#[command(name = "ckptfs", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "CKPTFS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Cache directory (tier 0) [config: cache; default /var/tmp/ckptfs].
    #[arg(long, global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// crc32c chunk size for new files, a power of two from 4 KiB to 1 GiB
    /// [config: store.chunk_size; default 1 MiB].
    #[arg(long, global = true, value_name = "SIZE")]
    pub chunk_size: Option<ByteSize>,

    /// Complete sets kept per job after each commit; 0 keeps all
    /// [config: store.keep; default 3, or 2 with a lower tier].
    #[arg(long, global = true, value_name = "N")]
    pub keep: Option<usize>,

    /// I/O engine: auto (io_uring when the kernel allows it), uring, or
    /// fallback (pread/pwrite) [config: io.engine; default auto].
    #[arg(long, global = true, value_name = "ENGINE")]
    pub io_engine: Option<EngineKind>,

    /// I/Os in flight per file on the io_uring path, 1–256
    /// [config: io.queue_depth; default 8].
    #[arg(long, global = true, value_name = "N")]
    pub io_queue_depth: Option<u32>,

    /// Size of each I/O buffer, a multiple of 4 KiB up to 64 MiB
    /// [config: io.buffer_size; default 1 MiB].
    #[arg(long, global = true, value_name = "SIZE")]
    pub io_buffer_size: Option<ByteSize>,

    /// Use O_DIRECT where size and alignment allow
    /// [config: io.direct; default true].
    #[arg(long, global = true, value_name = "BOOL")]
    pub io_direct: Option<bool>,

    /// Parallel-filesystem tier: a directory (Lustre, GPFS, BeeGFS) complete
    /// sets drain to [config: pfs.dir; default none].
    #[arg(long, global = true, value_name = "DIR")]
    pub pfs: Option<PathBuf>,

    /// Complete sets kept per job on the PFS tier [config: pfs.keep; default 5].
    #[arg(long, global = true, value_name = "N")]
    pub pfs_keep: Option<usize>,

    /// Drain rate limit to the PFS, bytes/s, 0 unlimited [config: pfs.rate].
    #[arg(long, global = true, value_name = "SIZE")]
    pub pfs_rate: Option<ByteSize>,

    /// Disaster-recovery tier: HOST:PORT of a `ckptfs serve`
    /// [config: dr.address; default none].
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub dr: Option<String>,

    /// Shared key file for the DR tier, mode 0600 [config: dr.key;
    /// default /etc/ckptfs/dr.key].
    #[arg(long, global = true, value_name = "FILE")]
    pub dr_key: Option<PathBuf>,

    /// Complete sets kept per job on the DR tier [config: dr.keep; default 10].
    #[arg(long, global = true, value_name = "N")]
    pub dr_keep: Option<usize>,

    /// Drain rate limit to the DR site, bytes/s, 0 unlimited [config: dr.rate].
    #[arg(long, global = true, value_name = "SIZE")]
    pub dr_rate: Option<ByteSize>,

    /// zstd level for the DR tier, 1–19, -7 to -1 (zstd's fast levels),
    /// or `auto`: -5 to 9, lower while the link waits for the compressor,
    /// higher while the link is more than twice slower [config:
    /// dr.zstd_level; default auto].
    #[arg(long, global = true, value_name = "N|auto", allow_hyphen_values = true)]
    pub dr_zstd_level: Option<libckpt::dr::level::ZstdLevel>,

    /// Transport to the DR site, and for `serve` the ones it listens on:
    /// auto (RDMA when a verbs device reaches the peer and it listens
    /// over RDMA, else TCP; `serve` listens on both), tcp, or rdma. RDMA
    /// needs a build with the `rdma` feature [config: dr.transport;
    /// default auto].
    #[arg(long, global = true, value_name = "auto|tcp|rdma")]
    pub transport: Option<libckpt::dr::transport::Choice>,

    /// Registered RDMA buffers per connection, each way
    /// [config: dr.rdma_buffers; default 32].
    #[arg(long, global = true, value_name = "N")]
    pub rdma_buffers: Option<u16>,

    /// Size of each registered RDMA buffer, 4 KiB–16 MiB
    /// [config: dr.rdma_buffer_size; default 256 KiB].
    #[arg(long, global = true, value_name = "SIZE")]
    pub rdma_buffer_size: Option<ByteSize>,

    /// S3 tier: s3://BUCKET/PREFIX of any S3-compatible store; credentials
    /// come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the shared
    /// files (~/.aws/credentials), never from a flag
    /// [config: s3.url; default none].
    #[arg(long, global = true, value_name = "s3://BUCKET/PREFIX")]
    pub s3: Option<String>,

    /// http(s)://HOST:PORT of the S3 server [config: s3.endpoint; default
    /// $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS].
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region [config: s3.region; default $AWS_REGION, else us-east-1].
    #[arg(long, global = true, value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Path-style S3 requests [config: s3.path_style; default true with
    /// --s3-endpoint, false for AWS].
    #[arg(long, global = true, value_name = "BOOL")]
    pub s3_path_style: Option<bool>,

    /// Credentials profile in ~/.aws/credentials or ~/.aws/config
    /// [config: s3.profile; default $AWS_PROFILE, else default].
    #[arg(long, global = true, value_name = "NAME")]
    pub s3_profile: Option<String>,

    /// Complete sets kept per job on S3 [config: s3.keep; default 10].
    #[arg(long, global = true, value_name = "N")]
    pub s3_keep: Option<usize>,

    /// Drain rate limit to S3, bytes/s, 0 unlimited [config: s3.rate].
    #[arg(long, global = true, value_name = "SIZE")]
    pub s3_rate: Option<ByteSize>,

    /// S3 requests in flight at once, 1–256 [config: s3.parallel; default 16].
    #[arg(long, global = true, value_name = "N")]
    pub s3_parallel: Option<usize>,

    /// zstd level for S3 chunk objects, 1–19, -7 to -1 (zstd's fast
    /// levels), or `auto`: -5 to 9, lower while compressing takes over a
    /// quarter of the uploads' time, higher while it takes under an eighth
    /// [config: s3.zstd_level; default 3].
    #[arg(long, global = true, value_name = "N|auto", allow_hyphen_values = true)]
    pub s3_zstd_level: Option<libckpt::dr::level::ZstdLevel>,

    /// Objects above this size are uploaded in parts
    /// [config: s3.multipart_threshold; default 16 MiB].
    #[arg(long, global = true, value_name = "SIZE")]
    pub s3_multipart_threshold: Option<ByteSize>,

    /// Part size of multipart uploads, 5 MiB–5 GiB
    /// [config: s3.part_size; default 8 MiB].
    #[arg(long, global = true, value_name = "SIZE")]
    pub s3_part_size: Option<ByteSize>,

    /// Send a SHA-256 checksum with each upload for the server to check
    /// [config: s3.checksum; default false].
    #[arg(long, global = true, value_name = "BOOL")]
    pub s3_checksum: Option<bool>,

    /// Retries of one S3 request before the drain backs off
    /// [config: s3.retries; default 6].
    #[arg(long, global = true, value_name = "N")]
    pub s3_retries: Option<usize>,

    /// Longest time one S3 request is retried [config: s3.retry_timeout; default 2m].
    #[arg(long, global = true, value_name = "DURATION")]
    pub s3_retry_timeout: Option<String>,

    /// Deadline of one S3 request [config: s3.request_timeout; default 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub s3_request_timeout: Option<String>,

    /// Random delay before a set starts draining [config: drain.jitter; default 2s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub drain_jitter: Option<String>,

    /// Nice value of the drain's threads, 0–19 (0: the process's own
    /// priority) [config: drain.nice; default 10].
    #[arg(long, global = true, value_name = "N")]
    pub drain_nice: Option<i32>,

    /// First retry delay after a failed drain, doubling up to
    /// --drain-backoff-max [config: drain.backoff_min; default 1s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub drain_backoff_min: Option<String>,

    /// Longest retry delay [config: drain.backoff_max; default 5m].
    #[arg(long, global = true, value_name = "DURATION")]
    pub drain_backoff_max: Option<String>,

    /// Evict drained sets above this cache fill, percent
    /// [config: drain.high_watermark; default 90].
    #[arg(long, global = true, value_name = "PERCENT")]
    pub drain_high_watermark: Option<u8>,

    /// …down to this fill [config: drain.low_watermark; default 75].
    #[arg(long, global = true, value_name = "PERCENT")]
    pub drain_low_watermark: Option<u8>,

    /// Drain sealed files of a mount's sets before their commit
    /// [config: drain.early; default false].
    #[arg(long, global = true, value_name = "BOOL")]
    pub drain_early: Option<bool>,

    /// How the C library reaches the cache: auto, mounted or embedded
    /// [config: api.mode; default auto].
    #[arg(long, global = true, value_name = "MODE")]
    pub api_mode: Option<libckpt::config::ApiMode>,

    /// Longest ckpt_checkpoint_wait() blocks [config: api.wait_timeout; default 10m].
    #[arg(long, global = true, value_name = "DURATION")]
    pub api_wait_timeout: Option<String>,

    /// Longest ckpt_finalize() waits for the drain, embedded mode
    /// [config: api.finalize_timeout; default 5m].
    #[arg(long, global = true, value_name = "DURATION")]
    pub api_finalize_timeout: Option<String>,

    /// ckpt_need_checkpoint() says yes every N calls, 0 off
    /// [config: api.interval; default 0].
    #[arg(long, global = true, value_name = "N")]
    pub api_interval: Option<u64>,

    /// …or after this many seconds since the last checkpoint, 0 off
    /// [config: api.seconds; default 0].
    #[arg(long, global = true, value_name = "N")]
    pub api_seconds: Option<u64>,

    /// …or when the last checkpoint cost at most this percent of the time
    /// since, 0 off [config: api.overhead; default 10].
    #[arg(long, global = true, value_name = "PERCENT")]
    pub api_overhead: Option<u8>,

    /// The criu executable for ckptfs-dump and ckptfs-restore, and no other
    /// [config: criu.path; default: CRIU >= 4 on the PATH, else
    /// /opt/ckptfs/criu/bin/criu].
    #[arg(long, global = true, value_name = "FILE")]
    pub criu: Option<PathBuf>,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            cache: self.cache.clone(),
            chunk_size: self.chunk_size,
            keep: self.keep,
            io_engine: self.io_engine,
            io_queue_depth: self.io_queue_depth,
            io_buffer_size: self.io_buffer_size,
            io_direct: self.io_direct,
            pfs: self.pfs.clone(),
            pfs_keep: self.pfs_keep,
            pfs_rate: self.pfs_rate,
            dr: self.dr.clone(),
            dr_key: self.dr_key.clone(),
            dr_keep: self.dr_keep,
            dr_rate: self.dr_rate,
            dr_zstd_level: self.dr_zstd_level,
            dr_transport: self.transport,
            dr_rdma_buffers: self.rdma_buffers,
            dr_rdma_buffer_size: self.rdma_buffer_size,
            s3: self.s3.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            s3_profile: self.s3_profile.clone(),
            s3_keep: self.s3_keep,
            s3_rate: self.s3_rate,
            s3_parallel: self.s3_parallel,
            s3_zstd_level: self.s3_zstd_level,
            s3_multipart_threshold: self.s3_multipart_threshold,
            s3_part_size: self.s3_part_size,
            s3_checksum: self.s3_checksum,
            s3_retries: self.s3_retries,
            s3_retry_timeout: self.s3_retry_timeout.clone(),
            s3_request_timeout: self.s3_request_timeout.clone(),
            drain_jitter: self.drain_jitter.clone(),
            drain_nice: self.drain_nice,
            drain_backoff_min: self.drain_backoff_min.clone(),
            drain_backoff_max: self.drain_backoff_max.clone(),
            drain_high_watermark: self.drain_high_watermark,
            drain_low_watermark: self.drain_low_watermark,
            drain_early: self.drain_early,
            api_mode: self.api_mode,
            api_wait_timeout: self.api_wait_timeout.clone(),
            api_finalize_timeout: self.api_finalize_timeout.clone(),
            api_interval: self.api_interval,
            api_seconds: self.api_seconds,
            api_overhead: self.api_overhead,
            criu: self.criu.clone(),
            ..Overrides::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List jobs, or the sets of one job with their state.
    ///
    /// States: complete (committed, offered for restart), writing (a live
    /// writer holds it), abandoned (its writer ended without committing;
    /// retention removes it), uncommitted (files copied in by hand, waiting
    /// for `ckptfs commit`), damaged (unreadable manifest; never offered).
    Ls {
        /// The job whose sets to list; all jobs when omitted.
        job: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Drain complete sets to the lower tiers (--pfs, --dr, --s3), or show what is
    /// pending. With a mount's daemon serving the cache, it drains by itself:
    /// --wait then only waits. Without one, this drains in the foreground.
    Drain {
        /// Only this job.
        job: Option<String>,
        /// Block until every complete set is on every tier, with progress;
        /// exit 1 if a set failed for good (e.g. a corrupt cache copy).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 1).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a set (the newest complete one by default) into DIR, from
    /// the cache or a lower tier, verifying every chunk. A corrupt copy is
    /// reported and the next tier is tried.
    Restore {
        job: String,
        set: Option<String>,
        /// Destination directory (created; must be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Only these sources, tried in this order: cache, pfs, dr or s3, or
        /// several separated by commas (e.g. s3,pfs).
        #[arg(long, value_name = "SOURCE")]
        from: Option<String>,
        /// Make the restored files durable (fdatasync each, with direct
        /// I/O) before returning. By default they are left to the page
        /// cache, as `cp` does: a restored copy is for a restart now, and
        /// the tier it came from keeps the durable one.
        #[arg(long)]
        sync: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the newest complete set of a job on the cache or any tier
    /// (exit 3 when there is none).
    Latest {
        job: String,
        /// Print the set's directory instead of its name.
        #[arg(long, conflicts_with = "json")]
        path: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Re-read a complete set and check every chunk's crc32c.
    ///
    /// Exits 4 and names each bad file and chunk when anything is missing,
    /// truncated or corrupt.
    Verify {
        job: String,
        /// The set to verify; the newest complete one when omitted.
        set: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Commit a set: a directory of a ckptfs mount (MOUNTPOINT/<job>/<set>,
    /// committed by its daemon once every file is closed and sealed), or a
    /// set directory of the cache (<cache>/<job>/<set>) written by other
    /// means (every file is checksummed and synced). The manifest is
    /// written last; then the set is complete.
    Commit {
        dir: PathBuf,
        /// Commit even if the set's writer ended without committing it.
        #[arg(long)]
        force: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Copy files and directories into a new set through the I/O engine and
    /// commit it.
    ///
    /// A file lands under its own name; a directory keeps its name and
    /// tree. Set names default to the current UTC time (sortable).
    Put {
        job: String,
        /// Files or directories to copy.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Name of the new set.
        #[arg(long)]
        set: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete one set (any state but writing).
    Rm { job: String, set: String },
    /// Apply retention: keep the newest N complete sets per job (--keep or
    /// store.keep) and remove abandoned sets.
    Prune {
        /// Only this job; every job when omitted.
        job: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Mount the checkpoint filesystem at MOUNTPOINT (e.g. /ckpt).
    ///
    /// Applications write checkpoints as plain files under
    /// MOUNTPOINT/<job>/<set>/; the bytes land in the cache at local-disk
    /// speed. `mkdir MOUNTPOINT/JOB/SET` starts a set; `ckptfs commit
    /// MOUNTPOINT/JOB/SET` (or `setfattr -n user.ckptfs.commit -v 1 DIR`)
    /// makes it complete. Runs in the background and returns once the mount
    /// is live, unless --foreground. A stale mount left by a killed daemon
    /// is recovered.
    Mount {
        mountpoint: PathBuf,
        /// Stay in the foreground, logging to stderr (for systemd and tests).
        #[arg(long)]
        foreground: bool,
        /// Serve reads and writes through the daemon instead of kernel
        /// passthrough [config: mount.passthrough = false].
        #[arg(long)]
        no_passthrough: bool,
        /// Threads answering FUSE requests [config: mount.threads; default 4].
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Commit JOB's sets once all their files have been closed for
        /// DURATION (JOB may be "*"); repeatable [config: mount.idle_commit].
        #[arg(long, value_name = "JOB=DURATION", value_parser = parse_idle)]
        idle_commit: Vec<(String, String)>,
    },
    /// Unmount a ckptfs mount. Refused while files are open for writing
    /// (their sets would be left incomplete) unless --force.
    Umount {
        mountpoint: PathBuf,
        /// Unmount even with files open: their sets become abandoned.
        #[arg(long)]
        force: bool,
    },
    /// Show the cache, the I/O path in use, and the sets per job; with
    /// MOUNTPOINT, the mount's daemon: data path (passthrough or fallback),
    /// live sets, open files, version and uptime.
    Status {
        /// A ckptfs mount point to ask.
        mountpoint: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration in force, as a TOML file.
    Config,
    /// Run a disaster-recovery receiver: the other end of --dr HOST:PORT.
    ///
    /// Sets arrive as content-addressed chunks (BLAKE3, zstd-compressed on
    /// the wire and at rest), so a chunk already held is never sent again;
    /// a set is complete here once its record is written, last. Peers
    /// prove knowledge of the shared key (mutual HMAC challenge).
    Serve(crate::serve::ServeArgs),
}

fn parse_idle(s: &str) -> Result<(String, String), String> {
    let (job, t) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not JOB=DURATION"))?;
    humantime::parse_duration(t).map_err(|e| format!("{t:?}: {e}"))?;
    Ok((job.to_owned(), t.to_owned()))
}
