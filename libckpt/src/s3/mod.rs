//! The S3 tier: complete sets in any S3-compatible object store (AWS S3,
//! SeaweedFS, MinIO, Ceph RGW…), content-addressed and deduplicated.
//!
//! A set's files travel as pieces (one per manifest chunk, cut at
//! [`MAX_PIECE`](crate::dr::piece::MAX_PIECE)), each stored once per
//! bucket prefix as a blob named by the BLAKE3 of its bytes, in the DR
//! tier's [`blob`](crate::dr::blob) format (zstd where it pays, raw where
//! it does not). The set record ([`SetRecord`](crate::dr::record::SetRecord):
//! manifest plus piece hashes) is written last, so a set is complete on S3
//! exactly when its record object exists. See [`layout`] for the keys.
//!
//! Requests are signed and retried (throttling, 5xx, timeouts, with
//! exponential backoff) by `object_store`; this module decides what to
//! send. It runs on a private tokio runtime and offers the drain's
//! blocking [`Tier`] interface.
//!
//! | module | what |
//! |---|---|
//! | [`url`] | `s3://BUCKET/PREFIX` |
//! | [`creds`] | credentials from the environment and the shared files |
//! | [`layout`] | object keys |
//! | [`marker`] | in-flight markers that protect a push from a sweep |
//! | `push`, `fetch`, `sweep` | sending, restoring, retention |

pub mod creds;
mod fetch;
pub mod layout;
pub mod marker;
mod push;
mod sweep;
pub mod url;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::dr::level::{Remembered, ZstdLevel};
use crate::dr::record::{RecordError, SetRecord};
use crate::io::IoEngine;
use crate::manifest::{Manifest, ManifestError};
use crate::path::{JobName, SetName};
use crate::rate::RateLimiter;
use crate::tier::{PushReport, Resume, Source, Tier, TierError, TierSet};

pub use creds::Credentials;
pub use layout::Layout;
pub use url::S3Url;

/// The tier's name in the config, journal and status.
pub const TIER: &str = "s3";

/// How to reach the bucket and how hard to push.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub url: S3Url,
    /// `http(s)://host:port` of an S3-compatible server; `None` is AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as most on-premises
    /// stores want, rather than virtual-hosted (`bucket.endpoint/key`).
    pub path_style: bool,
    pub credentials: Credentials,
    /// Requests in flight at once.
    pub parallel: usize,
    pub zstd_level: ZstdLevel,
    /// Objects larger than this go up in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Send a SHA-256 checksum with every upload for the server to check.
    pub checksum: bool,
    pub retries: usize,
    /// Give up retrying one request after this long.
    pub retry_timeout: Duration,
    /// One request's deadline.
    pub request_timeout: Duration,
}

