//! What a filter spec names, for a jail's `filter = "…"` and for `banctl test`: one resolver,
//! so that both accept the same specs.
//!
//! A spec is `NAME[option=value,…]` where NAME is, in this order:
//! - a fail2ban filter file (`…/sshd.conf`, `….local`);
//! - a banctl filter file (a path with a `/`, or a name ending in `.toml`);
//! - a built-in filter (`sshd`);
//! - else an existing file, read as a banctl filter file.

use std::path::Path;

use crate::filter::{BUILTIN, Builtin, Filter};

/// A filter read from its spec.
pub struct Resolved {
    pub filter: Filter,
    /// What it is, for `banctl test`'s summary: `sshd (built-in: …)`, `x.conf (fail2ban
    /// filter)`, with notes on what of a fail2ban filter is not carried over.
    pub label: String,
    /// A fail2ban filter's `journalmatch` (what `banctl test systemd-journal` reads).
    pub journalmatch: Option<String>,
}

/// Reads the filter `spec` names, a relative file name taken from the working directory;
/// the error says why not.
pub fn resolve(spec: &str) -> Result<Resolved, String> {
    // A failregex written on the command line, as fail2ban-regex takes one.
    if ["<HOST>", "<ADDR>", "<IP4>", "<IP6>", "<DNS>"]
        .iter()
        .any(|tag| spec.contains(tag))
    {
        let definition = crate::fail2ban::Definition {
            failregex: vec![spec.to_owned()],
            ignoreregex: Vec::new(),
            prefregex: None,
            maxlines: 1,
            journalmatch: None,
            datepattern: None,
        };
        let read = definition
            .compile(Path::new("the regex"))
            .map_err(|e| e.to_string())?;
        return Ok(Resolved {
            filter: read.filter,
            label: format!("{spec} (a failregex, fail2ban's syntax)"),
            journalmatch: None,
        });
    }
    resolve_in(spec, None)
}

/// Like [`resolve`], a relative file name taken from `base` when given (a configuration
/// file's directory: `filter = "myfilter.toml"` next to `banctl.toml`).
pub fn resolve_in(spec: &str, base: Option<&Path>) -> Result<Resolved, String> {
    let (name, options) = crate::fail2ban::split_options(spec);
    let joined;
    let name = match base {
        Some(base) if Path::new(name).is_relative() && looks_like_a_file(name) => {
            joined = base.join(name).display().to_string();
            joined.as_str()
        }
        _ => name,
    };
    if name.ends_with(".conf") || name.ends_with(".local") || name.starts_with("filter.d/") {
        let path = fail2ban_filter_path(name);
        let read = crate::fail2ban::read_filter(&path, &options).map_err(|e| e.to_string())?;
        let mut label = if path == Path::new(name) {
            format!("{spec} (fail2ban filter)")
        } else {
            format!("{spec} (fail2ban filter {})", path.display())
        };
        for note in &read.notes {
            label.push_str(&format!("\n        note: {note}"));
        }
        return Ok(Resolved {
            filter: read.filter,
            label,
            journalmatch: read.journalmatch,
        });
    }
    let file = |name: &str| {
        crate::filter::read_filter_file(name, &options).map(|file| Resolved {
            journalmatch: None,
            label: match file.description {
                Some(d) => format!("{spec} ({d})"),
                None => spec.to_owned(),
            },
            filter: file.filter,
        })
    };
    if name.contains('/') || name.ends_with(".toml") {
        return file(name);
    }
    if let Some(b) = Builtin::by_name(name) {
        let read = b.read_with(&options)?;
        let description = read.description.unwrap_or_default();
        return Ok(Resolved {
            filter: read.filter,
            label: format!("{spec} (built-in: {description})"),
            journalmatch: None,
        });
    }
    if Path::new(name).is_file() {
        return file(name);
    }
    let known: Vec<&str> = BUILTIN.iter().map(|b| b.name).collect();
    Err(format!(
        "no built-in filter {name:?}{}: it is neither a built-in filter ({}) nor a file",
        crate::suggest::did_you_mean(name, known.iter().copied()),
        known.join(", ")
    ))
}

/// Where fail2ban's configuration is: `/etc/fail2ban`, or `BANCTL_FAIL2BAN_DIR`.
pub fn fail2ban_dir() -> std::path::PathBuf {
    std::env::var_os("BANCTL_FAIL2BAN_DIR")
        .map_or_else(|| "/etc/fail2ban".into(), std::path::PathBuf::from)
}

/// A fail2ban filter named as fail2ban-regex takes it: a path, or `sshd.conf` and
/// `filter.d/sshd` found in fail2ban's directory when not in the working one.
fn fail2ban_filter_path(name: &str) -> std::path::PathBuf {
    let file = if name.ends_with(".conf") || name.ends_with(".local") {
        name.to_owned()
    } else {
        format!("{name}.conf")
    };
    let given = Path::new(&file);
    if given.is_absolute() || given.exists() {
        return given.to_owned();
    }
    let dir = fail2ban_dir();
    [dir.join(&file), dir.join("filter.d").join(&file)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| given.to_owned())
}

/// Whether a spec's name is a file name rather than a built-in's.
fn looks_like_a_file(name: &str) -> bool {
    name.contains('/')
        || [".toml", ".conf", ".local"]
            .iter()
            .any(|e| name.ends_with(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `filter = "x.toml"` names the file next to the configuration, as `banctl test … x.toml`
    /// names it in the working directory.
    #[test]
    fn a_bare_toml_name_is_a_filter_file() {
        let dir = std::env::temp_dir().join(format!("banctl-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.toml"), "failregex = ['^bad <HOST>$']\n").unwrap();
        let r = resolve_in("x.toml", Some(&dir)).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.filter.find("bad 192.0.2.1").is_some());
        assert!(
            resolve_in("sshd[mode=ddos]", Some(&dir))
                .unwrap()
                .label
                .contains("built-in")
        );
        let e = resolve_in("nope", Some(&dir)).err().unwrap();
        assert!(e.contains("neither a built-in filter"), "{e}");
        let e = resolve_in("missing.toml", Some(&dir)).err().unwrap();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
