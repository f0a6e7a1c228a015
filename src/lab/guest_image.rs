//! The real guests' boot image: the Debian cloud kernel, fetched through apt
//! (`apt-get download` + `dpkg -x`, nothing else is downloaded), and a small
//! initramfs of busybox-static, the virtio NIC modules and `guest_init.sh`.
//! Built once and cached in the build directory, one directory per kernel
//! version (`target/lab-guest/6.1.0-57-cloud-amd64/`), so tests and demos
//! boot from the cache without touching apt's network.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::LabError;

/// The Debian metapackage that depends on the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest loads, in insmod order (each needs the ones before it).
/// virtio_net for the NIC; button + evdev so `virsh shutdown` (ACPI power
/// button) reaches the guest's init.
pub const MODULES: [&str; 10] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "button",
    "evdev",
];

/// busybox-static's binary (Debian package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

const INIT_TEMPLATE: &str = include_str!("guest_init.sh");

/// Where the image is cached unless told otherwise: `$HVFLIGHT_LAB_GUEST_DIR`,
/// else `lab-guest/` in the cargo target directory the running binary lives
/// in (`target/debug/deps/x` and `target/release/hvflight` both find
/// `target/`), else `/var/cache/hvflight/lab-guest`.
pub fn default_build_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HVFLIGHT_LAB_GUEST_DIR") {
        return PathBuf::from(d);
    }
    target_dir()
        .map(|t| t.join("lab-guest"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/hvflight/lab-guest"))
}

/// Where guests' console logs are kept when a test or demo fails:
/// `lab-artifacts/` next to the image cache.
pub fn default_artifacts_dir() -> PathBuf {
    let build = default_build_dir();
    build
        .parent()
        .map(|p| p.join("lab-artifacts"))
        .unwrap_or_else(|| PathBuf::from("/var/tmp/hvflight-lab-artifacts"))
}

fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
}

/// A bootable guest: kernel and initramfs on disk.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// e.g. "6.1.0-57-cloud-amd64"
    pub kernel_version: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// What this call had to do ("cached", or what it fetched/built).
    pub how: String,
}

/// The kernel package `apt-cache depends linux-image-cloud-amd64` names.
pub fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| is_cloud_kernel_package(p))
        .map(str::to_string)
}

/// The newest `linux-image-6.1.0-N-cloud-amd64` among package names (one a line).
pub fn newest_cloud_package(names: &str) -> Option<String> {
    names
        .lines()
        .map(str::trim)
        .filter(|p| is_cloud_kernel_package(p))
        .max_by_key(|p| abi_number(p))
        .map(str::to_string)
}

fn is_cloud_kernel_package(p: &str) -> bool {
    p.strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-cloud-amd64"))
        .is_some_and(|v| {
            let parts: Vec<&str> = v.split(['.', '-']).collect();
            parts.len() == 4 && parts.iter().all(|x| x.parse::<u32>().is_ok())
        })
}

