//! The effective configuration as TOML (`banctl config`): every key with the value the daemon
//! uses, defaults and `[defaults]` applied, drop-ins merged. Secrets are never printed: files
//! that hold them are named, as written.

use toml::{Table, Value};

use super::{Config, JailConfig, PrefixLens, SourceChoice, UseDns};
use crate::duration::format_duration;
use crate::notify::{NotifyConfig, Target};

/// `config` as a TOML document.
pub fn render(config: &Config) -> String {
    render_running(config, &config.daemon, config.fleet.as_ref())
}

/// `config` as a TOML document, with the `[daemon]` and `[fleet]` settings a running daemon
/// keeps until it restarts (its socket, state directory, metrics address, fleet link).
pub fn render_running(
    config: &Config,
    daemon: &super::DaemonConfig,
    fleet: Option<&super::FleetConfig>,
) -> String {
    let mut root = Table::new();
    root.insert("daemon".into(), Value::Table(self::daemon(daemon)));
    let mut jails = Table::new();
    for jail in &config.jails {
        jails.insert(jail.name.clone(), Value::Table(self::jail(jail)));
    }
    root.insert("jails".into(), Value::Table(jails));
    if !config.notify.is_empty() {
        let notify = config
            .notify
            .iter()
            .map(notifier)
            .map(Value::Table)
            .collect();
        root.insert("notify".into(), Value::Array(notify));
    }
    if let Some(fleet) = fleet {
        root.insert("fleet".into(), Value::Table(self::fleet(fleet)));
    }
    toml::to_string(&root).unwrap_or_else(|e| format!("# cannot write TOML: {e}\n"))
}

fn text(s: impl ToString) -> Value {
    Value::String(s.to_string())
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Array(items.into_iter().map(text).collect())
}

fn duration(d: std::time::Duration) -> Value {
    text(format_duration(d))
}

fn prefixes(p: PrefixLens) -> Value {
    let mut t = Table::new();
    t.insert("v4".into(), Value::Integer(p.v4.into()));
    t.insert("v6".into(), Value::Integer(p.v6.into()));
    Value::Table(t)
}

fn daemon(d: &super::DaemonConfig) -> Table {
    let mut t = Table::new();
    t.insert("socket".into(), text(d.socket.display()));
    t.insert("state_dir".into(), text(d.state_dir.display()));
    t.insert("history".into(), duration(d.history));
    t.insert("readback".into(), Value::Boolean(d.readback));
    if let Some(m) = d.metrics {
        t.insert("metrics".into(), text(m));
    }
    if let Some(g) = &d.admin_group {
        t.insert("admin_group".into(), text(&g.name));
    }
    if let Some(g) = &d.read_group {
        t.insert("read_group".into(), text(&g.name));
    }
    t
}

fn jail(j: &JailConfig) -> Table {
    let mut t = Table::new();
    let reads_log = !j.recidive && j.filter_name != super::FLEET_JAIL;
    if j.recidive {
        t.insert("recidive".into(), Value::Boolean(true));
    } else if !matches!(j.filter_name.as_str(), "inline" | "fleet") {
        t.insert("filter".into(), text(&j.filter_name));
    }
    let (failregex, ignoreregex) = &j.written_patterns;
    if !failregex.is_empty() {
        t.insert("failregex".into(), list(failregex));
    }
    if !ignoreregex.is_empty() {
        t.insert("ignoreregex".into(), list(ignoreregex));
    }
    if reads_log {
        if !j.logpaths.is_empty() {
            t.insert("logpath".into(), list(&j.logpaths));
        }
        if let Some(journal) = &j.journal {
            let mut jt = Table::new();
            jt.insert("matches".into(), list(&journal.matches));
            if let Some(dir) = &journal.directory {
                jt.insert("directory".into(), text(dir.display()));
            }
            t.insert("journal".into(), Value::Table(jt));
        }
        let source = match j.source {
            SourceChoice::Auto => "auto",
            SourceChoice::File => "file",
            SourceChoice::Journal => "journal",
        };
        t.insert("source".into(), text(source));
        t.insert("logtimezone".into(), text(j.dates.zone_name()));
        let usedns = match j.usedns {
            UseDns::No => "no",
            UseDns::Warn => "warn",
            UseDns::Yes => "yes",
        };
        t.insert("usedns".into(), text(usedns));
    }
    t.insert("ports".into(), list(&j.ports));
    t.insert("protocol".into(), text(j.protocol));
    t.insert("bantime".into(), text(j.bantime));
    t.insert("findtime".into(), duration(j.findtime));
    t.insert("maxretry".into(), Value::Integer(j.maxretry.into()));
    t.insert("ignoreip".into(), list(&j.ignoreip));
    t.insert("ignoreself".into(), Value::Boolean(j.ignoreself));
    t.insert("forward".into(), Value::Boolean(j.forward));
    t.insert("ban_prefix".into(), prefixes(j.ban_prefix));
    t.insert("min_prefix".into(), prefixes(j.min_prefix));
    t.insert("count_by_prefix".into(), Value::Boolean(j.count_by_prefix));
    t.insert(
        "max_tracked".into(),
        Value::Integer(i64::try_from(j.max_tracked).unwrap_or(i64::MAX)),
    );
    if let Some(e) = &j.escalation {
        let mut et = Table::new();
        if e.multipliers.is_empty() {
            et.insert("factor".into(), Value::Float(e.factor));
        } else {
            let m = e.multipliers.iter().map(|m| Value::Integer((*m).into()));
            et.insert("multipliers".into(), Value::Array(m.collect()));
        }
        if let Some(max) = e.max {
            et.insert("max".into(), duration(max));
        }
        et.insert("across_jails".into(), Value::Boolean(e.across_jails));
        t.insert("escalation".into(), Value::Table(et));
    }
    t
}

