//! The command line: arguments (clap) and how answers are printed.
//!
//! Printing lives here, apart from `main`, so that the text admins read is tested and stable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::addr::IpNet;
use crate::config::{DEFAULT_CONFIG, DEFAULT_SOCKET};
use crate::control::{BanInfo, JailStatus};
use crate::duration::{BanTime, format_duration};

/// Process exit codes, as documented in the README; [`Exit`] is the typed form.
pub mod exit {
    use super::Exit;
    pub const OK: i32 = Exit::Ok as i32;
    /// Anything not listed below.
    pub const FAILURE: i32 = Exit::Failure as i32;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = Exit::Usage as i32;
    /// The configuration file is invalid or unreadable.
    pub const CONFIG: i32 = Exit::Config as i32;
    /// The daemon cannot be reached on its socket.
    pub const UNAVAILABLE: i32 = Exit::Unavailable as i32;
    /// Nothing matched: no such ban or no such jail.
    pub const NOT_FOUND: i32 = Exit::NotFound as i32;
    /// The request was refused: permission, or an ignored address.
    pub const REFUSED: i32 = Exit::Refused as i32;
    /// The kernel refused a firewall change.
    pub const FIREWALL: i32 = Exit::Firewall as i32;
}

/// Every exit code banctl documents. Errors map to one case by case (`From<&…>` below), never
/// by guessing from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Config = 3,
    Unavailable = 4,
    NotFound = 5,
    Refused = 6,
    Firewall = 7,
}

impl From<&crate::control::ErrorKind> for Exit {
    fn from(kind: &crate::control::ErrorKind) -> Exit {
        use crate::control::ErrorKind;
        match kind {
            ErrorKind::NotBanned | ErrorKind::UnknownJail => Exit::NotFound,
            ErrorKind::Ignored | ErrorKind::TooBroad | ErrorKind::PermissionDenied => Exit::Refused,
            ErrorKind::Firewall => Exit::Firewall,
            ErrorKind::Config => Exit::Config,
            ErrorKind::Unavailable => Exit::Unavailable,
            ErrorKind::BadRequest | ErrorKind::Version => Exit::Failure,
        }
    }
}

impl From<&crate::control::ControlError> for Exit {
    fn from(e: &crate::control::ControlError) -> Exit {
        use crate::control::ControlError;
        match e {
            ControlError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Exit::Refused
            }
            ControlError::Connect { .. } => Exit::Unavailable,
            ControlError::Io(_) | ControlError::Protocol(_) => Exit::Failure,
            ControlError::Bind { .. } => Exit::Failure,
        }
    }
}

impl From<&crate::firewall::FirewallError> for Exit {
    fn from(_: &crate::firewall::FirewallError) -> Exit {
        Exit::Firewall
    }
}

impl From<&crate::engine::EngineError> for Exit {
    fn from(e: &crate::engine::EngineError) -> Exit {
        use crate::engine::EngineError;
        match e {
            EngineError::UnknownJail(_) | EngineError::NotBanned { .. } => Exit::NotFound,
            EngineError::TooBroad { .. } | EngineError::Ignored { .. } => Exit::Refused,
            EngineError::Enforcer(_) => Exit::Firewall,
            EngineError::Ledger(_) => Exit::Failure,
        }
    }
}

impl From<&crate::daemon::DaemonError> for Exit {
    fn from(e: &crate::daemon::DaemonError) -> Exit {
        use crate::daemon::DaemonError;
        match e {
            DaemonError::Firewall(e) => e.into(),
            DaemonError::Engine(e) => e.into(),
            DaemonError::Control(e) => e.into(),
            DaemonError::Source(_)
            | DaemonError::Signal(_)
            | DaemonError::Privilege(_)
            | DaemonError::State(_)
            | DaemonError::Monitor(_)
            | DaemonError::Metrics(_)
            | DaemonError::Servers(_)
            | DaemonError::Fleet(_)
            | DaemonError::Instance(_) => Exit::Failure,
        }
    }
}

