//! fail2ban's configuration files, read the way fail2ban reads them.
//!
//! INI with sections, `key = value` (or `key: value`), values continued on indented lines,
//! full-line comments (`#`, `;`) and inline comments after whitespace (`value ; comment`).
//! Keys are case-insensitive. `[INCLUDES] before = …` files are read before the file and
//! `after = …` files after it; `X.local` is read after `X.conf` and overrides it. A value
//! overridden by a later file is still reachable as `%(known/key)s`. `%(key)s` interpolates a
//! key of the same section (or of `[DEFAULT]`), `%(section/key)s` one of another section.

use std::path::{Path, PathBuf};

use super::Fail2banError;

/// How deep includes and interpolations may nest (fail2ban files use 3 or 4 levels).
const MAX_DEPTH: usize = 20;

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: String,
    /// The value this one overrode (`%(known/key)s`).
    known: Option<String>,
}

#[derive(Debug, Clone)]
struct Section {
    name: String,
    entries: Vec<Entry>,
}

/// A configuration read with its includes and `.local` overrides.
#[derive(Debug, Clone, Default)]
pub struct Ini {
    sections: Vec<Section>,
    /// Every file read, in order.
    files: Vec<PathBuf>,
}

impl Ini {
    /// Reads `path` (a `.conf` file), its includes and its `.local` file.
    pub fn read(path: &Path) -> Result<Ini, Fail2banError> {
        let mut ini = Ini::default();
        ini.load(path, 0, true)?;
        if path.extension().is_some_and(|e| e == "conf") {
            let local = path.with_extension("local");
            if local.is_file() {
                ini.load(&local, 0, true)?;
            }
        }
        Ok(ini)
    }

    /// Reads one more file into this configuration (for `jail.d/*.conf`).
    pub fn read_more(&mut self, path: &Path) -> Result<(), Fail2banError> {
        self.load(path, 0, true)
    }

    /// Parses text (for tests).
    pub fn parse(name: &str, text: &str) -> Result<Ini, Fail2banError> {
        let mut ini = Ini::default();
        let parsed = parse(Path::new(name), text)?;
        ini.merge(parsed);
        Ok(ini)
    }

