//! The sandbox's mount tree (SPEC §5): planned in the parent, built in the child.
//!
//! **Parent** ([`MountPlan::prepare`]): every host source path is resolved
//! (`canonicalize`), checked against [`FORBIDDEN_PREFIXES`] *after*
//! resolution (so a symlink cannot point a bind at `/proc` or the daemon's
//! state), opened `O_PATH` with `openat2(RESOLVE_NO_SYMLINKS)` on the
//! resolved path and its device and inode recorded.
//!
//! **Child** ([`open_sources`]): a bind source must be a mount of the
//! caller's mount namespace, so the child opens each resolved path again,
//! after `unshare(CLONE_NEWNS)` and before anything is mounted over it, with
//! `openat2(O_PATH, RESOLVE_NO_SYMLINKS)`, and refuses it unless device and
//! inode are the ones the parent checked. If any component was swapped for a
//! symlink or another object in between, the open or the comparison fails.
//! The binds then go through `/proc/self/fd/N`; no host path is looked up a
//! third time, so nothing a plugin controls can redirect a bind (no TOCTOU).
//!
//! **Child** ([`open_sources`] ... [`pivot`]): see the step list in the crate doc.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::error::{StepContext, StepError};
use crate::spec::{API_SOCKET_PATH, FORBIDDEN_PREFIXES, SandboxSpec};

/// Host trees shared read-only into every sandbox (or recreated as the same
/// symlink when the host has a symlink, as merged-`/usr` systems do).
pub const SYSTEM_TREES: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin"];
/// Device nodes bind-mounted from the host into the sandbox's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Host `/etc` entries dynamic linking and time zones need, bound read-only:
/// the loader cache, the time zone, and Debian's `alternatives` directory
/// (symlinks only; libraries such as `libblas.so.3`, which numpy loads, are
/// reached through it).
pub const ETC_FILES: &[&str] = &["/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"];
/// Where the new root tmpfs is mounted before `pivot_root` (only inside the
/// sandbox's private mount namespace; the host never sees it).
pub const STAGING_DIR: &str = "/tmp";
/// In-sandbox paths a manifest `read_only` entry may not cover or sit under.
const RESERVED_TARGETS: &[&str] = &["/etc", "/tmp", "/plugin", "/data", "/proc", "/dev", "/run"];

/// `mount_setattr` attribute bits (uapi `MOUNT_ATTR_*`).
mod attr {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
}

/// A problem found while planning the mount tree in the parent.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A `read_only` tree could let the plugin reach a host socket.
    #[error("read_only {path}: {reason}")]
    Unsafe {
        /// The path as given.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// A host path could not be resolved or opened.
    #[error("{what} {path}: {errno:?}")]
    Open {
        /// Which spec entry (`read_only`, `plugin_dir`).
        what: &'static str,
        /// The host path as given.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
    /// A path resolves somewhere no sandbox may see.
    #[error("{what} {path} resolves to {resolved}, which is under forbidden {prefix}")]
    Forbidden {
        /// Which spec entry.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Where it resolved.
        resolved: PathBuf,
        /// The forbidden prefix.
        prefix: &'static str,
    },
    /// A path is not usable as a mount target (relative, `..`, reserved).
    #[error("{what} {path}: {reason}")]
    BadTarget {
        /// Which spec entry.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
}

/// One bind mount: a resolved, checked host object, and where it goes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Bind {
    /// The resolved host path (no symlinks).
    source: CString,
    /// Device and inode the parent saw at `source`.
    dev: u64,
    ino: u64,
    /// Relative to the new root (`usr`, `dev/null`).
    target: CString,
    /// In-sandbox path for messages (`/usr`).
    display: String,
    /// `MOUNT_ATTR_*` applied recursively after the bind.
    attrs: u64,
    /// Spec-independent (system trees, devices, `/etc` files): a pre-warmed
    /// stub binds these before it is claimed.
    base: bool,
}

/// Everything the child needs to build the mount tree, prepared before fork
/// (serializable: a pre-warmed sandbox process receives it at claim time).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MountPlan {
    staging: CString,
    root_opts: CString,
    tmp_opts: CString,
    dirs: Vec<CString>,
    files: Vec<CString>,
    symlinks: Vec<(CString, CString)>,
    binds: Vec<Bind>,
    /// `/etc` files the same in every sandbox (`nsswitch.conf`, `hosts`):
    /// a pre-warmed init writes them before it is claimed.
    etc_files: Vec<(CString, Vec<u8>)>,
    /// `/etc` files naming the sandbox's uid and gid (`passwd`, `group`).
    user_files: Vec<(CString, Vec<u8>)>,
    /// Sockets inside `read_only` trees, relative to the new root, covered
    /// with an empty file so the plugin cannot `connect` to them.
    masks: Vec<CString>,
}

fn cstring(s: &str) -> CString {
    // Paths and options built here never contain NUL (they come from `Path`s
    // checked below or from literals).
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn path_cstring(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Open a resolved path `O_PATH`, refusing any symlink on the way.
fn open_no_symlinks(resolved: &CStr) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(nix::fcntl::AT_FDCWD, resolved, how)
}

/// A resolved host object: path, device, inode, directory or not.
struct Resolved {
    path: PathBuf,
    cpath: CString,
    dev: u64,
    ino: u64,
    is_dir: bool,
}

/// Resolve `path`, open the result refusing any symlink, and stat it.
fn open_resolved(what: &'static str, path: &Path) -> Result<Resolved, PrepareError> {
    let err = |errno| PrepareError::Open {
        what,
        path: path.to_owned(),
        errno,
    };
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL))))?;
    let cpath = path_cstring(&resolved).map_err(err)?;
    let fd = open_no_symlinks(&cpath).map_err(err)?;
    let st = fstat(&fd).map_err(err)?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    Ok(Resolved {
        path: resolved,
        cpath,
        dev: st.st_dev,
        ino: st.st_ino,
        is_dir,
    })
}

