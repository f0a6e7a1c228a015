//! Reading a bundle back: the manifest, and a check of every entry against
//! the sizes and sha256 sums it lists (`hvflight bundle verify`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Manifest;

/// Reads only the manifest (the first entry).
pub fn manifest(path: &Path) -> Result<Manifest, String> {
    with_entries(path, |entries| read_manifest(path, entries))
}

/// Opens the bundle once and hands its entries, in archive order, to `f`.
fn with_entries<T>(
    path: &Path,
    f: impl FnOnce(&mut tar::Entries<'_, zstd::Decoder<'static, BufReader<File>>>) -> Result<T, String>,
) -> Result<T, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dec = zstd::Decoder::new(file).map_err(|e| format!("{}: not zstd: {e}", path.display()))?;
    let mut ar = tar::Archive::new(dec);
    let mut entries = ar
        .entries()
        .map_err(|e| format!("{}: not a tar archive: {e}", path.display()))?;
    f(&mut entries)
}

/// The first entry of `entries`, which must be the manifest.
fn read_manifest<R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'_, R>,
) -> Result<Manifest, String> {
    let mut first = entries
        .next()
        .ok_or_else(|| format!("{}: empty archive", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let name = first
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if name != "manifest.json" {
        return Err(format!(
            "{}: first entry is {name:?}, not manifest.json",
            path.display()
        ));
    }
    let mut s = String::new();
    first
        .read_to_string(&mut s)
        .map_err(|e| format!("{}: manifest: {e}", path.display()))?;
    serde_json::from_str(&s).map_err(|e| format!("{}: manifest.json: {e}", path.display()))
}

/// Checks every entry; returns the manifest and the problems found (empty = good).
///
/// The file is opened once and the manifest read from the same stream as
/// the entries: the agent replaces a bundle by its complete version (a
/// rename), and a manifest read from one file checked against the entries
/// of the other reported damage that was not there.
pub fn verify(path: &Path) -> Result<(Manifest, Vec<String>), String> {
    with_entries(path, |entries| {
        let m = read_manifest(path, entries)?;
        let problems = check_entries(&m, entries);
        Ok((m, problems))
    })
}

/// The problems of the entries after the manifest against what `m` lists.
fn check_entries<R: Read>(m: &Manifest, entries: &mut tar::Entries<'_, R>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in entries {
        let mut e = match e {
            Ok(e) => e,
            Err(err) => {
                problems.push(format!("archive damaged: {err}"));
                break;
            }
        };
        let name = e
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if name == "manifest.json" {
            continue;
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            match e.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    h.update(&buf[..n]);
                    size += n as u64;
                }
                Err(err) => {
                    problems.push(format!("{name}: unreadable: {err}"));
                    break;
                }
            }
        }
        let sum: String = h.finalize().iter().map(|x| format!("{x:02x}")).collect();
        match m.entries.iter().find(|x| x.name == name) {
            None => problems.push(format!("{name}: not listed in the manifest")),
            Some(x) if x.size != size => {
                problems.push(format!("{name}: {size} bytes, manifest says {}", x.size))
            }
            Some(x) if x.sha256 != sum => {
                problems.push(format!("{name}: sha256 {sum}, manifest says {}", x.sha256))
            }
            Some(_) => {}
        }
        seen.insert(name);
    }
    for x in &m.entries {
        if !seen.contains(&x.name) {
            problems.push(format!("{}: listed in the manifest but missing", x.name));
        }
    }
    problems
}
