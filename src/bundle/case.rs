//! Recording a support case label in an existing bundle's manifest
//! (`hvflight bundle upload --case ID`): the archive is rewritten with the
//! new manifest first and every other entry as it was, to a temporary
//! name, fsynced, renamed — as the writer does.

use std::io::{Read, Write};
use std::path::Path;

use super::verify;

pub fn set_case(path: &Path, case: &str) -> Result<(), String> {
    let mut m = verify::manifest(path)?;
    if m.incident.case == case {
        return Ok(());
    }
    m.incident.case = case.to_string();
    let manifest = serde_json::to_vec_pretty(&m).expect("manifest serializes");
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.case.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let res = (|| -> std::io::Result<()> {
        let src = std::fs::File::open(path)?;
        let mut ar = tar::Archive::new(zstd::Decoder::new(src)?);
        let out = std::fs::File::create(&tmp)?;
        let mut tb = tar::Builder::new(zstd::Encoder::new(out, 3)?);
        for e in ar.entries()? {
            let mut e = e?;
            let name = e.path()?.display().to_string();
            let mut h = e.header().clone();
            if name == "manifest.json" {
                h.set_size(manifest.len() as u64);
                h.set_cksum();
                tb.append_data(&mut h, &name, manifest.as_slice())?;
            } else {
                let mut buf = Vec::with_capacity(h.size().unwrap_or(0) as usize);
                e.read_to_end(&mut buf)?;
                tb.append_data(&mut h, &name, buf.as_slice())?;
            }
        }
        let mut f = tb.into_inner()?.finish()?;
        f.flush()?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: recording case {case:?}: {e}", path.display()));
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::writer::{self, BundleConfig, DeepState};

    #[test]
    fn the_case_lands_in_the_manifest_and_every_entry_stays_intact() {
        let d = tempfile::tempdir().unwrap();
        let cfg = BundleConfig {
            dir: d.path().join("bundles"),
            store_dir: d.path().join("store"),
            host: "h".into(),
            before_s: 1,
            after_s: 0,
            command_timeout: std::time::Duration::from_secs(1),
            max_count: 5,
            max_bytes: 1 << 30,
            min_free_bytes: 0,
            libvirt_uri: "test:///default".into(),
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            announce: None,
            trim_file_pages: false,
        };
        let incident = crate::bundle::Incident {
            id: "c0ffee00".into(),
            trigger: "manual".into(),
            ts_unix_ns: 1_425_004_200_000_000_000,
            ..Default::default()
        };
        let mut deep = DeepState::in_memory();
        deep.add("deep/x.txt", b"some deep state");
        let p = writer::write(&cfg, &incident, &deep, None, incident.ts_unix_ns, true).unwrap();
        set_case(&p, "SR-4711").unwrap();
        let (m, problems) = verify::verify(&p).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.incident.case, "SR-4711");
        assert_eq!(m.incident.id, "c0ffee00");
        assert!(m.complete);
        // Same case again: nothing rewritten.
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        set_case(&p, "SR-4711").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
    }
}