/// Reject absolute paths with `..` or `.` components and relative paths.
fn check_clean_absolute(what: &'static str, p: &Path) -> Result<(), PrepareError> {
    let bad = |reason| PrepareError::BadTarget {
        what,
        path: p.to_owned(),
        reason,
    };
    if !p.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad("contains '..' or '.'"));
    }
    Ok(())
}

fn forbidden_prefix(resolved: &Path) -> Option<&'static str> {
    FORBIDDEN_PREFIXES
        .iter()
        .copied()
        .find(|p| resolved.starts_with(p))
}

fn relative(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_owned()
}

impl MountPlan {
    /// Resolve, check and open every host path the sandbox will see.
    ///
    /// # Errors
    /// A path does not exist, resolves under a forbidden prefix, or is not
    /// usable as a target.
    pub fn prepare(spec: &SandboxSpec) -> Result<Self, PrepareError> {
        Self::prepare_on(Self::prepare_base()?, spec)
    }

    /// [`MountPlan::prepare`] on a base that [`MountPlan::prepare_base`]
    /// resolved earlier (the launcher reuses one for up to
    /// [`crate::launcher::BASE_PLAN_TTL`]). Only the spec's own paths are
    /// resolved here.
    ///
    /// # Errors
    /// As [`MountPlan::prepare`], for the spec's paths.
    pub(crate) fn prepare_on(base: MountPlan, spec: &SandboxSpec) -> Result<Self, PrepareError> {
        let mut plan = base;
        plan.tmp_opts = cstring(&format!(
            "mode=1777,size={},nr_inodes={}",
            spec.limits.tmp_size.max(4096),
            tmp_inodes(spec.limits.tmp_size)
        ));
        let mut bound: Vec<PathBuf> = plan
            .binds
            .iter()
            .filter(|b| SYSTEM_TREES.contains(&b.display.as_str()))
            .map(|b| PathBuf::from(&b.display))
            .collect();
        plan.bind(
            "plugin_dir",
            &spec.plugin_dir,
            Path::new("/plugin"),
            attr::RDONLY | attr::NOSUID | attr::NODEV,
        )?;
        if let Some(data) = &spec.data_dir {
            plan.dirs.push(cstring("data"));
            plan.bind(
                "data_dir",
                data,
                Path::new("/data"),
                attr::NOSUID | attr::NODEV | attr::NOEXEC,
            )?;
        }
        plan.prepare_read_only(spec, &mut bound)?;
        if let Some(sock) = &spec.api_socket {
            plan.dirs.push(cstring("run"));
            plan.dirs.push(cstring("run/hutch"));
            plan.bind_daemon_owned(
                "api_socket",
                sock,
                Path::new(API_SOCKET_PATH),
                attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC,
                false,
            )?;
        }
        plan.user_files = user_files(spec.uid, spec.gid);
        plan.dirs.sort();
        plan.dirs.dedup();
        Ok(plan)
    }

