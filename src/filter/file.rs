//! banctl's own filter files: TOML with `failregex`, `ignoreregex`, a `description`, an
//! optional `prefix` and optional modes. The built-in filters are written the same way.
//!
//! ```toml
//! description = "TightVNC: failed VNC authentication"
//! prefix = '{syslog}Xtightvnc\[\d+\]: '     # put before every failregex
//! failregex = ['authentication failed from <HOST>$']
//! ignoreregex = []
//!
//! [modes.aggressive]          # filter = "x[mode=aggressive]": these patterns too
//! failregex = ['connection dropped from <HOST>$']
//! # base = false              # …or only these
//! ```
//!
//! `{syslog}` in `prefix` is the start of a syslog line: `^`, then optionally a BSD
//! (`Nov 21 10:00:00`) or RFC 3339 timestamp and the host name; journal lines (`app[812]: …`)
//! have neither.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Filter, Pattern};

/// What `{syslog}` in a `prefix` stands for. ASCII classes only (a host name is printable
/// ASCII): Unicode `\d` and `\S` would grow the automaton every line goes through.
pub const SYSLOG_START: &str = r"^(?:(?:[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?) [!-~]+ )?";

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct FilterFileError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// A filter read from a file.
#[derive(Debug, Clone)]
pub struct FilterFile {
    pub filter: Filter,
    pub description: Option<String>,
    /// The modes the file offers besides the default one.
    pub modes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    failregex: toml::Spanned<Vec<toml::Spanned<String>>>,
    #[serde(default)]
    ignoreregex: Vec<toml::Spanned<String>>,
    #[serde(default)]
    modes: BTreeMap<String, RawMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMode {
    failregex: Vec<toml::Spanned<String>>,
    /// Whether the file's own `failregex` still apply in this mode.
    #[serde(default = "yes")]
    base: bool,
}

fn yes() -> bool {
    true
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// The mode filter options (`name[mode=aggressive]`) ask for: `None` for the default one
/// (also spelled `normal`). `mode` is the only option banctl filter files take.
pub fn mode_of<'a>(name: &str, options: &'a [(String, String)]) -> Result<Option<&'a str>, String> {
    let mut mode = None;
    for (key, value) in options {
        match key.as_str() {
            "mode" if value == "normal" => mode = None,
            "mode" => mode = Some(value.as_str()),
            other => return Err(format!("filter {name}: no option {other:?} (only mode)")),
        }
    }
    Ok(mode)
}

/// The largest filter file read: the biggest built-in filter is a few kilobytes.
pub const MAX_FILTER_FILE: u64 = 1 << 20;