    fn load(&mut self, path: &Path, depth: usize, required: bool) -> Result<(), Fail2banError> {
        if depth > MAX_DEPTH {
            return Err(Fail2banError::Nesting(path.display().to_string()));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // fail2ban skips includes that do not exist (`after = common.local`).
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Fail2banError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        self.files.push(path.to_owned());
        let parsed = parse(path, &text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let includes = |key: &str| -> Vec<PathBuf> {
            parsed
                .iter()
                .filter(|s| s.name == "INCLUDES")
                .flat_map(|s| s.entries.iter().filter(|e| e.key == key))
                .flat_map(|e| e.value.split_whitespace().map(|f| dir.join(f)))
                .collect()
        };
        let (before, after) = (includes("before"), includes("after"));
        for file in before {
            self.load(&file, depth + 1, false)?;
        }
        self.merge(parsed);
        for file in after {
            self.load(&file, depth + 1, false)?;
        }
        Ok(())
    }

    fn merge(&mut self, parsed: Vec<Section>) {
        for section in parsed {
            let at = match self.sections.iter().position(|s| s.name == section.name) {
                Some(at) => at,
                None => {
                    self.sections.push(Section {
                        name: section.name.clone(),
                        entries: Vec::new(),
                    });
                    self.sections.len() - 1
                }
            };
            let target = &mut self.sections[at].entries;
            for entry in section.entries {
                match target.iter_mut().find(|e| e.key == entry.key) {
                    Some(old) => {
                        old.known = Some(std::mem::replace(&mut old.value, entry.value));
                    }
                    None => target.push(entry),
                }
            }
        }
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Section names, in order of first appearance.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|s| s.name.as_str())
    }

    /// Keys of `section` (without those it inherits from `[DEFAULT]`).
    pub fn keys(&self, section: &str) -> Vec<&str> {
        self.section(section)
            .map(|s| s.entries.iter().map(|e| e.key.as_str()).collect())
            .unwrap_or_default()
    }

    pub fn has_section(&self, section: &str) -> bool {
        self.section(section).is_some()
    }

    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    fn entry(&self, section: &str, key: &str) -> Option<&Entry> {
        let key = key.to_ascii_lowercase();
        self.section(section)
            .and_then(|s| s.entries.iter().find(|e| e.key == key))
            .or_else(|| {
                self.section("DEFAULT")
                    .and_then(|s| s.entries.iter().find(|e| e.key == key))
            })
    }

    /// The value as written (no interpolation), from `section` or `[DEFAULT]`.
    pub fn raw(&self, section: &str, key: &str) -> Option<&str> {
        self.entry(section, key).map(|e| e.value.as_str())
    }

    /// Sets a value (a jail's filter options, a command-line override).
    pub fn set(&mut self, section: &str, key: &str, value: &str) {
        self.merge(vec![Section {
            name: section.to_owned(),
            entries: vec![Entry {
                key: key.to_ascii_lowercase(),
                value: value.to_owned(),
                known: None,
            }],
        }]);
    }

    /// The value of `key` in `section` (or `[DEFAULT]`), with `%(…)s` interpolated.
    pub fn get(&self, section: &str, key: &str) -> Result<Option<String>, Fail2banError> {
        match self.raw(section, key) {
            Some(raw) => self.interpolate(section, raw, 0).map(Some),
            None => Ok(None),
        }
    }

    /// Replaces `%(name)s`, `%(section/name)s`, `%(known/name)s` and `%%` in `text`.
    pub fn interpolate(
        &self,
        section: &str,
        text: &str,
        depth: usize,
    ) -> Result<String, Fail2banError> {
        if depth > MAX_DEPTH {
            return Err(Fail2banError::Nesting(format!("[{section}] {text}")));
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("%%") {
                out.push('%');
                rest = after;
            } else if let Some((name, after)) = tail
                .strip_prefix("%(")
                .and_then(|t| t.split_once(")s"))
                .filter(|(name, _)| !name.contains(['(', ')', '%']))
            {
                out.push_str(&self.reference(section, name, depth)?);
                rest = after;
            } else {
                out.push('%');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn reference(&self, section: &str, name: &str, depth: usize) -> Result<String, Fail2banError> {
        let missing = || Fail2banError::Interpolation {
            section: section.to_owned(),
            name: name.to_owned(),
        };
        // Python's configparser: the section's own name.
        if name == "__name__" {
            return Ok(section.to_owned());
        }
        let (scope, key) = match name.split_once('/') {
            Some((scope, key)) => (Some(scope), key),
            None => (None, name),
        };
        let (value, at) = match scope {
            // What the key meant before this section (re)defined it: the value it overrode,
            // else the inherited `[DEFAULT]` one.
            Some(s) if s.eq_ignore_ascii_case("known") => {
                let own = self
                    .section(section)
                    .and_then(|s| s.entries.iter().find(|e| e.key == key.to_ascii_lowercase()));
                match own.and_then(|e| e.known.as_ref()) {
                    Some(known) => (known, section),
                    None if section != "DEFAULT" => (
                        &self.entry("DEFAULT", key).ok_or_else(missing)?.value,
                        "DEFAULT",
                    ),
                    None => return Err(missing()),
                }
            }
            Some(s) if s.eq_ignore_ascii_case("default") => (
                &self.entry("DEFAULT", key).ok_or_else(missing)?.value,
                "DEFAULT",
            ),
            Some(s) => (&self.entry(s, key).ok_or_else(missing)?.value, s),
            None => (
                &self.entry(section, key).ok_or_else(missing)?.value,
                section,
            ),
        };
        // A `known/` value refers to what it overrode: interpolate it without recursing into
        // itself.
        self.interpolate(at, value, depth + 1)
    }
}

/// Parses one file into sections (no includes).
fn parse(path: &Path, text: &str) -> Result<Vec<Section>, Fail2banError> {
    let error = |line: usize, message: &str| Fail2banError::Syntax {
        path: path.to_owned(),
        line,
        message: message.to_owned(),
    };
    let mut sections: Vec<Section> = Vec::new();
    // Blank lines inside a value are kept only if an indented line follows.
    let mut blank_run = 0;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            blank_run += 1;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let continuation = raw.starts_with([' ', '\t']);
        let line = strip_inline_comment(trimmed);
        if continuation {
            let Some(entry) = sections.last_mut().and_then(|s| s.entries.last_mut()) else {
                return Err(error(number, "indented line outside of any value"));
            };
            for _ in 0..blank_run {
                entry.value.push('\n');
            }
            if !entry.value.is_empty() {
                entry.value.push('\n');
            }
            entry.value.push_str(line);
            blank_run = 0;
            continue;
        }
        blank_run = 0;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push(Section {
                name: name.trim().to_owned(),
                entries: Vec::new(),
            });
            continue;
        }
        let Some(split) = line.find(['=', ':']) else {
            return Err(error(number, "expected `key = value`"));
        };
        let key = line[..split].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(error(number, "a value without a key"));
        }
        let Some(section) = sections.last_mut() else {
            return Err(error(number, "a value before any [section]"));
        };
        let entry = Entry {
            key,
            value: line[split + 1..].trim().to_owned(),
            known: None,
        };
        match section.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(old) => *old = entry,
            None => section.entries.push(entry),
        }
    }
    Ok(sections)
}

