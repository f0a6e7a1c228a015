//! Object keys: `key_prefix` with `{host}`, `{date}` and `{case}` expanded,
//! then `case-<ID>/` when a case is set and the prefix does not place it,
//! then the bundle's file name. Pure.

/// Placeholders a prefix may use.
const PLACEHOLDERS: &[&str] = &["{host}", "{date}", "{case}"];

/// Checks a configured prefix: only known placeholders, no leading `/`, no `..`.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let mut rest = prefix.to_string();
    for p in PLACEHOLDERS {
        rest = rest.replace(p, "x");
    }
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "{prefix:?}: unknown placeholder; known: {}",
            PLACEHOLDERS.join(", ")
        ));
    }
    if prefix.starts_with('/') {
        return Err(format!("{prefix:?}: must not start with '/'"));
    }
    if prefix.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!("{prefix:?}: must not contain '.' or '..' segments"));
    }
    Ok(())
}

/// A case label as support tooling uses them: letters, digits, `-`, `_`, `.`.
pub fn check_case(case: &str) -> Result<(), String> {
    if case.is_empty()
        || case.len() > 64
        || case.starts_with('.')
        || !case
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "case {case:?}: use 1-64 letters, digits, '-', '_' or '.' (not starting with '.')"
        ));
    }
    Ok(())
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The object key of bundle `name` from `host`, incident time and case.
pub fn object_key(
    prefix: &str,
    host: &str,
    incident_unix_ns: i64,
    case: &str,
    name: &str,
) -> String {
    let date = &crate::clock::format_rfc3339(incident_unix_ns)[..10];
    let mut k = prefix
        .replace("{host}", &safe(host))
        .replace("{date}", date)
        .replace("{case}", &safe(case));
    if !case.is_empty() && !prefix.contains("{case}") {
        if !k.is_empty() && !k.ends_with('/') {
            k.push('/');
        }
        k.push_str(&format!("case-{}/", safe(case)));
    }
    // An empty {case} must not leave "//" behind.
    while k.contains("//") {
        k = k.replace("//", "/");
    }
    let k = k.trim_start_matches('/').to_string();
    format!("{k}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_425_004_200_123_000_000; // 2015-02-27T02:30:00Z

    #[test]
    fn default_prefix() {
        assert_eq!(
            object_key("{host}/{date}/", "virt1012", T, "", "hvflight-x.tar.zst"),
            "virt1012/2015-02-27/hvflight-x.tar.zst"
        );
    }

    #[test]
    fn case_goes_into_the_key() {
        assert_eq!(
            object_key("{host}/{date}/", "virt1012", T, "SR-4711", "b.tar.zst"),
            "virt1012/2015-02-27/case-SR-4711/b.tar.zst"
        );
        assert_eq!(
            object_key("cases/{case}/{host}/", "h", T, "42", "b.tar.zst"),
            "cases/42/h/b.tar.zst"
        );
        assert_eq!(
            object_key("cases/{case}/{host}/", "h", T, "", "b.tar.zst"),
            "cases/h/b.tar.zst"
        );
        assert_eq!(object_key("", "h", T, "", "b.tar.zst"), "b.tar.zst");
        assert_eq!(object_key("x", "h", T, "7", "b"), "x/case-7/b");
    }

    #[test]
    fn odd_host_names_are_made_safe() {
        assert_eq!(object_key("{host}/", "a b/c", T, "", "n"), "a_b_c/n");
    }

    #[test]
    fn prefix_and_case_checks() {
        assert!(check_prefix("{host}/{date}/").is_ok());
        assert!(check_prefix("{hostname}/")
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(check_prefix("/abs/").is_err());
        assert!(check_prefix("a/../b/").is_err());
        assert!(check_case("SR-4711").is_ok());
        assert!(check_case("a/b").is_err());
        assert!(check_case("").is_err());
        assert!(check_case("..").is_err());
    }
}
