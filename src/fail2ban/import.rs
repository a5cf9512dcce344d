//! `banctl import-fail2ban`: a fail2ban jail configuration turned into a banctl configuration.
//!
//! Read in fail2ban's order: `jail.conf` (with its includes, `paths-*.conf`), `jail.d/*.conf`,
//! `jail.local`, `jail.d/*.local`. Only enabled jails are written. Filters are referenced by
//! their `.conf` path (banctl reads them as they are) or, inline, written into the jail as a
//! `fail2ban_filter` table (interpolated, so it no longer needs `/etc/fail2ban`). What has no
//! banctl equivalent is listed with the reason and the closest banctl feature, never dropped
//! silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Fail2banError;
use super::filter::{Definition, read_definition, split_options};
use super::ini::Ini;

/// Appends one formatted line to a `String`.
macro_rules! emit {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// Sections of `jail.conf` that are not jails.
const NOT_JAILS: [&str; 3] = ["DEFAULT", "INCLUDES", "Init"];

/// The result of an import: the banctl configuration and what could not be carried over.
#[derive(Debug, Clone, Default)]
pub struct Import {
    pub toml: String,
    pub jails: Vec<String>,
    /// `jail: what — why; closest banctl feature`.
    pub skipped: Vec<String>,
}

/// Reads the fail2ban configuration in `dir` (usually `/etc/fail2ban`); with `inline`, each
/// jail's filter is written into the output instead of referenced by its path.
pub fn import(dir: &Path, inline: bool) -> Result<Import, Fail2banError> {
    // Filters are referred to by path: an absolute one, wherever the output is written.
    let dir = &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let ini = read_jails(dir)?;
    let services = Services::read(Path::new("/etc/services"));
    let mut out = Import::default();
    let mut body = String::new();
    let mut jails: Vec<&str> = ini.sections().filter(|s| !NOT_JAILS.contains(s)).collect();
    jails.dedup();
    for name in jails {
        let get = |key: &str| -> Option<String> {
            match ini.get(name, key) {
                Ok(v) => v.map(|v| v.trim().to_owned()),
                Err(e) => {
                    tracing::debug!(jail = name, key, error = %e, "not interpolated");
                    None
                }
            }
        };
        if !get("enabled").is_some_and(|e| truthy(&e)) {
            continue;
        }
        let mut skip = |what: &str| out.skipped.push(format!("{name}: {what}"));
        let jail_name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        emit!(body, "[jails.{jail_name}]");
        if jail_name != name {
            emit!(body, "# fail2ban jail [{name}]");
        }
        let filter_spec = get("filter").unwrap_or_else(|| name.to_owned());
        let (filter_name, options) = split_options(&filter_spec);
        let recidive = filter_name == "recidive";
        let filter_path = dir.join("filter.d").join(format!("{filter_name}.conf"));
        let mut journalmatch = None;
        let mut definition = None;
        if recidive {
            emit!(
                body,
                "recidive = true   # counts this daemon's own bans instead of parsing fail2ban.log"
            );
        } else {
            let read = read_definition(&filter_path, &options)
                .and_then(|d| d.clone().compile(&filter_path).map(|_| d));
            match read {
                Ok(d) => {
                    // A jail's own journalmatch wins over its filter's, as in fail2ban.
                    journalmatch = get("journalmatch")
                        .filter(|m| !m.is_empty())
                        .or_else(|| d.journalmatch.clone());
                    definition = Some(d);
                }
                Err(e) => skip(&format!("filter {filter_spec}: {e}")),
            }
            let options: Vec<String> = options
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let spec = if options.is_empty() {
                filter_path.display().to_string()
            } else {
                format!("{}[{}]", filter_path.display(), options.join(", "))
            };
            if inline && definition.is_some() {
                emit!(body, "# filter {spec}: written below as fail2ban_filter");
            } else {
                emit!(body, "filter = {}", quote(&spec));
                definition = None;
            }
        }
        let backend = get("backend").unwrap_or_else(|| "auto".into());
        if !recidive {
            if backend.starts_with("systemd") {
                match &journalmatch {
                    Some(m) => {
                        let matches: Vec<String> = m.split_whitespace().map(quote).collect();
                        emit!(
                            body,
                            "journal = {{ matches = [{}] }}\nsource = \"journal\"",
                            matches.join(", ")
                        );
                    }
                    None => skip(
                        "backend = systemd without a journalmatch in the filter — add `journal = { matches = [...] }`",
                    ),
                }
            } else {
                let paths: Vec<String> = get("logpath")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(quote)
                    .collect();
                if paths.is_empty() {
                    skip("no logpath");
                } else {
                    emit!(body, "logpath = [{}]", paths.join(", "));
                }
                // backend = auto: fail2ban users expect the journal when the files are not
                // there (no rsyslog on a stock Debian 12): banctl's `source = "auto"` reads
                // it while no file of logpath exists.
                if let Some(m) = journalmatch.as_ref().filter(|_| backend == "auto") {
                    let matches: Vec<String> = m.split_whitespace().map(quote).collect();
                    emit!(
                        body,
                        "# the journal is read while no file of logpath exists (backend = auto)\njournal = {{ matches = [{}] }}",
                        matches.join(", ")
                    );
                }
            }
        }
        // An action that bans every port (iptables-allports, nftables-allports) or the
        // containers' chain (DOCKER-USER, where the port seen is the container's, not the
        // published one): every port, as fail2ban enforced it.
        let action = get("action").unwrap_or_default();
        let all_ports = action.contains("-allports")
            || action.contains("chain=\"DOCKER-USER\"")
            || action.contains("chain=DOCKER-USER")
            || (action.is_empty() && get("banaction").is_some_and(|b| b.contains("-allports")));
        if all_ports && !recidive {
            emit!(
                body,
                "# every port: fail2ban's action banned all ports ({})",
                action.split(['[', '\n']).next().unwrap_or_default().trim()
            );
        }
        match get("port").as_deref() {
            _ if all_ports => {}
            None | Some("0:65535") | Some("") => {}
            Some(list) => {
                let mut ports = Vec::new();
                for item in list.split([',', ' ']).filter(|p| !p.is_empty()) {
                    let port = match (item, services.port(item)) {
                        ("sftp", Some(p)) => {
                            skip(
                                "port sftp is 115 in /etc/services (Simple File Transfer Protocol), as iptables reads it too; SFTP over SSH uses the ssh port",
                            );
                            Some(p)
                        }
                        // Not a service here: what users mean by it, SFTP over SSH.
                        ("sftp", None) => services.port("ssh"),
                        (_, port) => port,
                    };
                    match port {
                        Some(p) if ports.contains(&p) => {}
                        Some(p) => ports.push(p),
                        None => skip(&format!(
                            "port {item:?} — not a port, range or service in /etc/services; the jail covers the other ports"
                        )),
                    }
                }
                if !ports.is_empty() {
                    emit!(body, "ports = [{}]", ports.join(", "));
                }
            }
        }
        if let Some(p) = get("protocol").filter(|p| p != "tcp") {
            emit!(body, "protocol = {}", quote(&p));
        }
        for key in ["bantime", "findtime"] {
            if let Some(v) = get(key) {
                let value = v.split_whitespace().collect::<String>();
                match (key, value.as_str()) {
                    ("bantime", "-1") => {
                        emit!(body, "bantime = \"permanent\"");
                    }
                    _ => {
                        emit!(body, "{key} = {}", quote(&value));
                    }
                }
            }
        }
        if let Some(v) = get("maxretry") {
            emit!(body, "maxretry = {}", v.trim());
        }
        if get("ignoreself").is_some_and(|v| !truthy(&v)) {
            emit!(body, "ignoreself = false");
        }
        if let Some(list) = get("ignoreip") {
            let entries: Vec<String> = list
                .split([',', ' ', '\n'])
                .filter(|e| !e.is_empty())
                .filter(|e| {
                    let ok = e.parse::<crate::addr::IpNet>().is_ok();
                    if !ok {
                        out.skipped.push(format!(
                            "{name}: ignoreip {e:?} — host names are never resolved; use its addresses"
                        ));
                    }
                    ok
                })
                .map(quote)
                .collect();
            if !entries.is_empty() {
                emit!(body, "ignoreip = [{}]", entries.join(", "));
            }
        }
        let mut skip = |what: &str| out.skipped.push(format!("{name}: {what}"));
        if get("bantime.increment").is_some_and(|v| truthy(&v)) {
            let mut parts = Vec::new();
            if let Some(m) = get("bantime.multipliers").filter(|m| !m.is_empty()) {
                let list: Vec<&str> = m.split_whitespace().collect();
                parts.push(format!("multipliers = [{}]", list.join(", ")));
            } else {
                parts.push("factor = 2".into());
            }
            if let Some(max) = get("bantime.maxtime").filter(|m| !m.is_empty()) {
                parts.push(format!(
                    "max = {}",
                    quote(&max.split_whitespace().collect::<String>())
                ));
            }
            if get("bantime.overalljails").is_some_and(|v| truthy(&v)) {
                parts.push("across_jails = true".into());
            }
            if get("bantime.formula").is_some() {
                skip(
                    "bantime.formula — a Python expression; banctl escalates by factor or multipliers",
                );
            }
            if get("bantime.factor").is_some_and(|f| f != "1") {
                skip(
                    "bantime.factor — banctl's factor is the growth per ban (2 = doubling); adjust `escalation.factor`",
                );
            }
            emit!(body, "escalation = {{ {} }}", parts.join(", "));
        }
        if let Some(action) = ini.raw(name, "action").map(str::trim)
            && action != "%(action_)s"
        {
            skip(&format!(
                "action = {action} — banctl bans with nftables sets itself; mail and reporting actions are not carried over (closest: a [[notify]] webhook or program, see the README)"
            ));
        }
        if get("ignorecommand").is_some_and(|c| !c.is_empty()) {
            skip("ignorecommand — banctl runs no command to decide; use ignoreip");
        }
        // The jail's own keys (not those it inherits from [DEFAULT]).
        let own = ini.keys(name);
        if let Some(p) = own
            .contains(&"datepattern")
            .then(|| get("datepattern"))
            .flatten()
        {
            emit!(body, "datepattern = {}", quote(&p));
        }
        if own.contains(&"usedns") {
            match get("usedns").as_deref() {
                Some("yes") => emit!(body, "usedns = \"yes\""),
                Some("no") => emit!(body, "usedns = \"no\""),
                other => skip(&format!(
                    "usedns = {} — {USEDNS}",
                    other.unwrap_or_default()
                )),
            }
        }
        // A key the filter or the action reads (`%(knocking_url)s`) travels with them.
        let referenced = |key: &str| {
            let needle = format!("%({key})s");
            ["filter", "action"]
                .iter()
                .any(|k| ini.raw(name, k).is_some_and(|v| v.contains(&needle)))
        };
        for key in own {
            let why = match not_carried(key) {
                Some(why) => why,
                None if KNOWN.contains(&key) || key.starts_with("action_") => continue,
                None if referenced(key) => continue,
                None => "not a jail setting banctl knows",
            };
            let value = ini.raw(name, key).unwrap_or_default().trim();
            skip(&format!("{key} = {value} — {why}"));
        }
        // A table: after every key of the jail.
        if let Some(d) = &definition {
            emit!(body, "\n[jails.{jail_name}.fail2ban_filter]");
            body.push_str(&inline_filter(d));
        }
        body.push('\n');
        out.jails.push(jail_name);
    }
    // [DEFAULT] keys that change what fail2ban does and have no banctl equivalent: said once,
    // not once per jail (fail2ban's stock values say nothing).
    let mut defaults = Vec::new();
    for key in ini.keys("DEFAULT") {
        let value = ini.raw("DEFAULT", key).unwrap_or_default().trim();
        if STOCK_DEFAULTS.contains(&(key, value)) {
            continue;
        }
        if let Some(why) = not_carried(key).or_else(|| (key == "usedns").then_some(USEDNS)) {
            defaults.push(format!("[DEFAULT]: {key} = {value} — {why}"));
        }
    }
    out.skipped.splice(0..0, defaults);
    let mut toml = format!(
        "# Imported from fail2ban ({}) by banctl import-fail2ban.\n# Check it with: banctl check-config FILE\n",
        dir.display()
    );
    if !out.skipped.is_empty() {
        toml.push_str("#\n# Not carried over:\n");
        for s in &out.skipped {
            emit!(toml, "#   {s}");
        }
    }
    toml.push('\n');
    toml.push_str(&body);
    out.toml = toml;
    Ok(out)
}

/// What fail2ban does with `usedns` other than yes/no, and what banctl does instead.
const USEDNS: &str = "fail2ban resolves host names found in logs (warn: and logs it); banctl never resolves a name unless the jail says usedns = \"yes\" (a name is the attacker's choice): set it on the jails whose logs hold names you trust";

/// [DEFAULT] values as fail2ban ships them: nothing to say about these.
const STOCK_DEFAULTS: &[(&str, &str)] = &[
    ("maxmatches", "%(maxretry)s"),
    ("logencoding", "auto"),
    ("ignorecommand", ""),
    ("usedns", "no"),
    ("usedns", "yes"),
];

/// Why a jail key has no banctl equivalent (with the closest feature); `None` for the keys
/// the import carries over or that only feed other keys (`banaction`, `mta`, `mode`, …).
fn not_carried(key: &str) -> Option<&'static str> {
    Some(match key {
        "bantime.rndtime" => {
            "banctl adds no random time to a ban (escalation lengthens repeated ones)"
        }
        "maxmatches" => "banctl keeps up to maxretry matched lines (at most 20) for notifications",
        "logencoding" => {
            "banctl reads logs as UTF-8 (other bytes are replaced); convert the log or set the service's encoding"
        }
        "failregex" | "ignoreregex" | "prefregex" => {
            "patterns in fail2ban's dialect set in the jail: put them in the filter file, or write them as banctl patterns (`failregex`, README)"
        }
        "maxlines" => {
            "a multi-line window set in the jail: set it in the filter file (or its fail2ban_filter table)"
        }
        "ignorecache" => "banctl checks ignoreip itself, without a cache",
        k if k.starts_with("bantime.") && !KNOWN.contains(&k) => {
            "a bantime.* setting banctl has no equivalent for"
        }
        _ => return None,
    })
}