fn notifier(n: &NotifyConfig) -> Table {
    let mut t = Table::new();
    match &n.target {
        Target::Webhook {
            url,
            headers,
            retries,
        } => {
            t.insert("url".into(), text(url));
            if !headers.is_empty() {
                // Header values are often secrets (`Authorization`): named, not shown.
                let names = headers.iter().map(|(name, _)| name);
                t.insert("headers".into(), list(names));
            }
            t.insert("retries".into(), Value::Integer((*retries).into()));
        }
        Target::Exec { argv } => {
            t.insert("command".into(), list(argv));
        }
        Target::Mail { mail, retries } => {
            let to = mail.to.iter().map(ToString::to_string).collect::<Vec<_>>();
            t.insert("mail".into(), text(to.join(", ")));
            t.insert("from".into(), text(&mail.from));
            t.insert("smtp".into(), text(format!("{}:{}", mail.host, mail.port)));
            t.insert("starttls".into(), Value::Boolean(mail.starttls));
            if let Some((user, file)) = &mail.credentials {
                t.insert("user".into(), text(user));
                t.insert("password_file".into(), text(file.display()));
            }
            t.insert("retries".into(), Value::Integer((*retries).into()));
        }
    }
    let mut on = Vec::new();
    if n.on_ban {
        on.push("ban");
    }
    if n.on_unban {
        on.push("unban");
    }
    t.insert("on".into(), list(on));
    if let Some(jails) = &n.jails {
        t.insert("jails".into(), list(jails));
    }
    t.insert("timeout".into(), duration(n.timeout));
    t
}

fn fleet(f: &super::FleetConfig) -> Table {
    use super::{Apply, Auth};
    let mut t = Table::new();
    t.insert("role".into(), text(f.role.as_str()));
    t.insert("name".into(), text(&f.name));
    t.insert("servers".into(), list(&f.servers));
    match &f.auth {
        Auth::None => {}
        Auth::Credentials(p) => {
            t.insert("credentials".into(), text(p.display()));
        }
        Auth::NkeySeed(p) => {
            t.insert("nkey_seed".into(), text(p.display()));
        }
        Auth::Password { user, file } => {
            t.insert("user".into(), text(user));
            t.insert("password_file".into(), text(file.display()));
        }
    }
    if let Some(tls) = &f.tls {
        if let Some(ca) = &tls.ca {
            t.insert("tls_ca".into(), text(ca.display()));
        }
        if let Some((cert, key)) = &tls.client {
            t.insert("tls_cert".into(), text(cert.display()));
            t.insert("tls_key".into(), text(key.display()));
        }
    }
    t.insert("bucket".into(), text(&f.bucket));
    t.insert(
        "replicas".into(),
        Value::Integer(i64::try_from(f.replicas).unwrap_or(1)),
    );
    t.insert("keep".into(), duration(f.keep));
    t.insert("min_prefix".into(), prefixes(f.min_prefix));
    t.insert(
        "max_per_minute".into(),
        Value::Integer(f.max_per_minute.into()),
    );
    t.insert(
        "queue".into(),
        Value::Integer(i64::try_from(f.queue).unwrap_or(i64::MAX)),
    );
    let apply = match f.apply {
        Apply::SameJail => "same-jail",
        Apply::Fleet => "fleet",
    };
    t.insert("apply".into(), text(apply));
    t.insert("wait".into(), duration(f.wait));
    t
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What `banctl config` prints is itself a valid configuration that means the same.
    #[test]
    fn the_effective_configuration_reads_back_as_the_same() {
        let written = r#"
[defaults]
bantime = "1h"
maxretry = 3
ignoreip = ["10.0.0.0/8"]

[jails.sshd]
filter = "sshd[mode=aggressive]"
logpath = "/var/log/auth.log"
escalation = { factor = 2, max = "1w" }

[jails.app]
failregex = ['^login failed from <HOST>$']
ignoreregex = ['trusted']
logpath = ["/var/log/app/*.log"]
ports = [443, "8000-8100"]
protocol = "both"
logtimezone = "Europe/Berlin"

[jails.recidive]
recidive = true
bantime = "1w"

[[notify]]
url = "http://127.0.0.1:8080/hook"
headers = { Authorization = "Bearer s3cret" }

[[notify]]
mail = "root@localhost"
on = ["ban", "unban"]
"#;
        let config = Config::parse(Path::new("/etc/banctl/banctl.toml"), written).unwrap();
        let shown = render(&config);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("maxretry = 3"), "{shown}");
        assert!(shown.contains("findtime = \"10m\""), "{shown}");
        assert!(shown.contains("logtimezone = \"Europe/Berlin\""), "{shown}");
        // The notifier's secret header is left out: the rest reads back as the same.
        let again = Config::parse(
            Path::new("/etc/banctl/banctl.toml"),
            &shown.replace("headers = [\"Authorization\"]\n", ""),
        )
        .unwrap_or_else(|e| panic!("{e}\n{shown}"));
        assert_eq!(
            render(&again),
            shown.replace("headers = [\"Authorization\"]\n", "")
        );
        let names = |c: &Config| c.jails.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&again), names(&config));
        for (a, b) in again.jails.iter().zip(&config.jails) {
            assert_eq!(
                (
                    a.bantime,
                    a.findtime,
                    a.maxretry,
                    &a.ignoreip,
                    &a.ports,
                    a.protocol
                ),
                (
                    b.bantime,
                    b.findtime,
                    b.maxretry,
                    &b.ignoreip,
                    &b.ports,
                    b.protocol
                )
            );
            assert_eq!(a.escalation, b.escalation);
            assert_eq!(a.filter.patterns().len(), b.filter.patterns().len());
        }
    }
}
