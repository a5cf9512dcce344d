//! fail2ban's files, read the way fail2ban reads them: its INI dialect (includes, `.local`
//! overrides, interpolation) and its filters (`filter.d/*.conf`), so that users keep the filters
//! they wrote.

mod filter;
mod import;
pub mod ini;

use std::path::PathBuf;

pub use filter::{
    Definition, Fail2banFilter, python_to_rust, read_definition, read_filter, split_options,
    translate,
};
pub use import::{Import, import};
pub use ini::Ini;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Fail2banError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("[{section}]: %({name})s names no value")]
    Interpolation { section: String, name: String },
    #[error("nested too deeply (a value or include refers to itself?): {0}")]
    Nesting(String),
    #[error("tag <{tag}>: {message}")]
    Tag { tag: String, message: String },
    #[error("{}: pattern {pattern:?}: {message}", path.display())]
    Pattern {
        path: PathBuf,
        pattern: String,
        message: String,
    },
    #[error("{}: no failregex", .0.display())]
    NoFailregex(PathBuf),
}