    /// The spec-independent part of every plan: the skeleton, the system
    /// trees (or their symlinks), the devices, the `/etc` files and the
    /// `/dev` links. A pre-warmed stub builds this much before it is
    /// claimed ([`prewarm_root`]).
    ///
    /// # Errors
    /// A system path cannot be resolved or opened.
    pub fn prepare_base() -> Result<Self, PrepareError> {
        let mut plan = MountPlan {
            staging: cstring(STAGING_DIR),
            root_opts: cstring("mode=0755,size=1m"),
            tmp_opts: cstring(&format!(
                "mode=1777,size={},nr_inodes={}",
                crate::spec::DEFAULT_TMP_SIZE,
                tmp_inodes(crate::spec::DEFAULT_TMP_SIZE)
            )),
            dirs: Vec::new(),
            files: Vec::new(),
            symlinks: Vec::new(),
            binds: Vec::new(),
            etc_files: etc_files(),
            user_files: Vec::new(),
            masks: Vec::new(),
        };
        for d in ["etc", "proc", "dev", "tmp", "plugin"] {
            plan.dirs.push(cstring(d));
        }
        for tree in SYSTEM_TREES {
            match std::fs::symlink_metadata(tree) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(tree).map_err(|e| PrepareError::Open {
                        what: "system tree",
                        path: PathBuf::from(tree),
                        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
                    })?;
                    let target = path_cstring(&target).map_err(|errno| PrepareError::Open {
                        what: "system tree",
                        path: PathBuf::from(tree),
                        errno,
                    })?;
                    plan.symlinks
                        .push((target, cstring(&relative(Path::new(tree)))));
                }
                Ok(_) => {
                    plan.bind_daemon_owned(
                        "system tree",
                        Path::new(tree),
                        Path::new(tree),
                        attr::RDONLY | attr::NOSUID | attr::NODEV,
                        true,
                    )?;
                }
                Err(_) => {}
            }
        }
        for dev in DEVICES {
            let host = PathBuf::from(format!("/dev/{dev}"));
            plan.bind_daemon_owned("device", &host, &host, attr::NOSUID | attr::NOEXEC, true)?;
        }
        for f in ETC_FILES {
            if Path::new(f).exists() {
                plan.bind_daemon_owned(
                    "etc file",
                    Path::new(f),
                    Path::new(f),
                    attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC,
                    true,
                )?;
            }
        }
        for (link, target) in [
            ("dev/fd", "/proc/self/fd"),
            ("dev/stdin", "/proc/self/fd/0"),
            ("dev/stdout", "/proc/self/fd/1"),
            ("dev/stderr", "/proc/self/fd/2"),
        ] {
            plan.symlinks.push((cstring(target), cstring(link)));
        }
        plan.dirs.sort();
        plan.dirs.dedup();
        Ok(plan)
    }

    /// The manifest's `read_only` entries: checked, bound (unless already
    /// visible through a bound system tree), their sockets masked.
    fn prepare_read_only(
        &mut self,
        spec: &SandboxSpec,
        bound: &mut Vec<PathBuf>,
    ) -> Result<(), PrepareError> {
        let plan = self;
        let mut extra: Vec<&PathBuf> = spec.read_only.iter().collect();
        extra.sort_by_key(|p| p.as_os_str().len());
        for p in extra {
            check_clean_absolute("read_only", p)?;
            let reserved = RESERVED_TARGETS
                .iter()
                .any(|r| Path::new(r).starts_with(p) || (p.starts_with(r) && *r != "/etc"));
            if reserved || p == Path::new("/") {
                return Err(PrepareError::BadTarget {
                    what: "read_only",
                    path: p.clone(),
                    reason: "covers or sits under a path the sandbox owns",
                });
            }
            if bound.iter().any(|b| p.starts_with(b)) {
                // Already visible through an enclosing read-only bind; still
                // refuse it if it resolves somewhere forbidden.
                let r = open_resolved("read_only", p)?;
                if let Some(prefix) = forbidden_prefix(&r.path) {
                    return Err(PrepareError::Forbidden {
                        what: "read_only",
                        path: p.clone(),
                        resolved: r.path,
                        prefix,
                    });
                }
                continue;
            }
            plan.bind("read_only", p, p, attr::RDONLY | attr::NOSUID | attr::NODEV)?;
            let resolved = std::fs::canonicalize(p).map_err(|e| PrepareError::Open {
                what: "read_only",
                path: p.clone(),
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
            })?;
            for socket in scan_for_sockets(p, &resolved)? {
                plan.masks.push(cstring(&relative(&socket)));
            }
            bound.push(p.clone());
        }
        Ok(())
    }

    /// Bind a path from the spec: resolved, then checked against the
    /// forbidden prefixes (for `read_only` entries, which a manifest names).
    fn bind(
        &mut self,
        what: &'static str,
        host: &Path,
        target: &Path,
        attrs: u64,
    ) -> Result<(), PrepareError> {
        let r = open_resolved(what, host)?;
        if let Some(prefix) = forbidden_prefix(&r.path).filter(|_| what == "read_only") {
            return Err(PrepareError::Forbidden {
                what,
                path: host.to_owned(),
                resolved: r.path,
                prefix,
            });
        }
        self.push_bind(r, target, attrs, false);
        Ok(())
    }

    /// Bind a path the daemon itself chose (device nodes, the API socket,
    /// state dirs), which legitimately live under forbidden prefixes.
    fn bind_daemon_owned(
        &mut self,
        what: &'static str,
        host: &Path,
        target: &Path,
        attrs: u64,
        base: bool,
    ) -> Result<(), PrepareError> {
        let r = open_resolved(what, host)?;
        self.push_bind(r, target, attrs, base);
        Ok(())
    }

    fn push_bind(&mut self, r: Resolved, target: &Path, attrs: u64, base: bool) {
        let rel = relative(target);
        let mut parent = Path::new(&rel).parent();
        while let Some(p) = parent {
            if !p.as_os_str().is_empty() {
                self.dirs.push(cstring(&p.to_string_lossy()));
            }
            parent = p.parent();
        }
        if r.is_dir {
            self.dirs.push(cstring(&rel));
        } else {
            self.files.push(cstring(&rel));
        }
        self.binds.push(Bind {
            source: r.cpath,
            dev: r.dev,
            ino: r.ino,
            target: cstring(&rel),
            display: target.to_string_lossy().into_owned(),
            attrs,
            base,
        });
    }
}

/// Inode limit of the private `/tmp`: one per 2 KiB of `tmp_size`, at least
/// 1024, so an inode bomb ends with ENOSPC instead of kernel memory.
pub fn tmp_inodes(tmp_size: u64) -> u64 {
    (tmp_size / 2048).max(1024)
}

/// Most entries walked in one `read_only` tree when looking for sockets.
pub const MAX_SCAN_ENTRIES: usize = 200_000;

