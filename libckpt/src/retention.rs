//! Which sets to remove: a pure function of the sets' states and ages, so the
//! policy is tested on tables without touching a disk.

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
