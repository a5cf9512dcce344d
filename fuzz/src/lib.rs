//! Shared pieces of the fuzz targets: inputs split into a pattern part and lines.

/// Splits an input at its first newline: (first line, the lines after it).
pub fn head_and_lines(text: &str) -> (&str, Vec<&str>) {
    let (head, rest) = text.split_once('\n').unwrap_or((text, ""));
    (head, rest.lines().take(64).collect())
}

/// Lines every compiled filter is run on, besides the input's own.
pub const LINES: [&str; 4] = [
    "Nov 21 10:00:00 web sshd[812]: Failed password for root from 203.0.113.5 port 50122 ssh2",
    "2026-11-21T10:00:00+01:00 web app[1]: login failed for a from 2001:db8::5 port 1",
    "203.0.113.9 - - [21/Nov/2026:10:00:00 +0000] \"GET /wp-login.php HTTP/1.1\" 404 1 \"-\" \"x\"",
    "",
];