/// Walk a `read_only` tree (not following symlinks) and return the
/// in-sandbox paths of the Unix sockets in it: a read-only bind does not stop
/// `connect(2)`, and Landlock below ABI 9 has no right for it, so they are
/// masked in the child. A world-writable directory in the tree is refused: a
/// socket created there after the spawn would be reachable.
///
/// # Errors
/// A world-writable directory, more than [`MAX_SCAN_ENTRIES`] entries, or
/// an unreadable directory.
fn scan_for_sockets(declared: &Path, resolved: &Path) -> Result<Vec<PathBuf>, PrepareError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let unsafe_tree = |reason: String| PrepareError::Unsafe {
        path: declared.to_owned(),
        reason,
    };
    let top = std::fs::symlink_metadata(resolved)
        .map_err(|e| unsafe_tree(format!("cannot check {}: {e}", resolved.display())))?;
    if top.file_type().is_socket() {
        return Err(unsafe_tree("is a Unix socket".into()));
    }
    let mut sockets = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = resolved.join(&rel);
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(|e| unsafe_tree(format!("cannot check {}: {e}", dir.display())))?;
        if meta.is_dir() && meta.permissions().mode() & 0o002 != 0 {
            return Err(unsafe_tree(format!(
                "{} is world-writable: a socket created there would reach the host",
                dir.display()
            )));
        }
        if !meta.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| unsafe_tree(format!("cannot list {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| unsafe_tree(format!("cannot list {}: {e}", dir.display())))?;
            seen += 1;
            if seen > MAX_SCAN_ENTRIES {
                return Err(unsafe_tree(format!(
                    "more than {MAX_SCAN_ENTRIES} entries: too large to check for sockets"
                )));
            }
            let Ok(ft) = entry.file_type() else { continue };
            let child = rel.join(entry.file_name());
            if ft.is_socket() {
                sockets.push(declared.join(&child));
            } else if ft.is_dir() {
                stack.push(child);
            }
        }
    }
    Ok(sockets)
}

/// `/etc/passwd` and `/etc/group` naming the sandbox user.
fn user_files(uid: u32, gid: u32) -> Vec<(CString, Vec<u8>)> {
    vec![
        (
            cstring("etc/passwd"),
            format!("root:x:0:0:root:/:/usr/sbin/nologin\nhutch:x:{uid}:{gid}:hutch plugin:/tmp:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/:/usr/sbin/nologin\n").into_bytes(),
        ),
        (cstring("etc/group"), format!("root:x:0:\nhutch:x:{gid}:\nnogroup:x:65534:\n").into_bytes()),
    ]
}

/// `/etc/nsswitch.conf` and `/etc/hosts`, the same in every sandbox.
fn etc_files() -> Vec<(CString, Vec<u8>)> {
    vec![
        (
            cstring("etc/nsswitch.conf"),
            b"passwd: files\ngroup: files\nhosts: files\n".to_vec(),
        ),
        (
            cstring("etc/hosts"),
            b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
        ),
    ]
}

// ---------------------------------------------------------------- child side

fn mount_setattr(target: &CStr, recursive: bool, set: u64) -> Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_SYMLINK_NOFOLLOW | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `target` is a NUL-terminated string and `attr` a live, correctly sized `struct mount_attr` for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// Step: make every mount private, so nothing below propagates to the host.
///
/// # Errors
/// `mount(MS_REC|MS_PRIVATE)` failed.
pub fn make_root_private() -> Result<(), StepError> {
    root_propagation(MsFlags::MS_PRIVATE, "make private")
}

/// `mount(MS_REC | propagation)` on `/`: every mount of this namespace.
fn root_propagation(propagation: MsFlags, op: &'static str) -> Result<(), StepError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .step(op, "/")
}

/// Step: the empty tmpfs that becomes `/`, entered with `chdir`.
///
/// # Errors
/// The mount or `chdir` failed.
pub fn mount_root_tmpfs(plan: &MountPlan) -> Result<(), StepError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("tmpfs"),
        plan.staging.as_c_str(),
        Some("tmpfs"),
        flags,
        Some(plan.root_opts.as_c_str()),
    )
    .step("mount tmpfs root on", STAGING_DIR)?;
    nix::unistd::chdir(plan.staging.as_c_str()).step("chdir", STAGING_DIR)
}

/// Step: directories, mount-point files and symlinks of the skeleton.
///
/// # Errors
/// A `mkdir`, `mknod` or `symlink` failed.
pub fn create_skeleton(plan: &MountPlan) -> Result<(), StepError> {
    for d in &plan.dirs {
        match nix::unistd::mkdir(d.as_c_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(StepError::sys(
                    "mkdir",
                    format!("/{}", d.to_string_lossy()),
                    e,
                ));
            }
        }
    }
    for (target, link) in plan
        .symlinks
        .iter()
        .filter(|(_, l)| !l.to_bytes().starts_with(b"dev/"))
    {
        nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str())
            .step("symlink", format!("/{}", link.to_string_lossy()))?;
    }
    Ok(())
}

/// Step: a small tmpfs for `/dev` with the `fd`, `stdin`, `stdout`,
/// `stderr` symlinks and the `shm` mount point (the device nodes are bound
/// later by [`bind_all`], the `/dev/shm` tmpfs by [`mount_tmp`]).
///
/// # Errors
/// The mount or a symlink failed.
pub fn mount_dev(plan: &MountPlan) -> Result<(), StepError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        "dev",
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=64k"),
    )
    .step("mount tmpfs on", "/dev")?;
    nix::unistd::mkdir("dev/shm", Mode::from_bits_truncate(0o755)).step("mkdir", "/dev/shm")?;
    for (target, link) in plan
        .symlinks
        .iter()
        .filter(|(_, l)| l.to_bytes().starts_with(b"dev/"))
    {
        nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str())
            .step("symlink", format!("/{}", link.to_string_lossy()))?;
    }
    Ok(())
}

/// Step: empty files as mount points for file binds (devices, `/etc`
/// files, the API socket, file `read_only` entries).
///
/// # Errors
/// A file creation failed.
pub fn create_mount_points(plan: &MountPlan) -> Result<(), StepError> {
    for f in &plan.files {
        let fd = nix::fcntl::open(
            f.as_c_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        );
        fd.step("create mount point", format!("/{}", f.to_string_lossy()))?;
    }
    Ok(())
}

