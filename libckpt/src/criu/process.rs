//! What the kernel says about a process: does it live, whose is it, which
//! processes form its tree; and the machine's load.

use std::collections::BTreeSet;

use super::CriuError;

/// The process's state letter from `/proc/PID/stat` (R, S, T, Z…), or
/// `None` when there is no such process.
pub fn state(pid: i32) -> Option<char> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// True when `pid` names a process that has not ended.
pub fn alive(pid: i32) -> bool {
    state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The real uid of `pid`.
pub fn owner(pid: i32) -> Result<u32, CriuError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| CriuError::NoSuchProcess { pid })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .ok_or(CriuError::NoSuchProcess { pid })
}

/// The real uid and gid of `pid`.
pub fn owner_ids(pid: i32) -> Result<(u32, u32), CriuError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| CriuError::NoSuchProcess { pid })?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok())
    };
    match (field("Uid:"), field("Gid:")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(CriuError::NoSuchProcess { pid }),
    }
}

/// The calling user may dump `pid`: root may dump any process, anyone
/// else only their own. Returns the process's uid.
pub fn check_may_dump(pid: i32) -> Result<u32, CriuError> {
    if !alive(pid) {
        return Err(CriuError::NoSuchProcess { pid });
    }
    let owner = owner(pid)?;
    // SAFETY: getuid/geteuid cannot fail and touch no memory of ours.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if euid != 0 && (owner != uid || owner != euid) {
        return Err(CriuError::NotYours {
            pid,
            owner,
            caller: uid,
        });
    }
    Ok(owner)
}

/// `pid` and all its descendants (children of every thread), parents
/// before children. Processes that end meanwhile are skipped.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if !seen.insert(p) || !alive(p) {
            continue;
        }
        out.push(p);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Send `sig` to each of `pids` (errors ignored: a process may have ended).
pub fn signal_all(pids: &[i32], sig: i32) {
    for &p in pids {
        if p > 0 {
            // SAFETY: kill(2) with a positive pid touches no memory of ours.
            unsafe {
                libc::kill(p, sig);
            }
        }
    }
}

/// The one-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert_eq!(tree(me).first(), Some(&me));
        assert!(check_may_dump(me).is_ok());
        assert!(!alive(-1) && !alive(0));
        assert!(matches!(
            check_may_dump(i32::MAX),
            Err(CriuError::NoSuchProcess { .. })
        ));
        assert!(load_average().is_some());
    }
}