impl Exit {
    /// The code of the first error in `error`'s chain that has one; [`Exit::Failure`] else.
    pub fn of(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if cause.is::<crate::config::ConfigError>() {
                return Exit::Config;
            }
            if let Some(e) = cause.downcast_ref::<crate::daemon::DaemonError>() {
                return e.into();
            }
            if let Some(e) = cause.downcast_ref::<crate::control::ControlError>() {
                return e.into();
            }
            if let Some(e) = cause.downcast_ref::<crate::firewall::FirewallError>() {
                return e.into();
            }
            if let Some(e) = cause.downcast_ref::<crate::engine::EngineError>() {
                return e.into();
            }
        }
        Exit::Failure
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "banctl",
    version,
    about = "nftables-native intrusion prevention: bans as kernel set elements with timeouts",
    after_help = "Examples:\n  banctl daemon --config /etc/banctl/banctl.toml\n  banctl list\n  banctl unban 203.0.113.5\n  banctl ban sshd 203.0.113.0/24 --time 1d\n  banctl status sshd"
)]
pub struct Cli {
    /// Configuration file: the daemon's, and where the other commands find its socket.
    #[arg(long, short, global = true, env = "BANCTL_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Control socket of the daemon [default: the configuration's `[daemon] socket`, else
    /// /run/banctl/banctl.sock].
    #[arg(long, global = true, env = "BANCTL_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The daemon's control socket: `--socket` (or `BANCTL_SOCKET`), else the one the
    /// configuration file names, else the default.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            crate::config::socket_named_in(&self.config)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: follow logs, count failures, write bans into nftables.
    Daemon,
    /// Show active bans (read from the kernel when the daemon is down).
    #[command(after_help = "Examples:\n  banctl list\n  banctl list --jail sshd --json")]
    List {
        /// Only this jail's bans.
        #[arg(long)]
        jail: Option<String>,
        /// Print a JSON array of {jail, address, expires_in_s, bantime_s, ban_count}.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or prefix in a jail now.
    #[command(
        after_help = "Examples:\n  banctl ban sshd 203.0.113.5\n  banctl ban sshd 2001:db8:1::/64 --time 1w"
    )]
    Ban {
        /// The jail whose sets (ports) hold the ban.
        jail: String,
        /// An address (203.0.113.5) or a prefix (2001:db8:1::/64).
        target: IpNet,
        /// Ban length (90s, 10m, 1h, 1d, 1w, permanent); default: the jail's bantime.
        #[arg(long)]
        time: Option<BanTime>,
    },
    /// Lift the ban covering an address, in one jail or all.
    #[command(
        after_help = "Examples:\n  banctl unban 203.0.113.5\n  banctl unban 2001:db8:1::5 --jail sshd\n  banctl unban --all --jail sshd"
    )]
    Unban {
        /// The address or prefix to let in again.
        #[arg(
            required_unless_present_any = ["all", "origin"],
            conflicts_with_all = ["all", "origin"]
        )]
        target: Option<IpNet>,
        /// Lift every ban (of one jail with --jail).
        #[arg(long, conflicts_with = "origin")]
        all: bool,
        /// Only in this jail (default: every jail).
        #[arg(long, conflicts_with = "origin")]
        jail: Option<String>,
        /// Lift every ban that host HOST of the fleet made here.
        #[arg(long, value_name = "HOST")]
        origin: Option<String>,
    },
    /// List the built-in filters with a one-line description.
    Filters,
    /// Show jails: sources, counters, bans and dropped packets.
    Status {
        /// One jail: with its settings and banned addresses.
        jail: Option<String>,
        /// Print JSON (see README, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon read its configuration again (as SIGHUP does); an invalid file changes
    /// nothing and every error is printed.
    Reload,
    /// Try a filter on a log file or on one line, as fail2ban-regex does.
    #[command(
        after_help = "LOG is a log file, one line, or - (standard input). FILTER is a built-in filter name (see `banctl filters`), a banctl filter file (TOML with failregex, ignoreregex), a fail2ban filter file (.conf), or a failregex itself (it holds <HOST>, as fail2ban-regex takes one).\n\nExamples:\n  banctl test /var/log/auth.log sshd\n  journalctl -u ssh -o short | banctl test - sshd\n  banctl test /var/log/app.log 'login failed for .* from <HOST>'\n  banctl test 'Nov 21 10:00:00 web sshd[7]: Invalid user x from 203.0.113.5 port 22' sshd\n  banctl test /var/log/tightvnc.log /etc/banctl/filter.d/tightvnc.toml --print-missed"
    )]
    Test {
        /// A log file, or a single log line.
        input: String,
        /// A built-in filter name, a banctl filter file (.toml), or a fail2ban filter file
        /// (.conf, read with its includes and .local); options as in fail2ban:
        /// `/etc/fail2ban/filter.d/sshd.conf[mode=aggressive]`.
        filter: String,
        #[command(flatten)]
        options: TestOptions,
    },
    /// Turn a fail2ban configuration into a banctl one: the enabled jails, their filters
    /// (referenced as fail2ban filter files), ports, times, ignoreip, escalation. What cannot
    /// be carried over is listed with the reason, in the output and on stderr.
    #[command(name = "import-fail2ban")]
    ImportFail2ban {
        /// fail2ban's configuration directory.
        #[arg(long, default_value = "/etc/fail2ban")]
        dir: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write each filter into the configuration (interpolated, as a `fail2ban_filter`
        /// table) instead of referring to its file in the fail2ban directory.
        #[arg(long)]
        inline: bool,
    },
    /// Print the configuration the daemon runs, as TOML with every default applied (read
    /// from the file, and said so, when the daemon is down).
    #[command(
        after_help = "Examples:\n  banctl config\n  banctl config | grep -A20 '\\[jails.sshd\\]'"
    )]
    Config,
    /// Change the running daemon's log level until it stops (as BANCTL_LOG at start).
    #[command(
        name = "log-level",
        after_help = "Examples:\n  banctl log-level debug\n  banctl log-level 'info,banctl::source=debug'\n  banctl log-level info"
    )]
    LogLevel {
        /// error, warn, info, debug, trace, or a filter (`info,banctl::source=debug`).
        level: String,
    },
    /// Write a first configuration from what this machine shows: one jail per service found
    /// (systemd units, journal, log files, Docker containers, listening ports), each with its
    /// evidence, never banning the SSH session that runs it nor the host's networks.
    #[command(
        after_help = "Never overwrites a file: the configuration goes to --config's path (/etc/banctl/banctl.toml) only when none is there.\n\nExamples:\n  banctl init --dry-run\n  banctl init\n  banctl init --root /mnt/oldserver --dry-run"
    )]
    Init {
        /// Print the configuration instead of writing it.
        #[arg(long)]
        dry_run: bool,
        /// Survey the system whose root directory this is (a mounted disk, a container's
        /// tree) instead of this one.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Validate a configuration file and print every error.
    CheckConfig {
        /// The file to check [default: --config's].
        path: Option<PathBuf>,
    },
    /// Print the NATS permissions fleet host HOST needs (its user's `permissions` value in
    /// the server's configuration): publish under its own name only.
    #[command(after_help = "Example:\n  banctl nats-permissions web1")]
    NatsPermissions {
        /// The fleet host's name (its `[fleet] name`).
        host: String,
        /// The fleet's key-value bucket (`[fleet] bucket`).
        #[arg(long, default_value = "banctl")]
        bucket: String,
    },
    /// Print the version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  banctl completions bash > /etc/bash_completion.d/banctl")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (banctl.8, banctl-<command>.8) into DIR; used by packaging.
    #[command(hide = true)]
    Manpages {
        /// The directory to write into.
        dir: PathBuf,
    },
}