/// Bind sources opened in the child's mount namespace, in plan order.
#[derive(Debug)]
pub struct Sources {
    fds: Vec<OwnedFd>,
    links: Vec<CString>,
}

impl Sources {
    /// The descriptors (kept open until the binds are done).
    pub fn fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Step: open every bind source `O_PATH` without following symlinks and
/// check it is the object the parent resolved and checked (same device and
/// inode). Runs after `unshare(CLONE_NEWNS)` (a bind source must belong to
/// the caller's mount namespace) and before anything is mounted.
///
/// # Errors
/// A source cannot be opened or was replaced.
pub fn open_sources(plan: &MountPlan) -> Result<Sources, StepError> {
    let mut fds = Vec::with_capacity(plan.binds.len());
    let mut links = Vec::with_capacity(plan.binds.len());
    for b in &plan.binds {
        let shown = b.source.to_string_lossy();
        let fd = open_no_symlinks(&b.source).step("open bind source", &shown)?;
        let st = fstat(&fd).step("fstat bind source", &shown)?;
        if st.st_dev != b.dev || st.st_ino != b.ino {
            return Err(StepError::other(
                "open bind source",
                format!("{shown} changed after it was checked"),
            ));
        }
        links.push(cstring(&format!("/proc/self/fd/{}", fd.as_raw_fd())));
        fds.push(fd);
    }
    Ok(Sources { fds, links })
}

/// Step: every bind (system trees, `/plugin`, `/data`, `read_only` paths,
/// the API socket, devices, `/etc` files), each through its descriptor from
/// [`open_sources`], then its attributes set recursively with `mount_setattr`.
///
/// # Errors
/// A bind or attribute change failed.
pub fn bind_all(plan: &MountPlan, sources: &Sources) -> Result<(), StepError> {
    for (b, link) in plan.binds.iter().zip(&sources.links) {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(
            Some(link.as_c_str()),
            b.target.as_c_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .step("bind", &b.display)?;
        let what = if b.attrs & attr::RDONLY != 0 {
            "mount read-only"
        } else {
            "set mount attributes"
        };
        mount_setattr(b.target.as_c_str(), true, b.attrs).step(what, &b.display)?;
    }
    Ok(())
}

/// Step: cover every socket found in a `read_only` tree with an empty,
/// read-only file (connect then fails with `ECONNREFUSED`). The file lives in
/// the root tmpfs only while it is bound, then is unlinked.
///
/// # Errors
/// A mount or the mask file failed.
pub fn mask_sockets(plan: &MountPlan) -> Result<(), StepError> {
    if plan.masks.is_empty() {
        return Ok(());
    }
    let mask = c"hutch-socket-mask";
    nix::fcntl::open(
        mask,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o444),
    )
    .step("create", "/hutch-socket-mask")?;
    for m in &plan.masks {
        let shown = format!("/{}", m.to_string_lossy());
        mount(
            Some(mask),
            m.as_c_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step("mask socket", &shown)?;
        mount_setattr(
            m.as_c_str(),
            false,
            attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC,
        )
        .step("mount read-only", &shown)?;
    }
    nix::unistd::unlink(mask).step("unlink", "/hutch-socket-mask")
}

/// Step: the private, size-limited `/tmp`, and `/dev/shm` (POSIX shared
/// memory and semaphores, e.g. Python `multiprocessing`) with the same
/// limits. Both are fresh tmpfs instances of this sandbox alone, charged to
/// its memory cgroup; the `/dev/shm` mount point is in the `/dev` tmpfs,
/// which [`seal_dev`] makes read-only without touching this mount.
///
/// # Errors
/// A mount failed.
pub fn mount_tmp(plan: &MountPlan) -> Result<(), StepError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (target, shown) in [("tmp", "/tmp"), ("dev/shm", "/dev/shm")] {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            flags,
            Some(plan.tmp_opts.as_c_str()),
        )
        .step("mount tmpfs on", shown)?;
    }
    Ok(())
}

/// Step: `/etc/passwd`, `group`, `nsswitch.conf`, `hosts`.
///
/// # Errors
/// A write failed.
pub fn write_etc(plan: &MountPlan) -> Result<(), StepError> {
    write_files(&plan.etc_files)?;
    write_files(&plan.user_files)
}

fn write_files(files: &[(CString, Vec<u8>)]) -> Result<(), StepError> {
    use std::io::Write;
    for (name, content) in files {
        let fd = nix::fcntl::open(
            name.as_c_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .step("create", format!("/{}", name.to_string_lossy()))?;
        std::fs::File::from(fd)
            .write_all(content)
            .step("write", format!("/{}", name.to_string_lossy()))?;
    }
    Ok(())
}

/// Pre-warm step: `/tmp` and `/dev/shm` with the base plan's (default)
/// size, and the `/etc` files every sandbox has; the claim writes the rest
/// ([`finish_prewarmed_root`]).
///
/// # Errors
/// A mount or write failed.
pub fn prewarm_tmp_and_etc(base: &MountPlan) -> Result<(), StepError> {
    mount_tmp(base)?;
    write_files(&base.etc_files)
}

/// Claim step: what [`prewarm_tmp_and_etc`] left to the spec. `/tmp` and
/// `/dev/shm` are mounted again (still empty) when the spec asks for
/// another size than the pre-warmed one; `passwd` and `group` name the
/// sandbox's ids.
///
/// The shared `/etc` files are constants of this build (`etc_files`), so
/// the claim's are the pre-warmed ones.
///
/// # Errors
/// A mount or write failed.
pub fn finish_prewarmed_root(plan: &MountPlan, base: &MountPlan) -> Result<(), StepError> {
    if plan.tmp_opts != base.tmp_opts {
        for (target, shown) in [(c"tmp", "/tmp"), (c"dev/shm", "/dev/shm")] {
            umount2(target, MntFlags::empty()).step("umount", shown)?;
        }
        mount_tmp(plan)?;
    }
    write_files(&plan.user_files)
}

/// Step: a new `/proc` for the new pid namespace, `hidepid=invisible` so the
/// plugin sees only its own processes (not the root-owned init). Must run in
/// a process of that namespace (the kernel takes the mounting process's pid
/// namespace).
///
/// # Errors
/// The mount failed.
pub fn mount_proc() -> Result<(), StepError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        "proc",
        Some("proc"),
        flags,
        Some("hidepid=invisible"),
    )
    .step("mount proc on", "/proc")
}

