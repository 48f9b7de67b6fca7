//! Which sets to remove: a pure function of the sets' states and ages, so the
//! policy is tested on tables without touching a disk.
//!
//! Chains: an incremental process dump (`ckptfs-dump --incremental`) stores
//! only the pages its parent lacks, so a kept set needs its ancestors.
//! Retention never removes a set that a kept set needs. Every caller (the
//! cache, each tier) sees at least the sets' names, so the chain is read
//! from the name ([`chain_parent`]: `BASE+K` depends on `BASE+(K-1)`, and
//! `BASE+1` on `BASE`); a caller that has the manifests can pass their
//! `parent` fields to [`Retention::plan_with_parents`] instead.

use std::collections::{HashMap, HashSet};

use crate::path::SetName;
use crate::set::{SetInfo, SetState};

/// Keep-N policy for one job on one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Complete sets to keep, newest first. 0 keeps every set.
    pub keep: usize,
}

impl Retention {
    /// The sets to delete, oldest first. Complete sets beyond the newest
    /// `keep` go, and so does every abandoned set. A set being written, one
    /// copied in by hand and one with a damaged manifest are never chosen:
    /// the first is someone's work in progress, the others need a human.
    pub fn plan(&self, sets: &[SetInfo]) -> Vec<SetName> {
        self.plan_with_parents(sets, &|s: &SetInfo| chain_parent(&s.set))
    }

    /// [`plan`](Self::plan), with each set's parent given by `parent_of`:
    /// the ancestors of every kept complete set are kept too (and so are
    /// the ancestors of sets being written, which may be dumps under way).
    pub fn plan_with_parents(
        &self,
        sets: &[SetInfo],
        parent_of: &dyn Fn(&SetInfo) -> Option<SetName>,
    ) -> Vec<SetName> {
        let doomed = self.plan_flat(sets);
        let doomed_set: HashSet<&SetName> = doomed.iter().collect();
        let by_name: HashMap<&SetName, &SetInfo> = sets.iter().map(|s| (&s.set, s)).collect();
        let mut needed: HashSet<SetName> = HashSet::new();
        for s in sets.iter().filter(|s| !doomed_set.contains(&s.set)) {
            let mut cur = parent_of(s);
            // Bounded by the number of sets: a cycle cannot loop forever.
            for _ in 0..sets.len() {
                let Some(p) = cur else { break };
                if !needed.insert(p.clone()) {
                    break;
                }
                cur = by_name.get(&p).and_then(|info| parent_of(info));
            }
        }
        doomed
            .into_iter()
            .filter(|s| {
                // An abandoned set is never anyone's parent: its dump failed.
                let abandoned = by_name
                    .get(s)
                    .is_some_and(|i| i.state == SetState::Abandoned);
                abandoned || !needed.contains(s)
            })
            .collect()
    }

    fn plan_flat(&self, sets: &[SetInfo]) -> Vec<SetName> {
        let mut sorted: Vec<&SetInfo> = sets.iter().collect();
        sorted.sort_by(|a, b| b.age_key().cmp(&a.age_key()));
        let mut complete_seen = 0usize;
        let mut doomed = Vec::new();
        for s in sorted {
            match s.state {
                SetState::Complete => {
                    complete_seen += 1;
                    if self.keep > 0 && complete_seen > self.keep {
                        doomed.push(s.set.clone());
                    }
                }
                SetState::Abandoned => doomed.push(s.set.clone()),
                SetState::Writing | SetState::Uncommitted | SetState::Damaged(_) => {}
            }
        }
        doomed.reverse();
        doomed
    }
}

/// The set `set` depends on, read from its name: `BASE+K` (K a number
/// from 1, no leading zero) depends on `BASE+(K-1)`, and `BASE+1` on `BASE`.
/// Any other name stands alone.
pub fn chain_parent(set: &SetName) -> Option<SetName> {
    let (base, k) = set.as_str().rsplit_once('+')?;
    if base.is_empty()
        || k.is_empty()
        || k.starts_with('0')
        || !k.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let k: u64 = k.parse().ok()?;
    let parent = if k == 1 {
        base.to_owned()
    } else {
        format!("{base}+{}", k - 1)
    };
    SetName::new(parent).ok()
}

