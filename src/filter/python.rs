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