fn remaining(b: &BanInfo) -> String {
    match b.expires_in_s {
        Some(0) => "<1s".to_owned(),
        Some(s) => format_duration(std::time::Duration::from_secs(s)),
        None => "permanent".to_owned(),
    }
}

/// `banctl list` as a table.
pub fn render_bans(bans: &[BanInfo]) -> String {
    if bans.is_empty() {
        return "no active bans\n".to_owned();
    }
    let width_jail = bans.iter().map(|b| b.jail.len()).max().unwrap_or(0).max(4);
    let width_addr = bans
        .iter()
        .map(|b| b.address.to_string().len())
        .max()
        .unwrap_or(0)
        .max(7);
    // Every column as wide as its longest value (`6d23h59m58s`, a ban number of 6 digits).
    let left: Vec<String> = bans.iter().map(remaining).collect();
    let counts: Vec<String> = bans
        .iter()
        .map(|b| b.ban_count.map_or("-".to_owned(), |n| n.to_string()))
        .collect();
    let width_left = left.iter().map(String::len).max().unwrap_or(0).max(10);
    let width_count = counts.iter().map(String::len).max().unwrap_or(0).max(5);
    let mut out = format!(
        "{:width_jail$}  {:width_addr$}  {:width_left$}  {:width_count$}  ORIGIN\n",
        "JAIL", "ADDRESS", "EXPIRES IN", "BAN #"
    );
    for ((b, left), count) in bans.iter().zip(&left).zip(&counts) {
        let origin = b.origin.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "{:width_jail$}  {:width_addr$}  {left:width_left$}  {count:width_count$}  {origin}\n",
            b.jail,
            b.address.to_string(),
        ));
    }
    out
}

