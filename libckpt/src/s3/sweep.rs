//! Retention on S3: removing a set, then the chunks nothing needs.
//!
//! The set record goes first, so from that instant the set is not complete
//! on S3 and nobody restores from it. Then a sweep removes every chunk
//! that is
//! - named by no remaining set record (of any job under the prefix),
//! - named by no live in-flight marker, and
//! - older than the oldest live marker (so a push's own uploads survive).
//!
//! An interruption at any point leaves every kept set whole: at worst some
//! unneeded chunks, which the next sweep finds. A record that cannot be
//! read stops the sweep (its chunks might be needed), with nothing deleted.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::marker::Marker;
use super::{S3Tier, TIER};
use crate::dr::blob::ChunkHash;
use crate::dr::record::SetRecord;
use crate::path::{JobName, SetName};
use crate::tier::TierError;

/// Chunks uploaded this close before the oldest live marker are kept too:
/// clocks of the client and the object store differ.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

pub(super) fn delete(tier: &S3Tier, job: &JobName, set: &SetName) -> Result<(), TierError> {
    tier.rt.block_on(async {
        tier.delete_key(&tier.layout.set(job, set)).await?;
        let removed = sweep(tier).await?;
        tracing::info!(
            url = %tier.opts.url, %job, %set, chunks_removed = removed,
            "deleted a set on S3"
        );
        Ok(())
    })
}

/// Remove the chunks nothing needs; how many were removed.
async fn sweep(tier: &S3Tier) -> Result<u64, TierError> {
    let mut needed: HashSet<ChunkHash> = HashSet::new();
    for o in tier.list(&tier.layout.all_sets()).await? {
        let Some(bytes) = tier.get(&o.location).await? else {
            continue;
        };
        let r = SetRecord::parse(&bytes).map_err(|e| TierError::Refused {
            tier: TIER.into(),
            message: format!(
                "{}: {e}; not removing any chunk while a record cannot be read",
                tier.at(&o.location)
            ),
        })?;
        needed.extend(r.chunks.into_iter().flatten());
    }
    let now = SystemTime::now();
    let mut oldest_live: Option<SystemTime> = None;
    for o in tier.list(&tier.layout.all_inflight()).await? {
        let Some(bytes) = tier.get(&o.location).await? else {
            continue;
        };
        match Marker::parse(&bytes) {
            Ok(mk) if mk.live(now) => {
                oldest_live = Some(oldest_live.map_or(mk.started, |t| t.min(mk.started)));
                needed.extend(mk.chunks);
            }
            // A push that died a day ago, or a marker nobody can read
            // (treated as live while young, by its upload time).
            Ok(_) => tier.delete_key(&o.location).await?,
            Err(e) => {
                let young = now
                    .duration_since(o.last_modified.into())
                    .map_or(true, |age| age < super::marker::MARKER_TTL);
                if young {
                    tracing::warn!(key = %tier.at(&o.location), error = %e, "an unreadable in-flight marker: sweeping only older chunks");
                    let t: SystemTime = o.last_modified.into();
                    oldest_live = Some(oldest_live.map_or(t, |o| o.min(t)));
                } else {
                    tier.delete_key(&o.location).await?;
                }
            }
        }
    }
    let cutoff = oldest_live.map(|t| t.checked_sub(CLOCK_SLACK).unwrap_or(t));
    let doomed: Vec<_> = tier
        .list(&tier.layout.chunks())
        .await?
        .into_iter()
        .filter(|o| {
            let Some(h) = tier.layout.chunk_of(&o.location) else {
                return false;
            };
            let old_enough = cutoff.is_none_or(|c| SystemTime::from(o.last_modified) < c);
            !needed.contains(&h) && old_enough
        })
        .map(|o| o.location)
        .collect();
    let n = doomed.len() as u64;
    let results: Vec<_> = futures::stream::iter(doomed)
        .map(|k| async move { tier.delete_key(&k).await })
        .buffer_unordered(tier.opts.parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(n)
}