/// The name of the `k`-th incremental set on top of the full set `base`
/// (see [`chain_parent`]).
pub fn chain_name(base: &SetName, k: u64) -> Option<SetName> {
    if k == 0 {
        return Some(base.clone());
    }
    SetName::new(format!("{base}+{k}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::JobName;
    use std::time::{Duration, SystemTime};

    /// `table` is (name, age in seconds since epoch, state letter):
    /// C complete, W writing, A abandoned, U uncommitted, D damaged.
    fn sets(table: &[(&str, u64, char)]) -> Vec<SetInfo> {
        table
            .iter()
            .map(|(name, t, st)| SetInfo {
                job: JobName::new("j").unwrap(),
                set: SetName::new(*name).unwrap(),
                state: match st {
                    'C' => SetState::Complete,
                    'W' => SetState::Writing,
                    'A' => SetState::Abandoned,
                    'U' => SetState::Uncommitted,
                    'D' => SetState::Damaged("bad".into()),
                    _ => unreachable!(),
                },
                created: SystemTime::UNIX_EPOCH + Duration::from_secs(*t),
                bytes: 0,
                files: 0,
            })
            .collect()
    }

    fn plan(keep: usize, table: &[(&str, u64, char)]) -> Vec<String> {
        Retention { keep }
            .plan(&sets(table))
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn table() {
        let t = [
            ("s1", 1, 'C'),
            ("s2", 2, 'A'),
            ("s3", 3, 'C'),
            ("s4", 4, 'C'),
            ("s5", 5, 'D'),
            ("s6", 6, 'C'),
            ("s7", 7, 'U'),
            ("s8", 8, 'W'),
            ("s9", 9, 'A'),
        ];
        let cases: &[(usize, &[&str])] = &[
            (0, &["s2", "s9"]),
            (1, &["s1", "s2", "s3", "s4", "s9"]),
            (2, &["s1", "s2", "s3", "s9"]),
            (3, &["s1", "s2", "s9"]),
            (4, &["s2", "s9"]),
            (10, &["s2", "s9"]),
        ];
        for (keep, want) in cases {
            assert_eq!(plan(*keep, &t), *want, "keep {keep}");
        }
    }

    #[test]
    fn chains_keep_what_kept_sets_need() {
        // d1 full, d1+1..d1+3 incremental; d2 full, d2+1 incremental.
        let t = [
            ("d1", 1, 'C'),
            ("d1+1", 2, 'C'),
            ("d1+2", 3, 'C'),
            ("d1+3", 4, 'C'),
            ("d2", 5, 'C'),
            ("d2+1", 6, 'C'),
            ("d2+2", 7, 'A'),
        ];
        let cases: &[(usize, &[&str])] = &[
            (1, &["d1", "d1+1", "d1+2", "d1+3", "d2+2"]),
            (2, &["d1", "d1+1", "d1+2", "d1+3", "d2+2"]),
            // d1+3 is kept: its whole chain stays.
            (3, &["d2+2"]),
            (6, &["d2+2"]),
            (0, &["d2+2"]),
        ];
        for (keep, want) in cases {
            assert_eq!(plan(*keep, &t), *want, "keep {keep}");
        }
        // A chain whose newest member is being written keeps its parents.
        let t = [("d1", 1, 'C'), ("d1+1", 2, 'C'), ("d1+2", 3, 'W')];
        assert!(plan(1, &t).is_empty(), "{:?}", plan(1, &t));
    }

    #[test]
    fn parents_from_manifests() {
        let t = sets(&[("a", 1, 'C'), ("b", 2, 'C'), ("c", 3, 'C')]);
        let parent = |s: &SetInfo| (s.set.as_str() == "c").then(|| SetName::new("a").unwrap());
        let got = Retention { keep: 1 }.plan_with_parents(&t, &parent);
        assert_eq!(got, [SetName::new("b").unwrap()]);
        // A cycle (a damaged record) ends the walk instead of looping.
        let cyc = |s: &SetInfo| {
            Some(SetName::new(if s.set.as_str() == "a" { "c" } else { "a" }).unwrap())
        };
        let got = Retention { keep: 1 }.plan_with_parents(&t, &cyc);
        assert_eq!(got, [SetName::new("b").unwrap()]);
    }

    #[test]
    fn chain_names() {
        let p = |s: &str| chain_parent(&SetName::new(s).unwrap()).map(|p| p.to_string());
        assert_eq!(p("d+1").as_deref(), Some("d"));
        assert_eq!(p("d+12").as_deref(), Some("d+11"));
        assert_eq!(p("a+b+2").as_deref(), Some("a+b+1"));
        for alone in ["d", "d+", "+1", "d+01", "d+0", "d+x", "d+1x", "d+-1"] {
            assert_eq!(p(alone), None, "{alone}");
        }
        let base = SetName::new("d").unwrap();
        assert_eq!(chain_name(&base, 0).unwrap(), base);
        assert_eq!(chain_name(&base, 3).unwrap().as_str(), "d+3");
    }

    #[test]
    fn ties_break_by_name() {
        let t = [("b", 5, 'C'), ("a", 5, 'C'), ("c", 5, 'C')];
        assert_eq!(plan(2, &t), ["a"]);
    }

    #[test]
    fn nothing_to_do() {
        assert!(plan(3, &[]).is_empty());
        assert!(plan(1, &[("only", 1, 'C')]).is_empty());
        assert!(plan(1, &[("w", 1, 'W'), ("u", 2, 'U'), ("d", 3, 'D')]).is_empty());
    }
}