/// Jail keys the import carries over, or that only feed other keys (actions' inputs, the
/// filter's mode): nothing to list.
const KNOWN: &[&str] = &[
    "enabled",
    "filter",
    "backend",
    "logpath",
    "port",
    "protocol",
    "bantime",
    "findtime",
    "maxretry",
    "ignoreself",
    "ignoreip",
    "bantime.increment",
    "bantime.multipliers",
    "bantime.maxtime",
    "bantime.overalljails",
    "bantime.formula",
    "bantime.factor",
    "action",
    "ignorecommand",
    "banaction",
    "banaction_allports",
    "chain",
    "journalmatch",
    "datepattern",
    "mode",
    "usedns",
    "mta",
    "destemail",
    "sender",
    "sendername",
    "before",
    "after",
];

/// jail.conf, jail.d/*.conf, jail.local, jail.d/*.local, as fail2ban reads them.
fn read_jails(dir: &Path) -> Result<Ini, Fail2banError> {
    let mut ini = Ini::default();
    ini.read_more(&dir.join("jail.conf"))?;
    let listed = |ext: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("jail.d"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        files
    };
    for file in listed("conf") {
        ini.read_more(&file)?;
    }
    let local = dir.join("jail.local");
    if local.is_file() {
        ini.read_more(&local)?;
    }
    for file in listed("local") {
        ini.read_more(&file)?;
    }
    Ok(ini)
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on"
    )
}

