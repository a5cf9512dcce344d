//! `banctl.toml(5)`: the README's "Configuration reference" as a man page, so that the two
//! never disagree (the README is the one source; a banctl test holds it to the config types).

/// The man page for the configuration file, from the README's text.
pub fn config_page(readme: &str, version: &str) -> Result<String, String> {
    let section = readme
        .split("\n## Configuration reference\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .ok_or("README.md has no \"## Configuration reference\" section")?;
    let mut out = format!(
        ".TH BANCTL.TOML 5 \"\" \"banctl {version}\" \"File Formats\"\n\
         .SH NAME\nbanctl.toml \\- configuration of the banctl intrusion-prevention daemon\n\
         .SH SYNOPSIS\n/etc/banctl/banctl.toml, /etc/banctl/conf.d/*.toml\n.SH DESCRIPTION\n"
    );
    let mut in_code = false;
    for line in section.lines() {
        if line.starts_with("```") {
            out.push_str(if in_code { ".fi\n" } else { ".PP\n.nf\n" });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&escape(line));
            out.push('\n');
        } else if let Some(heading) = line.strip_prefix("### ") {
            out.push_str(&format!(".SH \"{}\"\n", heading.replace(['`', '"'], "")));
        } else if line.starts_with("| ---") || line.starts_with("| key |") {
            continue;
        } else if let Some(row) = line.strip_prefix("| ") {
            let cells: Vec<&str> = row.trim_end_matches(" |").splitn(3, " | ").collect();
            if let [key, default, meaning] = cells.as_slice() {
                out.push_str(&format!(
                    ".TP\n{} (default: {})\n{}\n",
                    inline(key),
                    inline(default),
                    inline(meaning)
                ));
            }
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else {
            out.push_str(&inline(line));
            out.push('\n');
        }
    }
    out.push_str(
        ".SH \"SEE ALSO\"\n\\fBbanctl\\fR(8), \\fBbanctl-check-config\\fR(8), \\fBbanctl-config\\fR(8), \\fBbanctl-init\\fR(8)\n",
    );
    Ok(out)
}

/// Backslashes escaped, and a line that would start a roff request made plain text.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// Markdown's inline code and bold as roff bold.
fn inline(text: &str) -> String {
    let text = escape(text);
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("\\fB{part}\\fR"));
        } else {
            out.push_str(&part.replace("**", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_row_becomes_an_entry() {
        let readme = include_str!("../../README.md");
        let page = config_page(readme, "0.0.0").unwrap();
        for key in [
            "state_dir",
            "maxretry",
            "ignoreip",
            "escalation",
            "starttls",
            "max_per_minute",
        ] {
            assert!(
                page.contains(&format!(".TP\n\\fB{key}\\fR (default: ")),
                "{key} missing:\n{page}"
            );
        }
        assert!(page.contains(".SH \"[fleet]\"\n"));
        assert_eq!(escape(r"'^\s'"), r"\&'^\es'");
    }
}