/// Step: make the `/dev` tmpfs read-only now that its files exist.
///
/// # Errors
/// `mount_setattr` failed.
pub fn seal_dev() -> Result<(), StepError> {
    mount_setattr(c"dev", false, attr::RDONLY | attr::NOSUID | attr::NOEXEC)
        .step("mount read-only", "/dev")
}

/// Step: `pivot_root(".", ".")` then detach the old root, which is stacked on
/// the same directory; afterwards nothing of the host tree is reachable.
///
/// # Errors
/// `pivot_root`, `umount2` or `chdir` failed.
pub fn pivot() -> Result<(), StepError> {
    nix::unistd::pivot_root(".", ".").step("pivot_root", STAGING_DIR)?;
    umount2(".", MntFlags::MNT_DETACH).step("detach old root", "/")?;
    nix::unistd::chdir("/").step("chdir", "/")
}

/// Step: the root tmpfs becomes read-only.
///
/// # Errors
/// `mount_setattr` failed.
pub fn make_root_read_only() -> Result<(), StepError> {
    mount_setattr(c"/", false, attr::RDONLY | attr::NOSUID | attr::NODEV)
        .step("mount read-only", "/")
}

// ------------------------------------------------- pre-warmed (pool) path

/// What a pre-warmed root holds: target, device and inode of every
/// spec-independent bind. The launcher claims a pooled stub only when the
/// fresh plan's base binds are the same objects.
pub type BaseFingerprint = Vec<(CString, u64, u64)>;

impl MountPlan {
    /// Target, device and inode of the spec-independent binds.
    pub fn base_fingerprint(&self) -> BaseFingerprint {
        self.binds
            .iter()
            .filter(|b| b.base)
            .map(|b| (b.target.clone(), b.dev, b.ino))
            .collect()
    }

    /// Number of spec-dependent binds (`/plugin`, `/data`, `read_only`,
    /// the API socket): the descriptors a claim carries.
    pub fn spec_bind_count(&self) -> usize {
        self.binds.iter().filter(|b| !b.base).count()
    }
}

/// `open_tree(fd, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | AT_RECURSIVE)`: a
/// detached copy of the mount tree at `fd`, as a descriptor.
fn open_tree_clone(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint
        | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree reads a NUL-terminated empty path and an open descriptor; it returns a new descriptor or -1.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    let raw = Errno::result(rc)?;
    let raw = RawFd::try_from(raw).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attach a
/// detached tree at `target` (relative to the working directory).
fn move_mount_to(fd: &OwnedFd, target: &CStr) -> Result<(), Errno> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: both paths are NUL-terminated strings and `fd` an open detached-mount descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(drop)
}

/// Claim time, in the launcher (host mount namespace): a detached copy
/// (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`) of every spec-dependent bind
/// source, in plan order, each re-opened without following symlinks and
/// refused unless it is the object `prepare` checked (same device and
/// inode). The pre-warmed stub's old root is long gone, so it cannot open
/// host paths itself; it attaches these with `move_mount`.
///
/// # Errors
/// A source cannot be opened or cloned, or was replaced.
pub fn clone_spec_sources(plan: &MountPlan) -> Result<Vec<OwnedFd>, PrepareError> {
    let mut fds = Vec::new();
    for b in plan.binds.iter().filter(|b| !b.base) {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b.source.to_bytes()));
        let err = |errno| PrepareError::Open {
            what: "bind source",
            path: path.clone(),
            errno,
        };
        let fd = open_no_symlinks(&b.source).map_err(err)?;
        let st = fstat(&fd).map_err(err)?;
        if st.st_dev != b.dev || st.st_ino != b.ino {
            return Err(err(Errno::ESTALE));
        }
        fds.push(open_tree_clone(&fd).map_err(err)?);
    }
    Ok(fds)
}

/// Pre-warm steps (pool stub, right after `unshare(CLONE_NEWNS)`, before
/// any spec is known): `/` rprivate, the spec-independent part of the tree
/// (`base`: root tmpfs, skeleton, `/dev` with the devices, system trees,
/// `/etc` files; bind sources re-opened and checked as in the cold path),
/// then `pivot_root` and detach the old root. The detach waits for an RCU
/// grace period; here it is off the spawn's critical path. The root stays
/// writable until the claim adds the spec's parts.
///
/// # Errors
/// A step failed.
pub fn prewarm_root(base: &MountPlan) -> Result<(), StepError> {
    make_root_private()?;
    let sources = open_sources(base)?;
    mount_root_tmpfs(base)?;
    create_skeleton(base)?;
    mount_dev(base)?;
    create_mount_points(base)?;
    bind_all(base, &sources)?;
    drop(sources);
    pivot()
}