/// A filter's definition as the keys of a `fail2ban_filter` table.
fn inline_filter(d: &Definition) -> String {
    let list = |patterns: &[String]| -> String {
        if patterns.is_empty() {
            return "[]".into();
        }
        let items: Vec<String> = patterns
            .iter()
            .map(|p| format!("  {},\n", pattern_string(p)))
            .collect();
        format!("[\n{}]", items.concat())
    };
    let mut out = String::new();
    if let Some(p) = &d.prefregex {
        emit!(out, "prefregex = {}", pattern_string(p));
    }
    emit!(out, "failregex = {}", list(&d.failregex));
    emit!(out, "ignoreregex = {}", list(&d.ignoreregex));
    if let Some(p) = &d.datepattern {
        emit!(out, "datepattern = {}", pattern_string(p));
    }
    if d.maxlines > 1 {
        emit!(out, "maxlines = {}", d.maxlines);
    }
    out
}

/// A regex as a TOML string: a literal string (no escapes to read) when it can be one.
fn pattern_string(pattern: &str) -> String {
    if pattern.contains('\'') || pattern.chars().any(char::is_control) {
        quote(pattern)
    } else {
        format!("'{pattern}'")
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Service names to ports, from /etc/services (TCP entries).
struct Services(BTreeMap<String, u16>);

impl Services {
    fn read(path: &Path) -> Services {
        let mut map = BTreeMap::new();
        for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let (Some(name), Some(port)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((number, proto)) = port.split_once('/') else {
                continue;
            };
            let Ok(number) = number.parse::<u16>() else {
                continue;
            };
            if proto != "tcp" && map.contains_key(name) {
                continue;
            }
            map.insert(name.to_owned(), number);
            for alias in fields {
                map.entry(alias.to_owned()).or_insert(number);
            }
        }
        // fail2ban's jail.conf uses these; a minimal system may lack /etc/services.
        for (name, port) in [("ssh", 22), ("http", 80), ("https", 443), ("smtp", 25)] {
            map.entry(name.to_owned()).or_insert(port);
        }
        Services(map)
    }

    /// `22`, `ssh`, `8000:8100` (fail2ban's range) or `8000-8100` → banctl's spelling.
    fn port(&self, item: &str) -> Option<String> {
        if let Some((a, b)) = item.split_once([':', '-']) {
            let (a, b) = (self.number(a)?, self.number(b)?);
            return Some(format!("\"{a}-{b}\""));
        }
        self.number(item).map(|p| p.to_string())
    }

    fn number(&self, item: &str) -> Option<u16> {
        item.parse().ok().or_else(|| self.0.get(item).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail2ban_dir(jail_local: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "banctl-import-{}-{}",
            std::process::id(),
            jail_local.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("filter.d")).unwrap();
        std::fs::write(
            dir.join("filter.d/app.conf"),
            "[Definition]\nfailregex = ^login failed from <HOST>$\n[Init]\njournalmatch = _SYSTEMD_UNIT=app.service\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("jail.conf"),
            "[DEFAULT]\nbantime = 10m\nmaxretry = 5\nmaxmatches = %(maxretry)s\nusedns = warn\n\
             logencoding = auto\nchain = INPUT\nbanaction = iptables-multiport\n\
             banaction_allports = iptables-allports\n\
             action_ = %(banaction)s[port=\"%(port)s\", protocol=\"tcp\", chain=\"%(chain)s\"]\n\
             action = %(action_)s\n",
        )
        .unwrap();
        std::fs::write(dir.join("jail.local"), jail_local).unwrap();
        dir
    }

    #[test]
    fn all_ports_actions_and_every_key_not_carried_are_said() {
        let dir = fail2ban_dir(
            "[DEFAULT]\nbantime.rndtime = 5m\n\n\
             [app]\nenabled = true\nport = 8080\nlogpath = /var/log/app.log\nmaxmatches = 2\n\
             logencoding = utf-16\nknocking_url = /knock\ndatepattern = ^%%Y-%%m-%%d %%H:%%M:%%S\n\n\
             [app-all]\nenabled = true\nfilter = app\nport = 8080\nlogpath = /var/log/app.log\n\
             banaction = nftables-allports\n\n\
             [app-docker]\nenabled = true\nfilter = app\nport = 8096\nlogpath = /var/log/app.log\n\
             chain = DOCKER-USER\njournalmatch = _SYSTEMD_UNIT=docker.service\n",
        );
        let import = import(&dir, false).unwrap();
        let toml = &import.toml;
        let jail = |name: &str| -> &str {
            let start = toml.find(&format!("[jails.{name}]\n")).unwrap();
            let rest = &toml[start + 1..];
            &toml[start..start + 1 + rest.find("\n[jails.").unwrap_or(rest.len())]
        };
        assert!(jail("app").contains("ports = [8080]"), "{toml}");
        assert!(
            jail("app").contains("datepattern = \"^%Y-%m-%d %H:%M:%S\""),
            "{toml}"
        );
        for all in ["app-all", "app-docker"] {
            assert!(!jail(all).contains("ports ="), "{toml}");
            assert!(
                jail(all).contains("# every port: fail2ban's action banned all ports"),
                "{toml}"
            );
        }
        // The jail's own journalmatch over the filter's.
        assert!(
            jail("app-docker")
                .contains("journal = { matches = [\"_SYSTEMD_UNIT=docker.service\"] }"),
            "{toml}"
        );
        let said = import.skipped.join("\n");
        for expected in [
            "[DEFAULT]: usedns = warn — fail2ban resolves host names",
            "[DEFAULT]: bantime.rndtime = 5m — banctl adds no random time",
            "app: maxmatches = 2 — banctl keeps up to maxretry matched lines",
            "app: logencoding = utf-16 — banctl reads logs as UTF-8",
            "app: knocking_url = /knock — not a jail setting banctl knows",
        ] {
            assert!(said.contains(expected), "{expected:?} in\n{said}");
        }
        // Said once, however many jails inherit it; stock values not at all.
        assert_eq!(said.matches("usedns = warn").count(), 1, "{said}");
        assert!(!said.contains("maxmatches = %(maxretry)s"), "{said}");
        assert!(!said.contains("logencoding = auto"), "{said}");
        crate::config::Config::parse(Path::new("imported.toml"), toml)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