/// `value ; comment` → `value` (a `;` after whitespace starts a comment).
fn strip_inline_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b';' && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return line[..i].trim_end();
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_continue_interpolate_and_override() {
        let mut ini = Ini::parse(
            "t.conf",
            "[DEFAULT]\n_daemon = sshd\nprefix = %(_daemon)s\\[\\d+\\]:\n\n[Definition]\n# comment\nFailRegex = ^%(prefix)s a <HOST>\n\n    ^%(prefix)s b <HOST> ; inline\n  ; indented comment\nother: 100%%\n[lt_file]\ndatepattern = {^LN-BEG}\n[x]\nd = %(lt_file/datepattern)s\n",
        )
        .unwrap();
        assert_eq!(
            ini.get("Definition", "failregex").unwrap().unwrap(),
            "^sshd\\[\\d+\\]: a <HOST>\n\n^sshd\\[\\d+\\]: b <HOST>"
        );
        assert_eq!(ini.get("Definition", "other").unwrap().unwrap(), "100%");
        assert_eq!(ini.get("x", "d").unwrap().unwrap(), "{^LN-BEG}");
        ini.set(
            "Definition",
            "failregex",
            "%(known/failregex)s\n^extra <HOST>",
        );
        let all = ini.get("Definition", "failregex").unwrap().unwrap();
        assert!(all.ends_with("b <HOST>\n^extra <HOST>"), "{all}");
        assert!(matches!(
            ini.interpolate("Definition", "%(nope)s", 0),
            Err(Fail2banError::Interpolation { .. })
        ));
        assert!(matches!(
            Ini::parse("t.conf", "[a]\nx = %(x)s\n")
                .unwrap()
                .get("a", "x"),
            Err(Fail2banError::Nesting(_))
        ));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = Ini::parse("t.conf", "[a]\nkey value\n").unwrap_err();
        assert_eq!(err.to_string(), "t.conf:2: expected `key = value`");
        let err = Ini::parse("t.conf", "x = 1\n").unwrap_err();
        assert_eq!(err.to_string(), "t.conf:1: a value before any [section]");
    }
}
