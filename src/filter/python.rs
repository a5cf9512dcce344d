//! Python's `re` syntax (fail2ban's patterns and date patterns) in the `regex` crate's.

/// Python's `re` syntax in the `regex` crate's: `\Z` is `\z`, `{,n}` is `{0,n}`, a `{` that is
/// no quantifier is literal, `[` inside a class is literal, `&&`/`--`/`~~` inside a class are
/// characters (not set operations).
pub fn python_to_rust(re: &str) -> String {
    let chars: Vec<char> = re.chars().collect();
    let mut out = String::with_capacity(re.len() + 8);
    let mut i = 0;
    let mut class = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            match chars.get(i + 1) {
                None => out.push_str(r"\\"),
                Some('Z') if !class => out.push_str(r"\z"),
                Some(&n) if n.is_ascii_alphanumeric() || n.is_ascii_punctuation() => {
                    out.push('\\');
                    out.push(n);
                }
                Some(&n) => out.push(n),
            }
            i += 2;
            continue;
        }
        if class {
            match c {
                ']' => {
                    class = false;
                    out.push(']');
                }
                '[' => out.push_str(r"\["),
                '&' | '-' | '~' if chars.get(i + 1) == Some(&c) => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
            i += 1;
            continue;
        }
        match c {
            '[' => {
                class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` first in a class is a character.
                if chars.get(i) == Some(&']') {
                    out.push_str(r"\]");
                    i += 1;
                }
                continue;
            }
            '{' => match quantifier(&chars[i..]) {
                Some((text, len)) => {
                    out.push_str(&text);
                    i += len;
                    continue;
                }
                None => out.push_str(r"\{"),
            },
            '}' => out.push_str(r"\}"),
            // Python's `(?(name)yes|no)` tests whether group `name` matched; fancy-regex reads
            // a bare name there as a pattern to look for, and a group as `(?(<name>)…)`.
            '(' if chars[i..].starts_with(&['(', '?', '(']) => {
                let name: String = chars[i + 3..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                let closes = chars.get(i + 3 + name.len()) == Some(&')');
                let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
                if closes && is_name {
                    out.push_str(&format!("(?(<{name}>)"));
                    i += 4 + name.len();
                    continue;
                }
                out.push('(');
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// `{n}`, `{n,}`, `{n,m}` or `{,m}` at the start of `chars`: its spelling here and its length.
fn quantifier(chars: &[char]) -> Option<(String, usize)> {
    let end = chars.iter().position(|c| *c == '}')?;
    let inner: String = chars[1..end].iter().collect();
    let (min, max) = match inner.split_once(',') {
        Some((min, max)) => (min, Some(max)),
        None => (inner.as_str(), None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(min) || !max.is_none_or(digits) || (min.is_empty() && max.is_none_or(str::is_empty))
    {
        return None;
    }
    let min = if min.is_empty() { "0" } else { min };
    let text = match max {
        Some(max) => format!("{{{min},{max}}}"),
        None => format!("{{{min}}}"),
    };
    Some((text, end + 1))
}

#[cfg(test)]
mod tests {
    use super::python_to_rust;

    #[test]
    fn conditionals_on_named_groups_test_the_group() {
        assert_eq!(
            python_to_rust(r"(?P<u>\S+)|x (?(u): |$)"),
            r"(?P<u>\S+)|x (?(<u>): |$)"
        );
        // Numbered groups, escaped parentheses and classes are left as they are.
        assert_eq!(python_to_rust(r"(a)?(?(1)b|c)"), r"(a)?(?(1)b|c)");
        assert_eq!(python_to_rust(r"\(?(x)"), r"\(?(x)");
        assert_eq!(python_to_rust(r"[(?(]"), r"[(?(]");
        let re = fancy_regex::Regex::new(&python_to_rust(
            r"^for (?:(?P<cond_user>\S+)|[^:]+) from (\S+)(?(cond_user): |$)",
        ))
        .unwrap();
        let caps = re
            .captures("for user from 127.0.0.1: ruser from 1.2.3.4")
            .unwrap()
            .unwrap();
        assert_eq!(&caps[2], "127.0.0.1");
    }
}
