//! fail2ban filter files (`filter.d/*.conf`) turned into banctl filters.
//!
//! What fail2ban does with a filter, done here the same way: the `[Definition]` values are
//! interpolated (`%(name)s`), then tags are substituted recursively, innermost first
//! (`<mdre-<mode>>` becomes `<mdre-normal>`, then its value); filter options
//! (`sshd[mode=aggressive]`) override the file's values. The regexes are Python's: the few
//! spellings the `regex` crate reads differently are translated (`{,n}`, `\Z`, `[` inside a
//! class), and fail2ban's tags become groups: `<HOST>` and the other address tags, `<F-NAME>`
//! captures (`f_name`), `<F-NOFAIL>`, `<F-CONTENT>` in `prefregex`. Lines have their date cut
//! out before matching, as in fail2ban, which is why `__prefix_line` starts after it.

use std::collections::HashMap;
use std::path::Path;

use super::Fail2banError;
use super::ini::Ini;
pub use crate::filter::python_to_rust;
use crate::filter::{DatePattern, Filter, Pattern, Prefix, address_tag};

/// The tags fail2ban itself gives a meaning: never looked up as values.
fn reserved(tag: &str) -> bool {
    tag.starts_with("F-")
        || tag.starts_with("/F-")
        || tag == "SKIPLINES"
        || address_tag(tag).is_some()
}

/// How many tag substitutions one value may need (sshd's take about 30).
const MAX_SUBSTITUTIONS: usize = 1000;

/// A fail2ban filter, read.
#[derive(Debug, Clone)]
pub struct Fail2banFilter {
    pub filter: Filter,
    /// `maxlines`: fail2ban matches across this many lines (banctl matches one line at a time).
    pub maxlines: usize,
    /// `journalmatch`, for `import-fail2ban`.
    pub journalmatch: Option<String>,
    /// `datepattern`, if the filter sets one.
    pub datepattern: Option<String>,
    /// What banctl does differently for this filter (multi-line patterns), for `banctl test`.
    pub notes: Vec<String>,
}

/// A fail2ban filter's definition once read: every `%(…)s` and tag substitution done, the
/// patterns still in fail2ban's dialect (Python regexes with `<HOST>`, `<F-USER>` …). What
/// `import-fail2ban --inline` writes into a banctl configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub failregex: Vec<String>,
    pub ignoreregex: Vec<String>,
    pub prefregex: Option<String>,
    pub maxlines: usize,
    pub journalmatch: Option<String>,
    pub datepattern: Option<String>,
}

/// Reads the fail2ban filter at `path` (with its includes and `.local`), with `options`
/// (`name=value`, from `filter = name[options]`) overriding its values.
pub fn read_filter(
    path: &Path,
    options: &[(String, String)],
) -> Result<Fail2banFilter, Fail2banError> {
    read_definition(path, options)?.compile(path)
}

/// Reads and interpolates the fail2ban filter at `path`, without compiling it.
pub fn read_definition(
    path: &Path,
    options: &[(String, String)],
) -> Result<Definition, Fail2banError> {
    let mut ini = Ini::read(path)?;
    for (key, value) in options {
        ini.set("Definition", key, value);
    }
    let tags = Tags::new(&ini)?;
    let value = |key: &str| -> Result<Option<String>, Fail2banError> {
        match ini.get("Definition", key)? {
            Some(v) => tags.substitute(&v).map(Some),
            None => Ok(None),
        }
    };
    // A filter may set these among its `[Init]` options (grafana's datepattern, mongodb-auth's
    // maxlines do).
    let init_or_definition = |key: &str| -> Result<Option<String>, Fail2banError> {
        match value(key)? {
            Some(v) => Ok(Some(v)),
            None => match ini.get("Init", key)? {
                Some(v) => tags.substitute(&v).map(Some),
                None => Ok(None),
            },
        }
    };
    let lines = |text: Option<String>| -> Vec<String> {
        text.unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(Definition {
        failregex: lines(value("failregex")?),
        ignoreregex: lines(value("ignoreregex")?),
        prefregex: value("prefregex")?
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty()),
        maxlines: init_or_definition("maxlines")?
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1),
        journalmatch: init_or_definition("journalmatch")?.filter(|j| !j.trim().is_empty()),
        datepattern: init_or_definition("datepattern")?
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty()),
    })
}

