//! "Did you mean …?": the closest known word to a misspelt one.

/// The candidate closest to `word` by edit distance, if it is close enough to be what was
/// meant (at most a third of the word's length, and at least one edit allowed).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            (
                distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `", did you mean X?"`, or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates).map_or(String::new(), |c| format!(" (did you mean {c:?}?)"))
}

/// Levenshtein distance: insertions, deletions and substitutions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_words_are_suggested_and_far_ones_not() {
        let keys = ["maxretry", "findtime", "bantime", "ports", "logpath"];
        assert_eq!(closest("maxretries", keys), Some("maxretry"));
        assert_eq!(closest("port", keys), Some("ports"));
        assert_eq!(closest("BanTime", keys), Some("bantime"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(closest("jail", ["jails", "daemon"]), Some("jails"));
        assert_eq!(
            closest("nginx-limit-reqs", ["nginx-limit-req", "nginx-http-auth"]),
            Some("nginx-limit-req")
        );
        assert_eq!(did_you_mean("x", ["maxretry"]), "");
    }
}