/// The fleet link's line of `banctl status`.
pub fn render_fleet(f: &crate::fleet::LinkStatus) -> String {
    let link = match (f.connected, f.caught_up) {
        (true, true) => "connected, caught up",
        (true, false) => "connected, catching up",
        (false, _) => "DISCONNECTED",
    };
    let mut out = format!(
        "fleet: {} as {} — {link}; applied up to {} of {} (lag {}); queued {}; published {}, received {}",
        f.name,
        f.role,
        f.applied,
        f.stream_last,
        f.stream_last.saturating_sub(f.applied),
        f.queued,
        f.published,
        f.received,
    );
    if let Some(e) = f
        .last_error
        .as_ref()
        .filter(|_| !f.connected || f.queued > 0)
    {
        out.push_str(&format!("\n  last error: {e}"));
    }
    out.push('\n');
    out
}

/// `banctl status` as text.
pub fn render_status(jails: &[JailStatus]) -> String {
    let mut out = String::new();
    for j in jails {
        let ports = if j.ports.is_empty() {
            "all".to_owned()
        } else {
            j.ports.join(", ")
        };
        out.push_str(&format!("jail {}\n", j.name));
        out.push_str(&format!("  filter:       {}\n", j.filter));
        let sources: Vec<String> = j
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| match j.source_states.get(i) {
                Some(state) => format!("{s} ({state})"),
                None => s.clone(),
            })
            .collect();
        out.push_str(&format!("  sources:      {}\n", sources.join(", ")));
        out.push_str(&format!("  ports:        {} {}\n", j.protocol, ports));
        out.push_str(&format!(
            "  policy:       ban for {} after {} failures within {}\n",
            j.bantime,
            j.maxretry,
            format_duration(std::time::Duration::from_secs(j.findtime_s))
        ));
        out.push_str(&format!(
            "  tracked:      {} address(es) with recent failures\n",
            j.tracked
        ));
        out.push_str(&format!("  active bans:  {}\n", j.active_bans));
        out.push_str(&format!(
            "  dropped:      {} packets, {} bytes\n",
            j.dropped_packets, j.dropped_bytes
        ));
        out.push_str(&format!(
            "  since start:  {} failures, {} bans\n",
            j.failures_total, j.bans_total
        ));
        // The settings and bans of one jail asked for by name.
        if let Some(bans) = &j.bans {
            let mut ignored = j.ignoreip.clone();
            if j.ignoreself {
                ignored.push("loopback and this host's addresses (ignoreself)".to_owned());
            }
            let ignored = if ignored.is_empty() {
                "nothing".to_owned()
            } else {
                ignored.join(", ")
            };
            out.push_str(&format!("  ignores:      {ignored}\n"));
            let escalation = j
                .escalation
                .as_deref()
                .unwrap_or("none (every ban lasts bantime)");
            out.push_str(&format!("  escalation:   {escalation}\n"));
            if !bans.is_empty() {
                out.push_str("  banned:\n");
                for line in render_bans(bans).lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
    }
    out
}

/// An error and its causes on one line, each cause said once: a message that already quotes
/// its cause (`cannot read x: No such file…`) is not followed by the cause again.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Every exit code and what it means: the README's table and the man pages' EXIT STATUS
/// are this list (a test holds the README to it).
pub const EXIT_CODES: &[(Exit, &str)] = &[
    (Exit::Ok, "success"),
    (Exit::Failure, "any other failure"),
    (Exit::Usage, "bad command line"),
    (Exit::Config, "invalid or unreadable configuration"),
    (
        Exit::Unavailable,
        "the daemon cannot be reached on its socket (not running, no socket file), or is shutting down",
    ),
    (
        Exit::NotFound,
        "nothing matched: no such ban, or no such jail",
    ),
    (
        Exit::Refused,
        "refused: the address is ignored by the jail, the prefix is broader than `min_prefix`, or permission denied (by the socket's mode or by the daemon)",
    ),
    (Exit::Firewall, "the kernel refused the firewall change"),
];

/// The README's exit code table, as [`EXIT_CODES`] gives it.
pub fn exit_code_table() -> String {
    let mut out = String::from("| code | meaning |\n| --- | --- |\n");
    for (code, meaning) in EXIT_CODES {
        out.push_str(&format!("| {} | {meaning} |\n", *code as u8));
    }
    out
}

/// The command line as parsed, documented and completed: `--socket` (global, so that
/// `banctl --socket S list` works) is shown only on the commands that talk to the daemon.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // The global argument, hidden, given to each local command before the build: the build
    // propagates a global argument only to subcommands that lack it. (Changing it after the
    // build broke `--help` of those commands.)
    let socket = cmd
        .get_arguments()
        .find(|a| a.get_id() == "socket")
        .cloned()
        .expect("--socket is an argument of banctl");
    for name in LOCAL_COMMANDS {
        let hidden = socket.clone().hide(true);
        cmd = cmd.mut_subcommand(*name, |sub| sub.arg(hidden));
    }
    cmd
}