impl Definition {
    /// Compiles the patterns; `origin` names the filter in errors.
    pub fn compile(self, origin: &Path) -> Result<Fail2banFilter, Fail2banError> {
        let mut notes = Vec::new();
        let compile = |source: &str, notes: &mut Vec<String>| -> Result<Pattern, Fail2banError> {
            let (expanded, multiline) = translate(source);
            if multiline && self.maxlines < 2 {
                notes.push(format!(
                    "{source}: <SKIPLINES> with maxlines = {}: only one line is ever seen",
                    self.maxlines
                ));
            }
            // Over several lines `^` and `$` are each line's ends, as in fail2ban.
            let expanded = match self.maxlines {
                0 | 1 => expanded,
                _ => format!("(?m){expanded}"),
            };
            Pattern::translated(source, &expanded).map_err(|e| Fail2banError::Pattern {
                path: origin.to_owned(),
                pattern: source.to_owned(),
                message: e.to_string(),
            })
        };
        let mut fail = Vec::new();
        for source in &self.failregex {
            fail.push(compile(source, &mut notes)?);
        }
        let mut ignore = Vec::new();
        for source in &self.ignoreregex {
            ignore.push(compile(source, &mut notes)?);
        }
        let prefregex = match &self.prefregex {
            Some(p) => Some(compile(p, &mut notes)?),
            None => None,
        };
        if fail.is_empty() {
            return Err(Fail2banError::NoFailregex(origin.to_owned()));
        }
        let datepattern = match &self.datepattern {
            Some(p) => Some(DatePattern::new(p).map_err(|e| Fail2banError::Pattern {
                path: origin.to_owned(),
                pattern: p.clone(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let filter = Filter::new(fail, ignore)
            .with_prefix(Prefix {
                strip_date: true,
                datepattern,
                prefregex,
            })
            .with_maxlines(self.maxlines);
        Ok(Fail2banFilter {
            filter,
            maxlines: self.maxlines,
            journalmatch: self.journalmatch,
            datepattern: self.datepattern,
            notes,
        })
    }
}

/// `sshd[mode=aggressive, publickey=any]` → (`sshd`, [(mode, aggressive), (publickey, any)]).
pub fn split_options(spec: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = spec.split_once('[') else {
        return (spec.trim(), Vec::new());
    };
    let inner = rest.trim_end().strip_suffix(']').unwrap_or(rest);
    let options = split_top_level(inner)
        .into_iter()
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_ascii_lowercase(), v.to_owned()))
        })
        .collect();
    (name.trim(), options)
}

/// Splits at commas outside quotes.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The values tags are substituted with: `[DEFAULT]`, `[Definition]` and `[Init]`
/// (interpolated), and `section/key` references.
struct Tags<'a> {
    ini: &'a Ini,
    values: HashMap<String, Result<String, String>>,
}

impl<'a> Tags<'a> {
    fn new(ini: &'a Ini) -> Result<Tags<'a>, Fail2banError> {
        let mut values = HashMap::new();
        for section in ["DEFAULT", "Definition", "Init"] {
            for key in ini.keys(section) {
                let value = ini
                    .get(section, key)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| e.to_string());
                values.insert(key.to_owned(), value);
            }
        }
        Ok(Tags { ini, values })
    }

