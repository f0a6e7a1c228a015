//! Object-store credentials from a TOML file readable by its owner only:
//!
//! ```toml
//! access_key_id = "…"
//! secret_access_key = "…"
//! # session_token = "…"   (temporary credentials)
//! ```
//!
//! A file that its group or others can read is refused (the error names the
//! file and its mode), as is one owned by another user than the agent's.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Deserialize;

use super::UploadError;

#[derive(Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug log.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Parses the file's text; `path` is used in messages only.
pub fn parse(text: &str, path: &str) -> Result<Credentials, UploadError> {
    let c: Credentials = toml::from_str(text).map_err(|e| UploadError::Credentials {
        path: path.into(),
        msg: e.message().trim().to_string(),
    })?;
    for (k, v) in [
        ("access_key_id", &c.access_key_id),
        ("secret_access_key", &c.secret_access_key),
    ] {
        if v.trim().is_empty() {
            return Err(UploadError::Credentials {
                path: path.into(),
                msg: format!("{k} is empty"),
            });
        }
    }
    Ok(c)
}

/// Refuses a file its group or others may read, or another user owns.
pub fn check_mode(path: &Path, mode: u32, uid: u32, our_uid: u32) -> Result<(), UploadError> {
    let p = path.display().to_string();
    if mode & 0o077 != 0 {
        return Err(UploadError::CredentialsMode {
            path: p,
            mode: mode & 0o7777,
        });
    }
    if uid != our_uid {
        return Err(UploadError::Credentials {
            path: p,
            msg: format!("owned by uid {uid}, not by the agent's uid {our_uid}"),
        });
    }
    Ok(())
}

/// Reads and checks the credentials file.
pub fn load(path: &Path) -> Result<Credentials, UploadError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| UploadError::Credentials {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    let md = f.metadata().map_err(|e| UploadError::Credentials {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    check_mode(path, md.mode(), md.uid(), nix::unistd::geteuid().as_raw())?;
    let text = std::io::read_to_string(f).map_err(|e| UploadError::Credentials {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    parse(&text, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_the_secret() {
        let c = parse(
            "access_key_id = \"test:tester\"\nsecret_access_key = \"testing\"\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.access_key_id, "test:tester");
        assert!(!format!("{c:?}").contains("testing\""));
    }

    #[test]
    fn errors_name_the_file() {
        let e = parse("access_key_id = \"a\"\n", "/etc/hvflight/c.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("credentials file /etc/hvflight/c.toml"),
            "{e}"
        );
        let e = parse("access_key_id = \"a\"\nsecret_access_key = \"\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("secret_access_key is empty"), "{e}");
    }

    #[test]
    fn group_or_world_readable_is_refused() {
        let p = Path::new("/etc/hvflight/c.toml");
        assert!(check_mode(p, 0o100600, 0, 0).is_ok());
        assert!(check_mode(p, 0o100400, 0, 0).is_ok());
        let e = check_mode(p, 0o100644, 0, 0).unwrap_err().to_string();
        assert!(e.contains("/etc/hvflight/c.toml is mode 0644"), "{e}");
        assert!(check_mode(p, 0o100640, 0, 0).is_err());
        assert!(check_mode(p, 0o100600, 1000, 0).is_err());
    }
}