/// The subcommands that never talk to the daemon.
const LOCAL_COMMANDS: &[&str] = &[
    "daemon",
    "filters",
    "test",
    "import-fail2ban",
    "init",
    "check-config",
    "nats-permissions",
    "version",
    "completions",
    "manpages",
];

/// Text for roff: backslashes escaped, no line starting a request.
fn roff(text: &str) -> String {
    text.replace('\\', "\\e")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A command's `after_help` as NOTES and EXAMPLES sections.
fn render_after_help(cmd: &clap::Command, out: &mut String) {
    let Some(text) = cmd.get_after_help().map(ToString::to_string) else {
        return;
    };
    let (notes, examples) = match text.split_once("Examples:") {
        Some((notes, examples)) => (notes.trim(), examples),
        None => match text.split_once("Example:") {
            Some((notes, example)) => (notes.trim(), example),
            None => (text.trim(), ""),
        },
    };
    if !notes.is_empty() {
        out.push_str(&format!(".SH NOTES\n{}\n", roff(notes)));
    }
    let lines: Vec<&str> = examples
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if !lines.is_empty() {
        out.push_str(".SH EXAMPLES\n.nf\n");
        for l in lines {
            out.push_str(&roff(l));
            out.push('\n');
        }
        out.push_str(".fi\n");
    }
}

/// Writes `banctl.8` and one `banctl-<command>.8` per visible subcommand into `dir`, each with
/// its examples, the exit codes, files and see-also; returns the files written.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let root = command().name("banctl");
    let mut exit_status = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in EXIT_CODES {
        exit_status.push_str(&format!(".TP\n.B {}\n{}\n", *code as u8, roff(meaning)));
    }
    let files = format!(
        ".SH FILES\n.TP\n.I {DEFAULT_CONFIG}\nthe configuration (see \\fBbanctl.toml\\fR(5)); drop-ins in \\fIconf.d/*.toml\\fR beside it\n\
         .TP\n.I {DEFAULT_SOCKET}\nthe daemon's control socket\n.TP\n.I /var/lib/banctl/banctl.db\nthe state store: bans, history, log positions\n\
         .SH \"SEE ALSO\"\n\\fBbanctl\\fR(8), \\fBbanctl.toml\\fR(5), \\fBnft\\fR(8), \\fBsystemd.exec\\fR(5)\n"
    );
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.8"));
        let man = clap_mangen::Man::new(cmd.clone().name(&name)).section("8");
        let mut out = Vec::new();
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if cmd.has_subcommands() {
            man.render_subcommands_section(&mut out)?;
        }
        let mut extra = String::new();
        render_after_help(&cmd, &mut extra);
        extra.push_str(&exit_status);
        extra.push_str(&files);
        out.extend_from_slice(extra.as_bytes());
        if cmd.get_version().is_some() {
            man.render_version_section(&mut out)?;
        }
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    for sub in root.get_subcommands().filter(|c| !c.is_hide_set()) {
        page(sub.clone(), format!("banctl-{}", sub.get_name()))?;
    }
    page(root, "banctl".to_owned())?;
    Ok(written)
}