impl S3Options {
    /// Defaults for everything but where and who.
    pub fn new(url: S3Url, credentials: Credentials) -> S3Options {
        S3Options {
            url,
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            credentials,
            parallel: 16,
            zstd_level: ZstdLevel::Fixed(3),
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            checksum: false,
            retries: 6,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A bucket prefix holding complete sets.
pub struct S3Tier {
    opts: S3Options,
    store: Arc<AmazonS3>,
    layout: Layout,
    rt: tokio::runtime::Runtime,
    /// The zstd setting and, under `auto`, where the last push ended.
    level: Remembered,
}

impl std::fmt::Debug for S3Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Tier")
            .field("url", &self.opts.url.to_string())
            .field("endpoint", &self.opts.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Tier {
    pub fn new(opts: S3Options) -> Result<S3Tier, TierError> {
        let refused = |message: String| TierError::Refused {
            tier: TIER.into(),
            message: format!("{}: {message}", opts.url),
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&opts.url.bucket)
            .with_region(&opts.region)
            .with_access_key_id(&opts.credentials.key_id)
            .with_secret_access_key(&opts.credentials.secret)
            .with_virtual_hosted_style_request(!opts.path_style)
            .with_retry(RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: opts.retries,
                retry_timeout: opts.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(opts.request_timeout)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_pool_max_idle_per_host(opts.parallel.max(1) * 2)
                    .with_allow_http(true),
            );
        if let Some(t) = &opts.credentials.token {
            b = b.with_token(t);
        }
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e);
        }
        if opts.checksum {
            b = b.with_checksum_algorithm(Checksum::SHA256);
        }
        let store = b.build().map_err(|e| refused(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ckptfs-s3")
            .enable_all()
            .build()
            .map_err(|e| refused(format!("starting the S3 client's runtime: {e}")))?;
        let level = Remembered::new(opts.zstd_level);
        Ok(S3Tier {
            layout: Layout::new(&opts.url.prefix),
            opts,
            store: Arc::new(store),
            rt,
            level,
        })
    }

    /// The setting, and under `auto` the level the last push ended at.
    pub fn zstd_level(&self) -> (ZstdLevel, Option<i32>) {
        self.level.get()
    }

    pub fn url(&self) -> &S3Url {
        &self.opts.url
    }

    pub fn options(&self) -> &S3Options {
        &self.opts
    }

    /// `s3://bucket/key`, for messages.
    fn at(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.opts.url.bucket)
    }

    /// A failed request as a tier error naming bucket and key. Everything
    /// the server or the link causes is worth retrying later (a missing
    /// bucket may be created, a key fixed, a server restarted).
    fn error(&self, key: &Key, e: object_store::Error) -> TierError {
        let text = e.to_string();
        let hint = if text.contains("NoSuchBucket") {
            format!(" (bucket {:?} does not exist)", self.opts.url.bucket)
        } else if text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
            || text.contains("403 Forbidden")
        {
            format!(
                " (the credentials from {} were refused)",
                self.opts.credentials.source
            )
        } else {
            String::new()
        };
        TierError::Unavailable {
            tier: TIER.into(),
            message: format!("{}: {text}{hint}", self.at(key)),
        }
    }

    /// An object's bytes, `None` when it does not exist.
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, TierError> {
        match self.store.get(key).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(e) => Err(self.error(key, e)),
            },
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Write an object whole: one PUT, or parts above the threshold.
    async fn put(&self, key: &Key, bytes: Vec<u8>) -> Result<(), TierError> {
        if bytes.len() as u64 <= self.opts.multipart_threshold {
            return self
                .store
                .put(key, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.error(key, e));
        }
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| self.error(key, e))?;
        let mut w =
            object_store::WriteMultipart::new_with_chunk_size(upload, self.opts.part_size as usize);
        w.put(bytes.into());
        // On failure the writer aborts the upload, so no parts linger.
        w.finish().await.map(|_| ()).map_err(|e| self.error(key, e))
    }

    async fn exists(&self, key: &Key) -> Result<bool, TierError> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn delete_key(&self, key: &Key) -> Result<(), TierError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Every object under `prefix`.
    async fn list(&self, prefix: &Key) -> Result<Vec<object_store::ObjectMeta>, TierError> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, e))
    }

    /// The record of a set, checked; `None` when the set is not on S3.
    async fn record(&self, job: &JobName, set: &SetName) -> Result<Option<SetRecord>, TierError> {
        let key = self.layout.set(job, set);
        let Some(bytes) = self.get(&key).await? else {
            return Ok(None);
        };
        let bad = |source| TierError::Manifest {
            tier: TIER.into(),
            job: job.clone(),
            set: set.clone(),
            source,
        };
        let at = self.at(&key);
        let record = SetRecord::parse(&bytes).map_err(|e| match e {
            RecordError::Manifest(ManifestError::FutureVersion { found, supported }) => {
                bad(ManifestError::Invalid {
                    message: format!(
                        "{at}: manifest format version {found} is newer than this ckptfs \
                         understands (up to {supported}); read it with a newer ckptfs"
                    ),
                })
            }
            other => bad(ManifestError::Invalid {
                message: format!("{at}: {other}"),
            }),
        })?;
        let m = &record.manifest;
        if &m.job != job || &m.set != set {
            return Err(bad(ManifestError::Invalid {
                message: format!("{at}: it describes {}/{}", m.job, m.set),
            }));
        }
        Ok(Some(record))
    }

    /// Names of the sets of `job` with a record object, unchecked.
    async fn set_names(&self, job: &JobName) -> Result<Vec<SetName>, TierError> {
        Ok(self
            .list(&self.layout.sets_of(job))
            .await?
            .iter()
            .filter_map(|o| self.layout.set_of(&o.location))
            .filter(|(j, _)| j == job)
            .map(|(_, s)| s)
            .collect())
    }
}

impl Tier for S3Tier {
    fn name(&self) -> &str {
        TIER
    }

    fn location(&self) -> String {
        match &self.opts.endpoint {
            Some(e) => format!("{} at {e}", self.opts.url),
            None => self.opts.url.to_string(),
        }
    }

    fn compression(&self) -> Option<String> {
        Some(self.level.describe())
    }

    fn jobs(&self) -> Result<Vec<JobName>, TierError> {
        let base = self.layout.all_sets();
        let r = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&base)))
            .map_err(|e| self.error(&base, e))?;
        let mut jobs: Vec<JobName> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|n| JobName::new(n).ok()))
            .collect();
        jobs.sort();
        jobs.dedup();
        Ok(jobs)
    }

    fn sets(&self, job: &JobName) -> Result<Vec<TierSet>, TierError> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            for set in self.set_names(job).await? {
                match self.record(job, &set).await {
                    Ok(Some(r)) => out.push(TierSet::of(&r.manifest)),
                    Ok(None) => {}
                    // One damaged record must not hide the job's other sets.
                    Err(e @ TierError::Manifest { .. }) => {
                        tracing::warn!(error = %e, "skipping an unreadable set record on S3")
                    }
                    Err(e) => return Err(e),
                }
            }
            out.sort_by(|a, b| (a.created, &a.set).cmp(&(b.created, &b.set)));
            Ok(out)
        })
    }

    fn manifest(&self, job: &JobName, set: &SetName) -> Result<Manifest, TierError> {
        self.rt
            .block_on(self.record(job, set))?
            .map(|r| r.manifest)
            .ok_or_else(|| TierError::NotFound {
                tier: TIER.into(),
                job: job.clone(),
                set: set.clone(),
            })
    }

    fn push(
        &self,
        src: &Source<'_>,
        limiter: &RateLimiter,
        _resume: &mut dyn Resume,
    ) -> Result<PushReport, TierError> {
        // What is in the bucket already is found there (by the set records
        // and by asking), so a resumed push sends only what is missing.
        push::push(self, src, limiter)
    }

    fn fetch(
        &self,
        job: &JobName,
        set: &SetName,
        dest: &Path,
        engine: &IoEngine,
        progress: &dyn Fn(u64),
    ) -> Result<Manifest, TierError> {
        fetch::fetch(self, job, set, dest, engine, progress)
    }

    fn delete(&self, job: &JobName, set: &SetName) -> Result<(), TierError> {
        sweep::delete(self, job, set)
    }
}