    fn lookup(&self, tag: &str) -> Option<Result<String, Fail2banError>> {
        if let Some((section, key)) = tag.split_once('/') {
            return match self.ini.get(section, key) {
                Ok(Some(v)) => Some(Ok(v)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
        }
        self.values.get(&tag.to_ascii_lowercase()).map(|v| {
            v.clone().map_err(|message| Fail2banError::Tag {
                tag: tag.to_owned(),
                message,
            })
        })
    }

    /// Replaces every `<tag>` that names a value, innermost first, until none is left.
    fn substitute(&self, text: &str) -> Result<String, Fail2banError> {
        let mut text = text.to_owned();
        let mut from = 0;
        let mut done = 0;
        while let Some((start, end)) = innermost_tag(&text, from) {
            let tag = &text[start + 1..end];
            match self.lookup(tag) {
                Some(value) if !reserved(tag) => {
                    done += 1;
                    if done > MAX_SUBSTITUTIONS {
                        return Err(Fail2banError::Tag {
                            tag: tag.to_owned(),
                            message: "substitutes itself without end".into(),
                        });
                    }
                    text.replace_range(start..=end, &value?);
                    from = 0;
                }
                _ => from = start + 1,
            }
        }
        Ok(text)
    }
}

/// The first `<…>` from `from` on with no `<` or `>` inside: (position of `<`, of `>`).
fn innermost_tag(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut open = None;
    for (i, b) in bytes.iter().enumerate().skip(from) {
        match b {
            b'<' => open = Some(i),
            b'>' => {
                if let Some(start) = open.filter(|s| i > s + 1) {
                    return Some((start, i));
                }
                open = None;
            }
            b' ' | b'\n' => open = None,
            _ => {}
        }
    }
    None
}

/// A fail2ban regex in this crate's syntax, with its tags expanded; and whether it used
/// `<SKIPLINES>`.
pub fn translate(source: &str) -> (String, bool) {
    let rust = python_to_rust(source);
    let mut out = String::with_capacity(rust.len() * 2);
    let mut multiline = false;
    let mut rest = rust.as_str();
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find('>') else {
            out.push_str(tail);
            rest = "";
            break;
        };
        let tag = &tail[1..end];
        if let Some(name) = tag.strip_prefix("F-").and_then(|t| t.strip_suffix('/')) {
            // Self-closed: a whole capture.
            match name {
                "ID" => out.push_str(r"(?P<fid>\S+)"),
                "PORT" => out.push_str(r"(?P<fport>\w+)"),
                other => match address_tag(other) {
                    Some(regex) => out.push_str(&regex),
                    None => out.push_str(&format!(r"(?P<{}>\S+)", group_name(other))),
                },
            }
        } else if let Some(name) = tag.strip_prefix("F-") {
            out.push_str(&format!("(?P<{}>", group_name(name)));
        } else if tag.starts_with("/F-") {
            out.push(')');
        } else if tag == "SKIPLINES" {
            // The end of this line, then any whole lines, fewest first.
            out.push_str(r"\n(?:.*\n)*?");
            multiline = true;
        } else if let Some(regex) = address_tag(tag) {
            out.push_str(&regex);
        } else {
            // `(?P<name>` and other `<`: plain text.
            out.push('<');
            rest = &tail[1..];
            continue;
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    (out, multiline)
}

/// `ALT_USER` → `alt_user` (a valid group name); `ID` and `PORT` are `fid` and `fport`, as
/// in fail2ban (so that `(?P=user)` back-references keep working).
fn group_name(name: &str) -> String {
    match name {
        "ID" => "fid".to_owned(),
        "PORT" => "fport".to_owned(),
        _ => name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_spellings_are_translated() {
        assert_eq!(python_to_rust(r"a{,3}b{2}c{1,}\Z"), r"a{0,3}b{2}c{1,}\z");
        assert_eq!(python_to_rust(r"[[]x[^]]y[a&&b]"), r"[\[]x[^\]]y[a\&&b]");
        assert_eq!(python_to_rust(r"{^LN-BEG} x{y}"), r"\{^LN-BEG\} x\{y\}");
        assert_eq!(python_to_rust(r"\[\d+\]\ "), r"\[\d+\] ");
    }

    #[test]
    fn tags_become_groups() {
        let (re, multi) = translate(r"^<F-USER>\S+</F-USER> from <HOST><SKIPLINES>$");
        assert!(multi);
        assert!(re.starts_with(r"^(?P<user>\S+) from (?:"), "{re}");
        assert!(re.contains("(?P<dns>"), "{re}");
        let (re, _) = translate(r"(?P<x>a)<F-ALT_USER>b</F-ALT_USER><F-ID/>:<F-PORT/>");
        assert_eq!(re, r"(?P<x>a)(?P<alt_user>b)(?P<fid>\S+):(?P<fport>\w+)");
    }

    /// `maxlines` joins lines for `<SKIPLINES>`, and a match's lines are used up; `<F-MLFID>`
    /// sessions lend their address to a failure that names none.
    #[test]
    fn lines_join_and_sessions_lend_their_address() {
        let definition = |failregex: &[&str], prefregex: Option<&str>, maxlines| Definition {
            failregex: failregex.iter().map(|s| s.to_string()).collect(),
            ignoreregex: Vec::new(),
            prefregex: prefregex.map(str::to_owned),
            maxlines,
            journalmatch: None,
            datepattern: None,
        };
        let run = |d: Definition, lines: &[&str]| -> Vec<Option<String>> {
            let filter = d.compile(Path::new("t.conf")).unwrap().filter;
            assert!(filter.remembers());
            let mut memory = crate::filter::Memory::default();
            lines
                .iter()
                .map(|l| filter.find_in(l, &mut memory).map(|h| h.addr.to_string()))
                .collect()
        };
        let joined = definition(
            &[r"^login of (?P<u>\S+) from <HOST><SKIPLINES>denied (?P=u)$"],
            None,
            3,
        );
        let lines = [
            "login of bob from 192.0.2.1",
            "noise",
            "denied bob",
            "denied bob",
            "login of eve from 192.0.2.2",
            "denied bob",
        ];
        let one = Some("192.0.2.1".to_owned());
        assert_eq!(run(joined, &lines), [None, None, one, None, None, None]);
        let sessions = definition(
            &[
                r"^<F-NOFAIL>open</F-NOFAIL> from <HOST>$",
                r"^too many failures$",
                r"^<F-MLFFORGET>closed</F-MLFFORGET>$",
            ],
            Some(r"^<F-MLFID>conn\d+</F-MLFID> <F-CONTENT>.+</F-CONTENT>$"),
            1,
        );
        let lines = [
            "conn1 open from 192.0.2.7",
            "conn2 too many failures",
            "conn1 too many failures",
            "conn1 closed",
            "conn1 too many failures",
        ];
        let seven = Some("192.0.2.7".to_owned());
        assert_eq!(
            run(sessions, &lines),
            [None, None, seven.clone(), seven, None]
        );
    }

    #[test]
    fn options_are_split() {
        assert_eq!(split_options("sshd"), ("sshd", vec![]));
        assert_eq!(
            split_options(r#"sshd[mode=aggressive, publickey="any"]"#),
            (
                "sshd",
                vec![
                    ("mode".into(), "aggressive".into()),
                    ("publickey".into(), "any".into())
                ]
            )
        );
    }

    #[test]
    fn tags_substitute_innermost_first() {
        let ini = Ini::parse(
            "t.conf",
            "[DEFAULT]\nmode = normal\n[Definition]\nre-normal = ^n <HOST>\nre-extra = ^e <HOST>\nfailregex = <re-<mode>>\n   ^x <HOST> <[^.]+\\.[^.]+>\n[lt_file]\np = P\n",
        )
        .unwrap();
        let tags = Tags::new(&ini).unwrap();
        let v = ini.get("Definition", "failregex").unwrap().unwrap();
        assert_eq!(
            tags.substitute(&v).unwrap(),
            "^n <HOST>\n^x <HOST> <[^.]+\\.[^.]+>"
        );
        assert_eq!(tags.substitute("<lt_file/p>").unwrap(), "P");
    }
}