/// The mount points of `mountinfo` (field 5, unescaped), each as often as
/// it is stacked.
fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(crate::host::unescape_mountinfo)
        .collect()
}

/// Host paths a pool slot's inits reach before their `pivot_root`: the base
/// plan's bind sources (bound recursively: whatever is mounted under them
/// too), the trees they come from, and `/proc` (the binds go through
/// `/proc/self/fd`; `oom_score_adj`). Returns the paths whose ancestors
/// must stay mounted, and the bind sources, whose whole subtree must.
fn needed_host_paths(base: &MountPlan) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let sources: Vec<PathBuf> = base
        .binds
        .iter()
        .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(b.source.as_bytes())))
        .collect();
    let mut reached: Vec<PathBuf> = ["/proc", "/etc", "/dev"]
        .iter()
        .chain(SYSTEM_TREES)
        .map(PathBuf::from)
        .collect();
    reached.extend(sources.iter().cloned());
    (reached, sources)
}

/// Which of `mounts` to detach so that only `/`, the ancestors of
/// `reached` and whatever lies under `subtrees` are left: shallowest first,
/// nothing under a mount already detached (it goes with it), a stacked
/// mount point once per mount.
fn mounts_to_detach(
    mut mounts: Vec<PathBuf>,
    reached: &[PathBuf],
    subtrees: &[PathBuf],
) -> Vec<PathBuf> {
    mounts.sort_by_key(|m| m.components().count());
    let mut detach: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let kept =
            reached.iter().any(|k| k.starts_with(&m)) || subtrees.iter().any(|t| m.starts_with(t));
        let gone = detach.iter().any(|d| m.starts_with(d) && *d != m);
        if !kept && !gone {
            detach.push(m);
        }
    }
    detach
}

/// Zygote step (a pool slot, once): a mount namespace of the zygote's own,
/// a slave of the host's (mounts and unmounts on the host still reach it
/// where the host's mounts are shared), with every host mount detached that
/// its inits do not reach before `pivot_root` (`needed_host_paths`).
/// Each init copies its forker's mount table with `unshare(CLONE_NEWNS)`,
/// makes it private and detaches it again at `pivot_root`: with `/sys` and
/// its cgroup hierarchies, `/dev/pts`, container and tool mounts gone, that
/// is 5 mounts instead of 21 on the lab host (hundreds on a host with many
/// containers). Returns how many mounts were detached. Where a host mount
/// changes later and does not propagate (a private host root), the zygote
/// notices before its next fork ([`base_sources_match`]) and is replaced.
///
/// # Errors
/// `unshare`, the propagation change or reading `mountinfo` failed (a
/// mount that cannot be detached is left).
pub fn trim_host_mounts(base: &MountPlan) -> Result<usize, StepError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).step("unshare", "CLONE_NEWNS")?;
    root_propagation(MsFlags::MS_SLAVE, "make slave")?;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").step("read", "/proc/self/mountinfo")?;
    let mut detached = 0;
    let (reached, subtrees) = needed_host_paths(base);
    for m in mounts_to_detach(mount_points(&info), &reached, &subtrees) {
        if umount2(&m, MntFlags::MNT_DETACH).is_ok() {
            detached += 1;
        }
    }
    Ok(detached)
}

/// Zygote step, before each fork: the base plan's bind sources are, in the
/// zygote's mount namespace, the objects the launcher checked in its own
/// (`false`: a host mount changed since [`trim_host_mounts`] and did not
/// propagate; the slot is replaced rather than its init failing).
pub fn base_sources_match(base: &MountPlan) -> bool {
    base.binds.iter().filter(|b| b.base).all(|b| {
        open_no_symlinks(&b.source)
            .and_then(|fd| fstat(&fd))
            .is_ok_and(|st| st.st_dev == b.dev && st.st_ino == b.ino)
    })
}

/// Claim step (pre-warmed stub): the spec-independent binds in the
/// pre-warmed root are the objects the launcher just checked.
///
/// # Errors
/// A bind is missing or another object.
pub fn check_base(plan: &MountPlan) -> Result<(), StepError> {
    for b in plan.binds.iter().filter(|b| b.base) {
        let st = nix::sys::stat::stat(b.target.as_c_str()).step("stat", &b.display)?;
        if st.st_dev != b.dev || st.st_ino != b.ino {
            return Err(StepError::other(
                "check pre-warmed bind",
                format!("{} is not what the launcher checked", b.display),
            ));
        }
    }
    Ok(())
}