/// How `banctl test` reads and reports.
#[derive(Debug, Args)]
pub struct TestOptions {
    /// Print every line that matched (fail2ban-regex's --print-all-matched).
    #[arg(long, visible_alias = "print-all-matched")]
    pub print_matched: bool,
    /// Print every line that no failregex matched (fail2ban-regex's --print-all-missed).
    #[arg(long, visible_alias = "print-all-missed")]
    pub print_missed: bool,
    /// Print every line an ignoreregex discarded or a failregex matched as no failure
    /// (`<F-NOFAIL>`) (fail2ban-regex's --print-all-ignored).
    #[arg(long, visible_alias = "print-all-ignored")]
    pub print_ignored: bool,
    /// Print every line with its verdict and what decided it (the failregex or ignoreregex
    /// number, the address).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Print one JSON object per matching line instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Time zone of dates without one (IANA name, UTC, or an offset like +01:00); the
    /// system's by default.
    #[arg(long)]
    pub tz: Option<String>,
    /// "Now", in Unix seconds, for dates without a year (default: the current time).
    #[arg(long)]
    pub now: Option<i64>,
    /// Where the date is and how it reads, as fail2ban's `datepattern`
    /// (`^%Y-%m-%d %H:%M:%S`, `{^LN-BEG}EPOCH` …); overrides the filter's.
    #[arg(long, short = 'd')]
    pub datepattern: Option<String>,
    /// A failure that names a host, not an address: `yes` resolves it (a name with no
    /// address is missed), `no` misses it, `warn` counts it apart unresolved; as
    /// fail2ban-regex's --usedns. The daemon resolves names only in jails with usedns = "yes".
    #[arg(long, value_enum, default_value = "yes")]
    pub usedns: UseDnsArg,
    /// With LOG systemd-journal: the entries to read, as journalctl's matches
    /// (`_SYSTEMD_UNIT=ssh.service + _COMM=sshd`); default: the filter's journalmatch.
    #[arg(long, short = 'm')]
    pub journalmatch: Option<String>,
}

/// `banctl test --usedns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UseDnsArg {
    Yes,
    No,
    Warn,
}

#[cfg(test)]
mod tests {
    use super::Exit;

    /// Every documented code has its cases, each written out.
    #[test]
    fn errors_map_to_their_documented_exit_codes() {
        use crate::control::{ControlError, ErrorKind};
        use crate::engine::EngineError;
        let connect = |kind| {
            anyhow::Error::new(ControlError::Connect {
                path: "/x".into(),
                source: std::io::Error::from(kind),
            })
        };
        assert_eq!(
            Exit::of(&connect(std::io::ErrorKind::NotFound)),
            Exit::Unavailable
        );
        assert_eq!(
            Exit::of(&connect(std::io::ErrorKind::ConnectionRefused)),
            Exit::Unavailable
        );
        assert_eq!(
            Exit::of(&connect(std::io::ErrorKind::PermissionDenied)),
            Exit::Refused
        );
        let fw = crate::firewall::FirewallError::NoTable;
        assert_eq!(Exit::of(&anyhow::Error::new(fw)), Exit::Firewall);
        // A kernel refusal at start, wrapped in the daemon's error, is still 7.
        let wrapped = crate::daemon::DaemonError::Engine(EngineError::Enforcer("EPERM".into()));
        assert_eq!(Exit::of(&anyhow::Error::new(wrapped)), Exit::Firewall);
        let config = crate::config::Config::parse(
            std::path::Path::new("x.toml"),
            "[jails.a]\nmaxretry = 0\n",
        )
        .unwrap_err();
        assert_eq!(
            Exit::of(&anyhow::Error::new(config).context("loading")),
            Exit::Config
        );
        assert_eq!(Exit::of(&anyhow::anyhow!("anything else")), Exit::Failure);
        for (kind, code) in [
            (ErrorKind::BadRequest, 1),
            (ErrorKind::Version, 1),
            (ErrorKind::Config, 3),
            (ErrorKind::Unavailable, 4),
            (ErrorKind::UnknownJail, 5),
            (ErrorKind::NotBanned, 5),
            (ErrorKind::Ignored, 6),
            (ErrorKind::TooBroad, 6),
            (ErrorKind::PermissionDenied, 6),
            (ErrorKind::Firewall, 7),
        ] {
            assert_eq!(Exit::from(&kind) as i32, code, "{kind:?}");
        }
        assert_eq!(
            Exit::from(&EngineError::UnknownJail("x".into())),
            Exit::NotFound
        );
    }

    use super::*;

