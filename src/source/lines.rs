//! The lines of one batch as one text: no allocation per line, and a block the filters can
//! search many lines at a time ([`crate::filter::Filter::next_candidate`]).

/// Lines in one `String`, each followed by `'\n'`. A line may itself hold `'\n'` (a journal
/// message): where each line ends is kept, never searched for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    text: String,
    /// Where each line ends in `text` (the offset of its separator).
    ends: Vec<usize>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines::default()
    }

    /// Room for about `bytes` of text.
    pub fn with_capacity(bytes: usize) -> Lines {
        Lines {
            text: String::with_capacity(bytes),
            ends: ends_room(bytes),
        }
    }

    /// Appends a line.
    pub fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.ends.push(self.text.len());
        self.text.push('\n');
    }

    /// Appends a line read as bytes, without a trailing `'\r'`; invalid UTF-8 is replaced.
    pub fn push_bytes(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(text) => self.push(text),
            Err(_) => self.push(&String::from_utf8_lossy(line)),
        }
    }

    /// Appends a run of whole lines, each ending in `'\n'`, in one copy, when no line of it
    /// holds `'\r'` or invalid UTF-8 or is longer than `max` bytes: then it is what
    /// [`Lines::push_bytes`] of each line would give. Otherwise appends nothing and returns
    /// false (the caller takes the lines one by one).
    pub fn push_run(&mut self, run: &[u8], max: usize) -> bool {
        let Ok(text) = std::str::from_utf8(run) else {
            return false;
        };
        if !self.push_ends(run, max) {
            return false;
        }
        self.text.push_str(text);
        true
    }

    /// The run of whole lines `run` as lines of its own, without a copy: what
    /// [`Lines::push_run`] into new lines gives, or `run` back when that would refuse it.
    pub fn from_run(run: Vec<u8>, max: usize) -> Result<Lines, Vec<u8>> {
        let mut lines = Lines {
            text: String::new(),
            ends: ends_room(run.len()),
        };
        if !lines.push_ends(&run, max) {
            return Err(run);
        }
        match String::from_utf8(run) {
            Ok(text) => {
                lines.text = text;
                Ok(lines)
            }
            Err(e) => Err(e.into_bytes()),
        }
    }

    /// Notes where each line of `run` (whole lines, each ending in `'\n'`) ends, as if it
    /// followed the text, when no line of it holds `'\r'` or is longer than `max` bytes;
    /// otherwise notes nothing and returns false.
    fn push_ends(&mut self, run: &[u8], max: usize) -> bool {
        if run.last() != Some(&b'\n') || memchr::memchr(b'\r', run).is_some() {
            return false;
        }
        let (base, before) = (self.text.len(), self.ends.len());
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', run) {
            if nl - start > max {
                self.ends.truncate(before);
                return false;
            }
            self.ends.push(base + nl);
            start = nl + 1;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text, to be used again ([`super::ReadBuffers`]).
    pub fn into_bytes(self) -> Vec<u8> {
        self.text.into_bytes()
    }

    /// Every line, separators included: the block the filters search.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Line `i`.
    pub fn get(&self, i: usize) -> &str {
        &self.text[self.start(i)..self.ends[i]]
    }

    fn start(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.ends[i - 1] + 1,
        }
    }

    /// The line that holds byte `at` of [`Lines::text`] (its separator included): its index,
    /// and where the next line starts. A binary search over every line: what the tests hold
    /// [`Lines::at_from`] to.
    #[cfg(test)]
    fn at(&self, at: usize) -> (usize, usize) {
        let i = self.ends.partition_point(|end| *end < at);
        (i, self.ends.get(i).map_or(self.text.len(), |end| end + 1))
    }

    /// The line that holds byte `at` of [`Lines::text`] (its separator included), which no
    /// line before line `first` holds: its index, and where the next line starts. Found by
    /// galloping forward from `first`, in a few steps when the bytes asked for come in order.
    fn at_from(&self, at: usize, first: usize) -> (usize, usize) {
        let ends = &self.ends[first.min(self.ends.len())..];
        // The first line ending at or after `at` lies in ends[lo..hi].
        let (mut lo, mut hi, mut step) = (0, 1, 1);
        while hi <= ends.len() && ends[hi - 1] < at {
            lo = hi;
            step *= 2;
            hi += step;
        }
        let hi = hi.min(ends.len());
        let i = first.min(self.ends.len()) + lo + ends[lo..hi].partition_point(|end| *end < at);
        (i, self.ends.get(i).map_or(self.text.len(), |end| end + 1))
    }

    /// The indexes of the lines that `next` finds, in order: `next(text, from)` gives a byte
    /// at or after `from` inside the next line to look at, or `None` (see
    /// [`crate::filter::Filter::next_candidate`]); the search goes on from the line after it.
    pub fn candidates(&self, mut next: impl FnMut(&[u8], usize) -> Option<usize>) -> Vec<usize> {
        let block = self.text.as_bytes();
        let (mut found, mut from, mut line) = (Vec::new(), 0, 0);
        while let Some(at) = next(block, from) {
            let (i, after) = self.at_from(at, line);
            if i >= self.len() {
                break;
            }
            found.push(i);
            (from, line) = (after, i + 1);
        }
        found
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Room for the ends of the lines of about `bytes` of text (64 bytes a line, as in logs).
fn ends_room(bytes: usize) -> Vec<usize> {
    Vec::with_capacity(bytes / 64)
}

impl<S: AsRef<str>> FromIterator<S> for Lines {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Lines {
        let mut lines = Lines::new();
        for line in iter {
            lines.push(line.as_ref());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_by_any_byte_of_them() {
        let lines: Lines = ["ab", "", "multi\nline", "z"].into_iter().collect();
        assert_eq!(lines.text(), "ab\n\nmulti\nline\nz\n");
        assert_eq!(
            lines.iter().collect::<Vec<_>>(),
            ["ab", "", "multi\nline", "z"]
        );
        assert_eq!(lines.at(0), (0, 3));
        assert_eq!(lines.at(2), (0, 3));
        assert_eq!(lines.at(3), (1, 4));
        // The newline inside a journal message belongs to its line.
        assert_eq!(lines.at(9), (2, 15));
        assert_eq!(lines.at(15), (3, 17));
    }

    #[test]
    fn candidates_are_the_lines_holding_what_the_search_finds() {
        let lines: Lines = ["axx", "", "b\nx", "x", "yy", "zx"].into_iter().collect();
        let xs = lines.candidates(|b, from| memchr::memchr(b'x', &b[from..]).map(|p| from + p));
        assert_eq!(
            xs,
            [0, 2, 3, 5],
            "each line once, a newline inside a line included"
        );
        // A search that names every line, as a filter that examines every line does.
        let all = lines.candidates(|b, from| (from < b.len()).then_some(from));
        assert_eq!(all, (0..lines.len()).collect::<Vec<_>>());
        // A search answering past the text finds nothing there.
        assert!(Lines::new().candidates(|_, from| Some(from)).is_empty());
    }

    #[test]
    fn galloping_finds_the_line_the_binary_search_finds() {
        // Lines of every length from 0 to 40 bytes, some holding '\n', in a fixed shuffle.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % n) as usize
        };
        for _ in 0..200 {
            let lines: Lines = (0..next(60))
                .map(|_| {
                    let mut line = "x".repeat(next(41));
                    if !line.is_empty() && next(5) == 0 {
                        line.replace_range(0..1, "\n");
                    }
                    line
                })
                .collect();
            let end = lines.text().len();
            for at in 0..=end {
                let (i, _) = lines.at(at);
                // Any line not after the one that holds the byte, as the daemon's cursor is.
                for first in [0, i / 2, i.saturating_sub(1), i] {
                    assert_eq!(
                        lines.at_from(at, first),
                        lines.at(at),
                        "byte {at} from {first}"
                    );
                }
            }
            // Bytes in order, each search starting from the line the last one found.
            let mut first = 0;
            let mut at = 0;
            while at < end {
                let found = lines.at_from(at, first);
                assert_eq!(found, lines.at(at));
                first = found.0;
                at += 1 + next(90);
            }
        }
    }
}