/// Reads the banctl filter file at `path`, in the mode `options` ask for.
pub fn read_filter_file(path: &str, options: &[(String, String)]) -> Result<FilterFile, String> {
    let mode = mode_of(path, options)?;
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read filter file {path}: {e}");
    // A log named where the filter goes would otherwise be parsed whole, at gigabytes of memory.
    let size = std::fs::metadata(path).map_err(|e| cannot(&e))?.len();
    if size > MAX_FILTER_FILE {
        return Err(cannot(&format_args!(
            "{size} bytes is no filter file (at most {MAX_FILTER_FILE})"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| cannot(&e))?;
    parse_filter_file_in_mode(path, &text, mode).map_err(|e| e.to_string())
}

/// Parses a filter file's text; `file` only names it in errors. Reports the first error.
pub fn parse_filter_file(file: &str, text: &str) -> Result<FilterFile, FilterFileError> {
    parse_filter_file_in_mode(file, text, None)
}

/// Like [`parse_filter_file`], in one of the file's modes (`None`: the default one).
pub fn parse_filter_file_in_mode(
    file: &str,
    text: &str,
    mode: Option<&str>,
) -> Result<FilterFile, FilterFileError> {
    let error = |span: std::ops::Range<usize>, key: &str, message: String| FilterFileError {
        file: file.to_owned(),
        line: line_of(text, span.start),
        key: key.to_owned(),
        message,
    };
    let raw: RawFilter = toml::from_str(text).map_err(|e| {
        error(
            e.span().unwrap_or(0..0),
            "(file)",
            e.message().trim().to_owned(),
        )
    })?;
    if raw.failregex.get_ref().is_empty() {
        return Err(error(
            raw.failregex.span(),
            "failregex",
            "at least one pattern is needed".into(),
        ));
    }
    let modes: Vec<String> = raw.modes.keys().cloned().collect();
    let chosen = match mode {
        None => None,
        Some(name) => Some(raw.modes.get(name).ok_or_else(|| {
            error(
                0..0,
                "mode",
                format!("no mode {name:?} (modes: {})", modes.join(", ")),
            )
        })?),
    };
    let written_prefix = raw.prefix.as_deref().unwrap_or_default();
    let prefix = written_prefix.replace("{syslog}", SYSLOG_START);
    let base = chosen.is_none_or(|m| m.base);
    let patterns = raw
        .failregex
        .get_ref()
        .iter()
        .filter(|_| base)
        .enumerate()
        .map(|(i, p)| (format!("failregex[{i}]"), p))
        .chain(chosen.into_iter().flat_map(|m| {
            m.failregex.iter().enumerate().map(|(i, p)| {
                let name = mode.unwrap_or_default();
                (format!("modes.{name}.failregex[{i}]"), p)
            })
        }));
    let mut fail = Vec::new();
    for (key, p) in patterns {
        let pattern = Pattern::fail(&format!("{prefix}{}", p.get_ref()))
            .map_err(|e| error(p.span(), &key, e.to_string()))?
            .shown_as(format!("{written_prefix}{}", p.get_ref()));
        fail.push(pattern);
    }
    let mut ignore = Vec::new();
    for (i, p) in raw.ignoreregex.iter().enumerate() {
        ignore.push(
            Pattern::ignore(p.get_ref())
                .map_err(|e| error(p.span(), &format!("ignoreregex[{i}]"), e.to_string()))?,
        );
    }
    Ok(FilterFile {
        filter: Filter::new(fail, ignore),
        description: raw.description,
        modes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_patterns_and_names_the_line_of_a_bad_one() {
        let f = parse_filter_file(
            "vnc.toml",
            "description = \"x\"\nfailregex = ['^auth failed from <HOST>$']\n",
        )
        .unwrap();
        assert!(f.filter.find("auth failed from 192.0.2.4").is_some());
        assert_eq!(f.description.as_deref(), Some("x"));
        let e =
            parse_filter_file("vnc.toml", "failregex = [\n  '^no host here$',\n]\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "failregex[0]"), "{e}");
        let e = parse_filter_file("vnc.toml", "failregx = []\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn prefix_and_modes() {
        let text = r"
prefix = '{syslog}vnc\[\d+\]: '
failregex = ['auth failed from <HOST>$']
[modes.extra]
failregex = ['dropped <HOST>$']
[modes.only]
base = false
failregex = ['dropped <HOST>$']
";
        let line = |rest: &str| format!("Nov 21 10:00:00 host vnc[1]: {rest}");
        let normal = parse_filter_file("f", text).unwrap();
        assert_eq!(normal.modes, ["extra", "only"]);
        // Shown as written: the prefix's `{syslog}` is not expanded in `banctl test`'s list.
        assert_eq!(
            normal.filter.patterns()[0].source(),
            r"{syslog}vnc\[\d+\]: auth failed from <HOST>$"
        );
        assert!(
            normal
                .filter
                .find(&line("auth failed from 192.0.2.4"))
                .is_some()
        );
        assert!(
            normal
                .filter
                .find("vnc[1]: auth failed from 192.0.2.4")
                .is_some()
        );
        assert!(normal.filter.find(&line("dropped 192.0.2.4")).is_none());
        // The prefix anchors: the program name must be where syslog puts it.
        assert!(
            normal
                .filter
                .find("x vnc[1]: auth failed from 192.0.2.4")
                .is_none()
        );
        let extra = parse_filter_file_in_mode("f", text, Some("extra")).unwrap();
        assert_eq!(extra.filter.patterns().len(), 2);
        let only = parse_filter_file_in_mode("f", text, Some("only")).unwrap();
        assert!(
            only.filter
                .find(&line("auth failed from 192.0.2.4"))
                .is_none()
        );
        assert!(only.filter.find(&line("dropped 192.0.2.4")).is_some());
        let e = parse_filter_file_in_mode("f", text, Some("ddos")).unwrap_err();
        assert!(
            e.message.contains("no mode \"ddos\" (modes: extra, only)"),
            "{e}"
        );
    }
}