/// Claim step (init of a pre-warmed sandbox, root already pivoted): create
/// the mount points of the spec-dependent binds and attach the detached
/// trees from [`clone_spec_sources`] with `move_mount`, each followed by
/// its attributes (`mount_setattr`, recursive), as [`bind_all`] does.
///
/// # Errors
/// A mount point, `move_mount` or `mount_setattr` failed, or the number of
/// descriptors does not match the plan.
pub fn attach_spec_binds(plan: &MountPlan, trees: &[OwnedFd]) -> Result<(), StepError> {
    let binds: Vec<&Bind> = plan.binds.iter().filter(|b| !b.base).collect();
    if binds.len() != trees.len() {
        return Err(StepError::other(
            "attach binds",
            format!("{} sources for {} binds", trees.len(), binds.len()),
        ));
    }
    for d in &plan.dirs {
        match nix::unistd::mkdir(d.as_c_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(StepError::sys(
                    "mkdir",
                    format!("/{}", d.to_string_lossy()),
                    e,
                ));
            }
        }
    }
    for (b, tree) in binds.into_iter().zip(trees) {
        if plan.files.contains(&b.target) {
            nix::fcntl::open(
                b.target.as_c_str(),
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .step("create mount point", &b.display)?;
        }
        move_mount_to(tree, b.target.as_c_str()).step("move_mount", &b.display)?;
        let what = if b.attrs & attr::RDONLY != 0 {
            "mount read-only"
        } else {
            "set mount attributes"
        };
        mount_setattr(b.target.as_c_str(), true, b.attrs).step(what, &b.display)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_are_decoded_and_stacked_ones_repeat() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    27 1 8:1 / / rw - ext4 /dev/vda1 rw\n\
                    30 24 0:25 / /dev/pts rw - devpts devpts rw\n\
                    31 24 0:26 / /dev/pts rw - devpts devpts rw\n\
                    40 27 0:30 / /mnt/a\\040b\\134c rw - tmpfs tmpfs rw\n";
        let got = mount_points(info);
        let want: Vec<PathBuf> = ["/proc", "/", "/dev/pts", "/dev/pts", "/mnt/a b\\c"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
        // Not an escape: a backslash without three octal digits stays.
        assert_eq!(
            crate::host::unescape_mountinfo("/x\\09y"),
            PathBuf::from("/x\\09y")
        );
    }

    #[test]
    fn only_ancestors_of_needed_paths_stay_mounted() {
        let mounts: Vec<PathBuf> = [
            "/",
            "/proc",
            "/sys",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/memory",
            "/dev",
            "/dev/pts",
            "/dev/pts",
            "/dev/shm",
            "/usr",
            "/usr/local/x",
            "/proc/sys/fs/binfmt_misc",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let reached: Vec<PathBuf> = ["/proc", "/dev/null", "/usr/share/zoneinfo/UTC", "/etc"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let subtrees = vec![PathBuf::from("/usr"), PathBuf::from("/dev/null")];
        let detach = mounts_to_detach(mounts, &reached, &subtrees);
        let want: Vec<PathBuf> = [
            "/sys",
            "/dev/pts",
            "/dev/pts",
            "/dev/shm",
            "/proc/sys/fs/binfmt_misc",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        // The cgroup mounts go with /sys; /usr/local/x stays (the /usr bind
        // is recursive: sandboxes see it).
        assert_eq!(detach, want);
    }

    fn spec_with_read_only(p: &str) -> Result<SandboxSpec, std::io::Error> {
        let dir = std::env::temp_dir();
        let mut spec = SandboxSpec::new("t", dir, PathBuf::from("/bin/true"), 1, 1);
        spec.read_only = vec![PathBuf::from(p)];
        Ok(spec)
    }

    #[test]
    fn read_only_resolving_under_proc_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        // Not under /tmp, which is a reserved in-sandbox target.
        let dir = tempfile::tempdir_in("/var/tmp")?;
        let link = dir.path().join("innocent");
        std::os::unix::fs::symlink("/proc/self", &link)?;
        let spec = spec_with_read_only(&link.to_string_lossy())?;
        match MountPlan::prepare(&spec) {
            Err(PrepareError::Forbidden {
                prefix: "/proc", ..
            }) => Ok(()),
            other => Err(format!("expected Forbidden, got {other:?}").into()),
        }
    }

    #[test]
    fn read_only_with_dotdot_or_reserved_target_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        for p in ["/usr/../etc", "/tmp/x", "/", "/etc", "relative"] {
            let spec = spec_with_read_only(p)?;
            assert!(
                matches!(
                    MountPlan::prepare(&spec),
                    Err(PrepareError::BadTarget { .. })
                ),
                "{p} was accepted"
            );
        }
        Ok(())
    }

    #[test]
    fn sockets_in_read_only_trees_are_masked_and_world_writable_dirs_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir_in("/var/tmp")?;
        std::fs::create_dir(dir.path().join("sub"))?;
        let _l = std::os::unix::net::UnixListener::bind(dir.path().join("sub/s.sock"))?;
        let spec = spec_with_read_only(&dir.path().to_string_lossy())?;
        let plan = MountPlan::prepare(&spec)?;
        let want = cstring(&relative(&dir.path().join("sub/s.sock")));
        assert_eq!(plan.masks, vec![want]);
        std::fs::set_permissions(
            dir.path().join("sub"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        match MountPlan::prepare(&spec) {
            Err(PrepareError::Unsafe { .. }) => Ok(()),
            other => Err(format!("expected Unsafe, got {other:?}").into()),
        }
    }

    #[test]
    fn plan_binds_plugin_and_devices_and_links_merged_usr() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let spec = SandboxSpec::new("t", dir.path().to_owned(), PathBuf::from("/bin/true"), 1, 1);
        let plan = MountPlan::prepare(&spec)?;
        let targets: Vec<&str> = plan.binds.iter().map(|b| b.display.as_str()).collect();
        assert!(targets.contains(&"/plugin"), "{targets:?}");
        assert!(targets.contains(&"/dev/null"), "{targets:?}");
        assert!(targets.contains(&"/usr"), "{targets:?}");
        if std::fs::symlink_metadata("/bin")?.file_type().is_symlink() {
            assert!(plan.symlinks.iter().any(|(_, l)| l.as_c_str() == c"bin"));
        }
        Ok(())
    }
}