fn abi_number(p: &str) -> u32 {
    p.trim_end_matches("-cloud-amd64")
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The cloud kernel package apt would install now (local apt metadata only,
/// no network): the metapackage's dependency, else the newest listed.
/// Asked once per process (apt-cache takes seconds on a busy machine).
pub fn resolve_package() -> Result<String, LabError> {
    static RESOLVED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    RESOLVED
        .get_or_init(|| ask_apt().map_err(|e| e.to_string()))
        .clone()
        .map_err(LabError::Invalid)
}

fn ask_apt() -> Result<String, LabError> {
    if let Ok(out) = super::run(&["apt-cache", "depends", KERNEL_META_PACKAGE]) {
        if let Some(p) = parse_depends(&out) {
            return Ok(p);
        }
    }
    let names = super::run(&["apt-cache", "pkgnames", "linux-image-6.1.0-"])?;
    newest_cloud_package(&names).ok_or_else(|| {
        LabError::Invalid(
            "apt knows no linux-image-6.1.0-*-cloud-amd64 package (is bookworm in sources.list? run apt-get update); the real-guest lab boots that kernel".into(),
        )
    })
}

/// The init script with the module list filled in.
fn init_script() -> String {
    INIT_TEMPLATE.replace("@MODULES@", &MODULES.join(" "))
}

/// Cache key of the initramfs: init script, module order and busybox itself.
fn initrd_key() -> Result<String, LabError> {
    let mut h = Sha256::new();
    h.update(init_script().as_bytes());
    let mut bb = Vec::new();
    std::fs::File::open(BUSYBOX)
        .and_then(|mut f| f.read_to_end(&mut bb))
        .map_err(|e| {
            LabError::Invalid(format!("{BUSYBOX}: {e} (Debian package busybox-static)"))
        })?;
    h.update(&bb);
    let d = h.finalize();
    Ok(d.iter().take(6).map(|b| format!("{b:02x}")).collect())
}

fn kernel_dir(build_dir: &Path, kver: &str) -> PathBuf {
    build_dir.join(kver)
}

fn kernel_complete(dir: &Path) -> bool {
    dir.join("vmlinuz").is_file()
        && MODULES
            .iter()
            .all(|m| dir.join("modules").join(format!("{m}.ko")).is_file())
}

/// The newest kernel already in the cache (for machines where apt cannot tell).
fn newest_cached(build_dir: &Path) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(build_dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| kernel_complete(&build_dir.join(n)))
        .map(|n| format!("linux-image-{n}"))
        .collect();
    newest_cloud_package(&names.join("\n")).map(|p| p["linux-image-".len()..].to_string())
}

/// True when a complete image for the current kernel (or, without apt, any
/// kernel) is in the cache: no download needed.
pub fn is_cached(build_dir: &Path) -> bool {
    match resolve_package() {
        Ok(p) => kernel_complete(&kernel_dir(build_dir, &p["linux-image-".len()..])),
        Err(_) => newest_cached(build_dir).is_some(),
    }
}

/// Returns the image, fetching the kernel through apt and building the
/// initramfs only when the cache lacks them. Concurrent callers wait on a
/// lock in `build_dir`; everything is built under a temporary name and
/// renamed into place, so a crash never leaves a half image behind.
pub fn ensure(build_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<GuestImage, LabError> {
    mkdir_world_readable(build_dir)?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(build_dir.join(".lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| LabError::Invalid(format!("lock {}: {e}", build_dir.display())))?;

    let kver = match resolve_package() {
        Ok(p) => p["linux-image-".len()..].to_string(),
        Err(e) => match newest_cached(build_dir) {
            Some(k) => {
                progress(&format!(
                    "apt cannot name the kernel ({e}); using the cached {k}"
                ));
                k
            }
            None => return Err(e),
        },
    };
    let dir = kernel_dir(build_dir, &kver);
    let mut how = Vec::new();
    if !kernel_complete(&dir) {
        fetch_kernel(build_dir, &kver, progress)?;
        how.push(format!("fetched linux-image-{kver} through apt"));
    }
    let key = initrd_key()?;
    let initrd = dir.join(format!("initrd-{key}.img"));
    if !initrd.is_file() {
        progress(&format!(
            "building the guest initramfs ({})",
            initrd.display()
        ));
        build_initrd(&dir, &initrd)?;
        how.push("built the initramfs".to_string());
    }
    let kernel = dir.join("vmlinuz");
    check_traversable(&kernel)?;
    Ok(GuestImage {
        kernel_version: kver,
        kernel,
        initrd,
        how: if how.is_empty() {
            "cached".into()
        } else {
            how.join(", ")
        },
    })
}

fn mkdir_world_readable(d: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(d).map_err(|e| LabError::Invalid(format!("{}: {e}", d.display())))?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// libvirt runs qemu as libvirt-qemu, which must reach the kernel and
/// initramfs: every directory above them must be world-traversable.
pub fn check_traversable(file: &Path) -> Result<(), LabError> {
    let abs = std::fs::canonicalize(file)
        .map_err(|e| LabError::Invalid(format!("{}: {e}", file.display())))?;
    for dir in abs.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(LabError::Invalid(format!(
                "{} is not world-traversable (mode {:o}): libvirt runs qemu as libvirt-qemu, which must reach {}; chmod o+x {} or set HVFLIGHT_LAB_GUEST_DIR to a directory it can reach",
                dir.display(),
                mode & 0o7777,
                abs.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// `apt-get download` + `dpkg -x`, keeping only vmlinuz and the modules.
fn fetch_kernel(
    build_dir: &Path,
    kver: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let pkg = format!("linux-image-{kver}");
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(build_dir)?;
    progress(&format!(
        "apt-get download {pkg} (once; cached in {})",
        build_dir.display()
    ));
    let out = Command::new("apt-get")
        // The download runs as root into our directory; apt's _apt sandbox
        // user could not write there.
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", &pkg])
        .current_dir(tmp.path())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: "apt-get download".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("apt-get download {pkg}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let deb = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| LabError::Invalid(format!("apt-get download {pkg} left no .deb")))?;
    let x = tmp.path().join("x");
    let (deb_s, x_s) = (deb.display().to_string(), x.display().to_string());
    super::run(&["dpkg", "-x", &deb_s, &x_s])?;

    let stage = tmp.path().join("stage");
    std::fs::create_dir_all(stage.join("modules"))?;
    let vmlinuz = x.join("boot").join(format!("vmlinuz-{kver}"));
    copy_readable(&vmlinuz, &stage.join("vmlinuz"))?;
    let mod_root = x.join("lib/modules").join(kver);
    for m in MODULES {
        let found = find_file(&mod_root, &format!("{m}.ko")).ok_or_else(|| {
            LabError::Invalid(format!(
                "{pkg} has no {m}.ko under {} (compressed modules are not supported)",
                mod_root.display()
            ))
        })?;
        copy_readable(&found, &stage.join("modules").join(format!("{m}.ko")))?;
    }
    std::fs::set_permissions(&stage, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        stage.join("modules"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let dir = kernel_dir(build_dir, kver);
    if dir.exists() {
        // An incomplete earlier attempt (the lock rules out a concurrent one).
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&stage, &dir)?;
    Ok(())
}

fn copy_readable(from: &Path, to: &Path) -> Result<(), LabError> {
    std::fs::copy(from, to)
        .map_err(|e| LabError::Invalid(format!("copy {}: {e}", from.display())))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn find_file(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name() == name {
                return Some(p);
            }
        }
    }
    None
}

/// `find . | cpio -o -H newc | gzip` over a staging tree: /init, busybox, modules.
fn build_initrd(kernel_dir: &Path, out: &Path) -> Result<(), LabError> {
    let parent = out
        .parent()
        .ok_or_else(|| LabError::Invalid(format!("bad initrd path {}", out.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".initrd-")
        .tempdir_in(parent)?;
    let root = tmp.path().join("root");
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| {
        LabError::Invalid(format!("{BUSYBOX}: {e} (Debian package busybox-static)"))
    })?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    for m in MODULES {
        std::fs::copy(
            kernel_dir.join("modules").join(format!("{m}.ko")),
            root.join("lib/modules").join(format!("{m}.ko")),
        )?;
    }
    std::fs::write(root.join("init"), init_script())?;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let staged = tmp.path().join("initrd.img");
    let (root_s, staged_s) = (root.display().to_string(), staged.display().to_string());
    // cpio wants the file list on stdin; a two-stage pipe is what a shell is for.
    super::run(&[
        "bash",
        "-c",
        "set -euo pipefail; cd \"$1\"; find . | cpio --quiet -o -H newc | gzip -1 > \"$2\"",
        "bash",
        &root_s,
        &staged_s,
    ])?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&staged, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_from_apt_output() {
        // `apt-cache depends linux-image-cloud-amd64` on Debian 12 (captured here).
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
        let names = "linux-image-6.1.0-9-cloud-amd64\nlinux-image-6.1.0-50-cloud-amd64-dbg\nlinux-image-6.1.0-47-cloud-amd64\nlinux-image-6.1.0-50-cloud-amd64-unsigned\nlinux-image-6.1.0-50-amd64\n";
        assert_eq!(
            newest_cloud_package(names).as_deref(),
            Some("linux-image-6.1.0-47-cloud-amd64")
        );
        assert_eq!(newest_cloud_package(""), None);
    }

    #[test]
    fn init_script_loads_modules_in_order() {
        let s = init_script();
        assert!(s.contains("for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net button evdev; do"));
        assert!(!s.contains('@'));
    }

    #[test]
    fn untraversable_directories_are_named() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("vmlinuz"), b"x").unwrap();
        std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let e = check_traversable(&inner.join("vmlinuz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/a is not world-traversable (mode 750)"), "{e}");
        std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_traversable(&inner.join("vmlinuz")).unwrap();
    }
}
