//! Starting the workload as its user with its supplementary groups. std's `Command` cannot set
//! supplementary groups on stable Rust (it clears them when it changes the uid) and a
//! `pre_exec` hook is unsafe, so the init starts itself again (`/proc/self/exe`, which works
//! after the root switch: the link names the initramfs file, not a path) in a helper mode that
//! calls `setgroups`, `setgid`, `setuid`, clears the signal mask PID 1 runs with and then execs
//! the entrypoint (or a health check's command). The helper keeps the
//! process: the workload's pid is the one the init spawned.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The helper mode's first argument.
pub const HELPER_FLAG: &str = "--catenary-exec-as";

/// Where `program` is, found as `execvp` would with `path` (the workload's `PATH`): a name with
/// a `/` is taken as it is. `Err((126 | 127, why))` as a shell reports it.
pub fn find_program(program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, (i32, String)> {
    let shown = Path::new(program).display().to_string();
    if program.is_empty() {
        return Err((127, "empty entrypoint".into()));
    }
    let check = |p: &Path| -> Result<bool, (i32, String)> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(true),
            Ok(_) => Err((126, format!("{}: not an executable file", p.display()))),
            Err(_) => Ok(false),
        }
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return if check(&p)? { Ok(p) } else { Err((127, format!("{shown}: no such file"))) };
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    let mut denied = None;
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) };
        match check(&dir.join(program)) {
            Ok(true) => return Ok(dir.join(program)),
            Ok(false) => {}
            Err(e) => denied = denied.or(Some(e)),
        }
    }
    Err(denied.unwrap_or((127, format!("{shown}: not found in PATH"))))
}

/// The helper's arguments: `HELPER_FLAG UID GID GROUPS PROGRAM ARGV0 ARGS…` (GROUPS
/// comma-separated, `-` for none).
pub fn helper_args(uid: u32, gid: u32, groups: &[u32], program: &Path, argv: &[String]) -> Vec<OsString> {
    let g = if groups.is_empty() { "-".to_string() } else { groups.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",") };
    let mut v: Vec<OsString> = vec![HELPER_FLAG.into(), uid.to_string().into(), gid.to_string().into(), g.into(), program.into()];
    v.extend(argv.iter().map(OsString::from));
    v
}

/// The helper mode (`args` after the flag): drop to the user and exec. Returns only on error,
/// with the exit status to use (126: the exec failed; 1: bad arguments or ids).
pub fn helper(args: &[OsString]) -> (i32, String) {
    let num = |s: &OsString| s.to_str().and_then(|s| s.parse::<u32>().ok());
    let (Some(uid), Some(gid), Some(groups), Some(program), Some(argv0)) =
        (args.first().and_then(num), args.get(1).and_then(num), args.get(2), args.get(3), args.get(4))
    else {
        return (1, "catenary-init: bad helper arguments".into());
    };
    let groups: Vec<nix::unistd::Gid> = match groups.to_str() {
        Some("-") => Vec::new(),
        Some(s) => match s.split(',').map(|g| g.parse::<u32>().map(nix::unistd::Gid::from_raw)).collect::<Result<_, _>>() {
            Ok(v) => v,
            Err(_) => return (1, format!("catenary-init: bad groups {s:?}")),
        },
        None => return (1, "catenary-init: bad groups".into()),
    };
    if let Err(e) = nix::unistd::setgroups(&groups) {
        return (1, format!("catenary-init: setgroups: {e}"));
    }
    if let Err(e) = nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)) {
        return (1, format!("catenary-init: setgid {gid}: {e}"));
    }
    if let Err(e) = nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)) {
        return (1, format!("catenary-init: setuid {uid}: {e}"));
    }
    // PID 1 runs with its signals blocked (it reads them from a signalfd); the program must not
    // inherit that mask (a blocked SIGTERM would never stop it).
    if let Err(e) = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&nix::sys::signal::SigSet::empty()), None) {
        return (1, format!("catenary-init: clearing the signal mask: {e}"));
    }
    let e = std::process::Command::new(program).arg0(argv0).args(&args[5..]).exec();
    (126, format!("catenary-init: cannot run {}: {e}", Path::new(program).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_as_execvp() {
        let d = std::env::temp_dir().join(format!("catenary-init-exec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::write(d.join("a/prog"), "").unwrap(); // not executable
        std::fs::write(d.join("b/prog"), "").unwrap();
        std::fs::set_permissions(d.join("b/prog"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", d.join("a").display(), d.join("b").display());
        assert_eq!(find_program(OsStr::new("prog"), Some(OsStr::new(&path))).unwrap(), d.join("b/prog"));
        assert_eq!(find_program(OsStr::new("ghost"), Some(OsStr::new(&path))).unwrap_err().0, 127);
        let only_a = d.join("a").display().to_string();
        assert_eq!(find_program(OsStr::new("prog"), Some(OsStr::new(&only_a))).unwrap_err().0, 126);
        assert_eq!(find_program(d.join("b/prog").as_os_str(), None).unwrap(), d.join("b/prog"));
        assert_eq!(find_program(d.join("a").as_os_str(), None).unwrap_err().0, 126);
        assert_eq!(find_program(d.join("nope").as_os_str(), None).unwrap_err().0, 127);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn helper_arguments_round_trip() {
        let a = helper_args(1000, 1001, &[29, 50], Path::new("/bin/sh"), &["sh".into(), "-c".into(), "x".into()]);
        assert_eq!(a[..5], [HELPER_FLAG, "1000", "1001", "29,50", "/bin/sh"].map(OsString::from));
        assert_eq!(helper_args(0, 0, &[], Path::new("/x"), &["x".into()])[3], "-");
        // bad arguments are refused before any id changes
        assert_eq!(helper(&a[1..4]).0, 1);
        assert_eq!(helper(&["x", "1", "-", "/bin/true", "true"].map(OsString::from)).0, 1);
    }
}
