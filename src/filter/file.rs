//! banctl's own filter files: TOML with `failregex`, `ignoreregex` and a `description`.
//!
//! ```toml
//! description = "TightVNC: failed VNC authentication"
//! failregex = ['^.* authentication failed from <HOST>$']
//! ignoreregex = []
//! ```

use serde::Deserialize;

use super::{Filter, Pattern};

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    description: Option<String>,
    failregex: toml::Spanned<Vec<toml::Spanned<String>>>,
    #[serde(default)]
    ignoreregex: Vec<toml::Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Parses a filter file's text; `file` only names it in errors. Reports the first error.
pub fn parse_filter_file(file: &str, text: &str) -> Result<FilterFile, FilterFileError> {
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
    let mut fail = Vec::new();
    for (i, p) in raw.failregex.get_ref().iter().enumerate() {
        fail.push(
            Pattern::fail(p.get_ref())
                .map_err(|e| error(p.span(), &format!("failregex[{i}]"), e.to_string()))?,
        );
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
}
