//! Resolving the image's `User` (`""`, `name`, `uid`, `name:group`, `uid:gid`, `name:gid`,
//! `uid:group`) through the image's `/etc/passwd` and `/etc/group`, as Docker and runc do:
//!
//! - empty: root (uid 0, gid 0);
//! - a name must exist in `/etc/passwd`; its gid and home come from there;
//! - a number need not exist: when `/etc/passwd` has it, gid and home come from there,
//!   otherwise gid 0 and home `/`;
//! - a group part overrides the gid: a name must exist in `/etc/group`, a number need not.
//!
//! - supplementary groups, as runc sets them for Docker: when the user part matched an
//!   `/etc/passwd` entry and no group part is given, every `/etc/group` entry that lists that
//!   user's name among its members (none otherwise).

/// Who the workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// From `/etc/passwd`, `/` when the user has no entry.
    pub home: String,
    /// Supplementary groups (sorted, no duplicates; may contain `gid`, as `setgroups` allows).
    pub groups: Vec<u32>,
}

/// Linux's NGROUPS_MAX: `setgroups` refuses more.
pub const MAX_GROUPS: usize = 65536;

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] })
    })
}

/// The gids of the `/etc/group` entries that list `name` as a member (4th field).
fn member_of(group: &str, name: &str) -> Result<Vec<u32>, String> {
    let mut v: Vec<u32> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m.trim() == name) {
                f[2].parse().ok().filter(|&g| g != u32::MAX)
            } else {
                None
            }
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    if v.len() > MAX_GROUPS {
        return Err(format!("user {name:?} is in {} groups (at most {MAX_GROUPS})", v.len()));
    }
    Ok(v)
}

fn group_gid(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            f[2].parse().ok()
        } else {
            None
        }
    })
}

/// A decimal id that fits (uid/gid `u32::MAX` is "no id" to the kernel and refused).
fn numeric_id(s: &str) -> Option<Result<u32, String>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match s.parse::<u32>() {
        Ok(v) if v != u32::MAX => Ok(v),
        _ => Err(format!("id {s} is out of range")),
    })
}

/// Resolve `user`; `passwd` and `group` are the image's files (None when absent).
pub fn resolve(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Identity, String> {
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // The passwd entry's name, for the supplementary groups.
    let mut name: Option<&str> = None;
    let mut id = if u.is_empty() {
        if g.is_some() {
            return Err(format!("user {user:?}: empty user part"));
        }
        let root = passwd_entries(passwd).find(|e| e.uid == 0);
        let home = root.as_ref().map(|e| e.home.to_string()).unwrap_or_else(|| "/root".into());
        name = root.map(|e| e.name);
        Identity { uid: 0, gid: 0, home, groups: Vec::new() }
    } else if let Some(uid) = numeric_id(u) {
        let uid = uid.map_err(|e| format!("user {user:?}: {e}"))?;
        match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => {
                name = Some(e.name);
                Identity { uid, gid: e.gid, home: e.home.into(), groups: Vec::new() }
            }
            None => Identity { uid, gid: 0, home: "/".into(), groups: Vec::new() },
        }
    } else {
        match passwd_entries(passwd).find(|e| e.name == u) {
            Some(e) if e.uid != u32::MAX && e.gid != u32::MAX => {
                name = Some(e.name);
                Identity { uid: e.uid, gid: e.gid, home: e.home.into(), groups: Vec::new() }
            }
            Some(_) => return Err(format!("user {user:?}: its /etc/passwd ids are out of range")),
            None => return Err(format!("user {user:?}: no user {u:?} in the image's /etc/passwd")),
        }
    };
    if let Some(g) = g {
        id.gid = match numeric_id(g) {
            Some(gid) => gid.map_err(|e| format!("user {user:?}: {e}"))?,
            None if g.is_empty() => return Err(format!("user {user:?}: empty group part")),
            None => match group_gid(group, g) {
                Some(gid) if gid != u32::MAX => gid,
                _ => return Err(format!("user {user:?}: no group {g:?} in the image's /etc/group")),
            },
        };
    }
    // An explicit group part: no supplementary groups (runc's rule).
    if let (None, Some(n)) = (g, name) {
        id.groups = member_of(group, n)?;
    }
    if id.home.is_empty() {
        id.home = "/".into();
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# a comment\nbroken line\napp:x:1000:1001:App:/home/app:/bin/sh\nnohome:x:1002:1002:::/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1001:\naudio:x:29:other, app\nwheel:x:10:root\nbad:x:nope:app\n";

    fn r(u: &str) -> Result<Identity, String> {
        resolve(u, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(r("").unwrap(), Identity { uid: 0, gid: 0, home: "/root".into(), groups: vec![10] });
        assert_eq!(r("app").unwrap(), Identity { uid: 1000, gid: 1001, home: "/home/app".into(), groups: vec![29, 50] });
        assert_eq!(r("1000").unwrap(), Identity { uid: 1000, gid: 1001, home: "/home/app".into(), groups: vec![29, 50] });
        assert_eq!(r("4242").unwrap(), Identity { uid: 4242, gid: 0, home: "/".into(), groups: vec![] });
        assert_eq!(r("app:staff").unwrap(), Identity { uid: 1000, gid: 50, home: "/home/app".into(), groups: vec![] });
        assert_eq!(r("app:7").unwrap(), Identity { uid: 1000, gid: 7, home: "/home/app".into(), groups: vec![] });
        assert_eq!(r("4242:4343").unwrap(), Identity { uid: 4242, gid: 4343, home: "/".into(), groups: vec![] });
        assert_eq!(r("1000:staff").unwrap().gid, 50);
        assert_eq!(r("nohome").unwrap().home, "/");
        assert_eq!(r("nobody").unwrap(), Identity { uid: 65534, gid: 65534, home: "/nonexistent".into(), groups: vec![] });
    }

    #[test]
    fn refusals() {
        assert!(r("ghost").unwrap_err().contains("no user \"ghost\""));
        assert!(r("app:ghosts").unwrap_err().contains("no group \"ghosts\""));
        assert!(r("app:").unwrap_err().contains("empty group"));
        assert!(r(":50").unwrap_err().contains("empty user"));
        assert!(r("99999999999").unwrap_err().contains("out of range"));
        assert!(r("4294967295").unwrap_err().contains("out of range"));
        assert!(r("1:4294967295").unwrap_err().contains("out of range"));
        // No /etc/passwd at all: numbers still work, names do not.
        assert_eq!(resolve("5:6", None, None).unwrap(), Identity { uid: 5, gid: 6, home: "/".into(), groups: vec![] });
        assert!(resolve("app", None, None).is_err());
        assert_eq!(resolve("", None, None).unwrap().home, "/root");
    }
}