    #[test]
    fn an_error_says_its_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let read = crate::config::ConfigError::Read {
            path: "/etc/banctl/banctl.toml".into(),
            source: io,
        };
        let error = anyhow::Error::new(read).context("loading the configuration");
        assert_eq!(
            error_text(&error),
            "loading the configuration: cannot read /etc/banctl/banctl.toml: entity not found"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }

    /// The README's exit code table is [`EXIT_CODES`], and `Exit` has no code left out.
    #[test]
    fn the_readme_lists_every_exit_code() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&exit_code_table()),
            "README's exit code table differs from:\n{}",
            exit_code_table()
        );
        let codes: Vec<u8> = EXIT_CODES.iter().map(|(c, _)| *c as u8).collect();
        assert_eq!(codes, (0..=7).collect::<Vec<u8>>());
    }

    /// Every option says what it does, and `--socket` shows only where the daemon is asked.
    #[test]
    fn every_option_has_help_and_socket_shows_where_it_matters() {
        let mut root = command();
        // Global arguments reach the subcommands with the build.
        root.build();
        let mut silent = Vec::new();
        for sub in root
            .get_subcommands()
            .filter(|s| s.get_name() != "help" && !s.is_hide_set())
        {
            for arg in sub.get_arguments().chain(sub.get_positionals()) {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    silent.push(format!("banctl {} {id}", sub.get_name()));
                }
            }
            let socket_shown = sub
                .get_arguments()
                .any(|a| a.get_id() == "socket" && !a.is_hide_set());
            assert_eq!(
                socket_shown,
                !LOCAL_COMMANDS.contains(&sub.get_name()),
                "banctl {}: --socket",
                sub.get_name()
            );
        }
        silent.dedup();
        assert!(silent.is_empty(), "no help text: {silent:#?}");
    }

    /// `banctl SUB --help` prints the help of every subcommand (it once failed with "a value
    /// is required for '--socket'" for the local ones), and `--socket` is still taken there.
    #[test]
    fn every_subcommand_prints_its_help() {
        let names: Vec<String> = command()
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in &names {
            let err = command()
                .try_get_matches_from(["banctl", name, "--help"])
                .expect_err("--help ends the parse");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp,
                "banctl {name} --help: {err}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("banctl {name}")), "{text}");
            let local = LOCAL_COMMANDS.contains(&name.as_str()) || name == "help";
            assert_eq!(text.contains("--socket"), !local, "banctl {name} --help");
        }
        let cli = command()
            .try_get_matches_from(["banctl", "test", "line", "sshd", "--socket", "/s"])
            .expect("--socket is accepted everywhere");
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&cli).unwrap();
        assert_eq!(cli.socket(), PathBuf::from("/s"));
    }

    fn ban(jail: &str, addr: &str, left: Option<u64>) -> BanInfo {
        BanInfo {
            jail: jail.into(),
            address: addr.parse().unwrap(),
            expires_in_s: left,
            bantime_s: left,
            ban_count: left.map(|_| 2),
            origin: left.map(|_| {
                if jail == "sshd" {
                    "failures"
                } else {
                    "remote:web2"
                }
                .to_owned()
            }),
        }
    }

    #[test]
    fn list_output_is_stable() {
        let out = render_bans(&[
            ban("sshd", "203.0.113.5", Some(3599)),
            ban("jellyfin", "2001:db8:1::/64", None),
            ban("sshd", "198.51.100.7", Some(0)),
        ]);
        assert_eq!(
            out,
            "JAIL      ADDRESS          EXPIRES IN  BAN #  ORIGIN\n\
             sshd      203.0.113.5      59m59s      2      failures\n\
             jellyfin  2001:db8:1::/64  permanent   -      -\n\
             sshd      198.51.100.7     <1s         2      failures\n"
        );
        assert_eq!(render_bans(&[]), "no active bans\n");
        // Long values widen their column; the rows stay aligned.
        let long = render_bans(&[
            ban("sshd", "203.0.113.5", Some(604_798)),
            BanInfo {
                ban_count: Some(123_456),
                ..ban("web", "198.51.100.7", Some(60))
            },
        ]);
        assert_eq!(
            long,
            "JAIL  ADDRESS       EXPIRES IN   BAN #   ORIGIN\n\
             sshd  203.0.113.5   6d23h59m58s  2       failures\n\
             web   198.51.100.7  1m           123456  remote:web2\n"
        );
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
