//! `banctl`: the daemon and its command line, in one binary.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::FromArgMatches;

use banctl::cli::{Cli, Command, Exit, TestOptions, exit, render_bans, render_status};
use banctl::config::Config;
use banctl::control::{self, ControlError, Request, Response};
use banctl::daemon;
use banctl::firewall::Firewall;

/// An error that maps to a documented exit code.
struct Failure {
    code: i32,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        let error = error.into();
        Failure {
            code: Exit::of(&error) as i32,
            error,
        }
    }
}

/// Writes to standard output; a reader that went away (`banctl list | head -1`) ends the
/// program quietly, as it would with nothing left to say.
fn out(text: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exit::OK);
        }
        eprintln!("banctl: writing the output: {e}");
        std::process::exit(exit::FAILURE);
    }
}

macro_rules! outln {
    ($($arg:tt)*) => { out(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! outp {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

fn main() -> ExitCode {
    // The same command line the man pages and completions describe (`--socket` shown only
    // where it matters).
    let matches = banctl::cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    banctl::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK as u8),
        // The reader of our output left: nothing went wrong that anyone can see.
        Err(Failure { error, .. }) if broken_pipe(&error) => ExitCode::from(exit::OK as u8),
        Err(Failure { code, error }) => {
            eprintln!("banctl: {}", banctl::cli::error_text(&error));
            ExitCode::from(code as u8)
        }
    }
}

/// "for 1h", or "permanently".
fn for_how_long(time: banctl::duration::BanTime) -> String {
    match time {
        banctl::duration::BanTime::Permanent => "permanently".to_owned(),
        finite => format!("for {finite}"),
    }
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket();
    let config_path = cli.config;
    match cli.command {
        Command::Daemon => run_daemon(&config_path),
        Command::ImportFail2ban {
            dir,
            output,
            inline,
        } => {
            let imported = banctl::fail2ban::import(&dir, inline).map_err(|e| Failure {
                code: exit::CONFIG,
                error: e.into(),
            })?;
            match &output {
                Some(path) => std::fs::write(path, &imported.toml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => outp!("{}", imported.toml),
            }
            eprintln!(
                "imported {} enabled jail(s): {}",
                imported.jails.len(),
                imported.jails.join(", ")
            );
            for s in &imported.skipped {
                eprintln!("not carried over: {s}");
            }
            Ok(())
        }
        Command::CheckConfig { path } => {
            let path = path.unwrap_or(config_path);
            let config = Config::load(&path)?;
            for warning in config.warnings() {
                eprintln!("warning: {}: {warning}", path.display());
            }
            let drop_ins: Vec<String> = config
                .drop_ins
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let with = if drop_ins.is_empty() {
                String::new()
            } else {
                format!(" (with {})", drop_ins.join(", "))
            };
            outln!(
                "{}: OK, {} enabled jail(s){with}",
                path.display(),
                config.jails.len()
            );
            Ok(())
        }
        Command::Test {
            input,
            filter,
            options,
        } => test_filter(&input, &filter, &options),
        Command::NatsPermissions { host, bucket } => {
            outln!(
                "{}",
                banctl::fleet::wire::server_permissions(&host, &bucket)
            );
            Ok(())
        }
        Command::Version => {
            outln!("banctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = banctl::cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "banctl", &mut script);
            outp!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Manpages { dir } => {
            for page in banctl::cli::write_man_pages(&dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?
            {
                outln!("{}", page.display());
            }
            Ok(())
        }
        Command::Init { dry_run, root } => {
            let survey =
                banctl::init::Survey::of(&root, std::env::var("SSH_CONNECTION").ok().as_deref());
            let text = banctl::init::render(&survey);
            // What init writes must be a valid configuration: checked before anyone sees it.
            let config = Config::parse(&config_path, &text)
                .context("banctl init wrote an invalid configuration (a bug: please report it)")?;
            if dry_run {
                outp!("{text}");
                return Ok(());
            }
            if let Some(dir) = config_path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            // The example the package installs, untouched, is not the admin's: it makes way
            // (kept beside, as .example). Anything else is never overwritten.
            let example_kept = replace_shipped_example(&config_path)?;
            let mut file = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&config_path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(anyhow::anyhow!(
                        "{} exists: banctl init never overwrites a configuration (`banctl init --dry-run` prints what it would write)",
                        config_path.display()
                    )
                    .into());
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("creating {}", config_path.display()))
                        .into());
                }
            };
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("writing {}", config_path.display()))?;
            if let Some(kept) = example_kept {
                outln!(
                    "the shipped example (unchanged) was at {}: kept as {}",
                    config_path.display(),
                    kept.display()
                );
            }
            let names: Vec<&str> = config.jails.iter().map(|j| j.name.as_str()).collect();
            outln!(
                "wrote {}: {} jail(s) ({}); check it with `banctl check-config`, then `systemctl enable --now banctl`",
                config_path.display(),
                names.len(),
                names.join(", ")
            );
            Ok(())
        }
        Command::Config => {
            match control::call(&socket, Request::Config) {
                Ok(response) => match answer(response)? {
                    Response::Config { files, toml } => {
                        outln!(
                            "# the configuration the daemon runs, from {}",
                            files.join(", ")
                        );
                        outp!("{toml}");
                    }
                    other => return Err(unexpected(other)),
                },
                Err(ControlError::Connect { source, .. }) if daemon_down(&source) => {
                    eprintln!(
                        "banctl: the daemon is not running; the configuration as {} reads",
                        config_path.display()
                    );
                    let config = Config::load(&config_path)?;
                    outln!("# the configuration in {}", config.files().join(", "));
                    outp!("{}", banctl::config::effective::render(&config));
                }
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        Command::LogLevel { level } => {
            match answer(control::call(&socket, Request::LogLevel { level })?)? {
                Response::LogLevel { level } => outln!("log level: {level}"),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::List { jail, json } => {
            let bans = match control::call(&socket, Request::List { jail: jail.clone() }) {
                Ok(response) => match answer(response)? {
                    Response::Bans { bans } => bans,
                    other => return Err(unexpected(other)),
                },
                Err(ControlError::Connect { source, .. }) if daemon_down(&source) => {
                    eprintln!(
                        "banctl: the daemon is not running; bans read directly from the kernel"
                    );
                    list_from_kernel(jail.as_deref())?
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&bans).context("encoding JSON")?
                );
            } else {
                outp!("{}", render_bans(&bans));
            }
            Ok(())
        }
        Command::Ban { jail, target, time } => {
            match answer(control::call(&socket, Request::Ban { jail, target, time })?)? {
                Response::Banned {
                    jail,
                    target,
                    already: true,
                    ..
                } => outln!(
                    "{target} is already banned in jail {jail}: nothing changed (`banctl list --jail {jail}` shows its time left)"
                ),
                Response::Banned {
                    jail,
                    target,
                    time,
                    covered_by: Some(wider),
                    ..
                } => outln!(
                    "{target} is already covered by the ban of {wider} in jail {jail}: recorded ({}), nothing new to enforce",
                    for_how_long(time)
                ),
                Response::Banned {
                    jail, target, time, ..
                } => outln!("banned {target} in jail {jail} {}", for_how_long(time)),
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::Filters => {
            for b in banctl::filter::BUILTIN {
                let file = b.read(None).map_err(|e| anyhow::anyhow!(e))?;
                let modes = if file.modes.is_empty() {
                    String::new()
                } else {
                    format!(" [mode={}]", file.modes.join("|"))
                };
                let description = file.description.unwrap_or_default();
                outln!("{:<18} {description}{modes}", b.name);
            }
            Ok(())
        }
        Command::Unban {
            target,
            all,
            jail,
            origin,
        } => {
            let request = match (target, all, origin) {
                (_, _, Some(origin)) => Request::UnbanOrigin { origin },
                (Some(target), false, None) => Request::Unban { target, jail },
                _ => Request::UnbanAll { jail },
            };
            match answer(control::call(&socket, request)?)? {
                Response::Unbanned { removed } if removed.is_empty() => outln!("no active bans"),
                Response::Unbanned { removed } => {
                    for b in removed {
                        outln!("unbanned {} from jail {}", b.address, b.jail);
                    }
                }
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::Reload => {
            match answer(control::call(&socket, Request::Reload)?)? {
                Response::Reloaded {
                    jails,
                    added,
                    removed,
                    lifted,
                    restored,
                    warnings,
                } => {
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    let list = |v: &[String]| {
                        if v.is_empty() {
                            "-".to_owned()
                        } else {
                            v.join(", ")
                        }
                    };
                    outln!(
                        "reloaded: {} jail(s); added: {}; removed: {}",
                        jails.len(),
                        list(&added),
                        list(&removed)
                    );
                    if lifted > 0 {
                        outln!(
                            "{lifted} ban(s) of removed jails lifted from the kernel; kept in the state store: enabling the jail again puts back the unexpired ones"
                        );
                    }
                    if restored > 0 {
                        outln!("{restored} ban(s) put back with their remaining time");
                    }
                }
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
        Command::Status { jail, json } => {
            match answer(control::call(&socket, Request::Status { jail })?)? {
                // Without a fleet the JSON stays the array of jails it always was.
                Response::Status { jails, fleet } if json => {
                    let text = match fleet {
                        None => serde_json::to_string_pretty(&jails),
                        Some(fleet) => serde_json::to_string_pretty(
                            &serde_json::json!({ "jails": jails, "fleet": fleet }),
                        ),
                    };
                    outln!("{}", text.context("encoding JSON")?)
                }
                Response::Status { jails, fleet } => {
                    outp!("{}", render_status(&jails));
                    if let Some(fleet) = fleet {
                        outp!("{}", banctl::cli::render_fleet(&fleet));
                    }
                }
                other => return Err(unexpected(other)),
            }
            Ok(())
        }
    }
}

/// Turns an error response into a failure with the matching exit code.
fn answer(response: Response) -> Result<Response, Failure> {
    match response {
        Response::Error { kind, message } => {
            let code = Exit::from(&kind) as i32;
            Err(Failure {
                code,
                error: anyhow::anyhow!(message),
            })
        }
        ok => Ok(ok),
    }
}

/// The example configuration `cargo xtask install` and the package put in place.
const SHIPPED_EXAMPLE: &str = include_str!("../etc/banctl.toml");

/// Moves `path` to `path.example` when it holds the shipped example unchanged; returns where.
fn replace_shipped_example(path: &std::path::Path) -> Result<Option<std::path::PathBuf>, Failure> {
    match std::fs::read(path) {
        Ok(text) if text == SHIPPED_EXAMPLE.as_bytes() => {
            let mut kept = path.as_os_str().to_owned();
            kept.push(".example");
            let kept = std::path::PathBuf::from(kept);
            std::fs::rename(path, &kept)
                .with_context(|| format!("moving the shipped example to {}", kept.display()))?;
            Ok(Some(kept))
        }
        _ => Ok(None),
    }
}

/// Whether a failed connection means no daemon is listening (as opposed to a refusal).
fn daemon_down(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

fn unexpected(response: Response) -> Failure {
    Failure {
        code: exit::FAILURE,
        error: anyhow::anyhow!("unexpected answer from the daemon: {response:?}"),
    }
}

fn list_from_kernel(jail: Option<&str>) -> Result<Vec<banctl::control::BanInfo>, Failure> {
    let mut firewall = Firewall::open()?;
    let jails = match jail {
        Some(j) => vec![j.to_owned()],
        None => firewall.jails_in_kernel()?,
    };
    let mut bans = Vec::new();
    for j in jails {
        bans.extend(
            firewall
                .list(&j)?
                .iter()
                .map(|e| daemon::element_info(&j, e)),
        );
    }
    Ok(bans)
}

/// The filter a spec names (see `banctl::filter_spec`), with a label saying which.
fn load_filter(spec: &str) -> Result<banctl::filter_spec::Resolved, Failure> {
    banctl::filter_spec::resolve(spec).map_err(|e| Failure {
        code: exit::CONFIG,
        error: anyhow::anyhow!(e),
    })
}

/// How `banctl test` names the dates it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateKind {
    Found(banctl::filter::date::Format),
    Journal,
    None,
}

impl DateKind {
    /// The format of a date found at the line's start, if one was.
    fn of(found: Option<&banctl::filter::date::Found>) -> DateKind {
        found.map_or(DateKind::None, |d| DateKind::Found(d.format))
    }
}

impl std::fmt::Display for DateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DateKind::Found(format) => format.fmt(f),
            DateKind::Journal => f.write_str("journal entry time"),
            DateKind::None => f.write_str("(no date)"),
        }
    }
}

/// How much of a log `banctl test` reads at a time.
const BLOCK: usize = 1 << 20;

/// `systemd-journal` (or `systemd-journal[journalpath=DIR]`) as LOG, as fail2ban-regex takes
/// it: the entries `--journalmatch` selects, else the filter's `journalmatch`, else all.
fn journal_input(
    input: &str,
    options: &TestOptions,
    filter_match: Option<&str>,
) -> Result<Option<banctl::source::journal::JournalSpec>, Failure> {
    let Some(rest) = input.strip_prefix("systemd-journal") else {
        return Ok(None);
    };
    let (_, settings) = banctl::fail2ban::split_options(input);
    if !rest.is_empty() && !rest.starts_with('[') {
        return Ok(None);
    }
    let mut directory = None;
    for (key, value) in settings {
        match key.as_str() {
            "journalpath" => directory = Some(std::path::PathBuf::from(value)),
            other => {
                return Err(Failure {
                    code: exit::USAGE,
                    error: anyhow::anyhow!(
                        "systemd-journal[{other}=…]: only journalpath (a journal directory) is known"
                    ),
                });
            }
        }
    }
    let matches = options
        .journalmatch
        .as_deref()
        .or(filter_match)
        .map(|m| m.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(Some(banctl::source::journal::JournalSpec {
        matches,
        directory,
    }))
}

/// `banctl test`: every line of `input` (a file, or one line) through the filter.
fn test_filter(input: &str, filter: &str, options: &TestOptions) -> Result<(), Failure> {
    use banctl::filter::date::Dates;
    use banctl::filter::{DatePattern, Report, Verdict};
    use std::io::{Read, Write};

    let banctl::filter_spec::Resolved {
        filter,
        label,
        journalmatch,
    } = load_filter(filter).map_err(|mut failure| {
        // `banctl test sshd /var/log/auth.log`: the log was read as a filter file.
        let swapped = banctl::filter::Builtin::by_name(input).is_some()
            && std::path::Path::new(filter).is_file();
        if swapped {
            failure.error = anyhow::anyhow!(
                "{}\n  the log comes first, then the filter: banctl test {filter} {input}",
                failure.error
            );
        }
        failure
    })?;
    let datepattern = match &options.datepattern {
        Some(p) => Some(DatePattern::new(p).map_err(|e| Failure {
            code: exit::USAGE,
            error: anyhow::anyhow!("--datepattern: {e}"),
        })?),
        None => filter.datepattern().cloned(),
    };
    let filter = match &datepattern {
        Some(p) => filter.with_datepattern(p.clone()),
        None => filter,
    };
    let dates = match &options.tz {
        Some(name) => Dates::new(Dates::zone(name).ok_or_else(|| Failure {
            code: exit::USAGE,
            error: anyhow::anyhow!("--tz {name:?} is not a time zone"),
        })?),
        None => Dates::default(),
    };
    let dates = match datepattern {
        Some(p) => dates.with_pattern(p),
        None => dates,
    };
    let now = match options.now {
        Some(secs) => {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0).unsigned_abs())
        }
        None => std::time::SystemTime::now(),
    };
    let path = Path::new(input);
    // A path that is not there is a mistake, not a log line: a line has spaces.
    if input != "-"
        && !path.is_file()
        && (input.starts_with('/') || input.starts_with("./"))
        && !input.contains(' ')
    {
        return Err(Failure {
            code: exit::FAILURE,
            error: anyhow::anyhow!(
                "{input}: no such file (a single log line is given in quotes, with its spaces)"
            ),
        });
    }
    let journal = journal_input(input, options, journalmatch.as_deref())?;
    let names = || test_names(options.usedns);
    // A large file with nothing printed per line is read in parts, one per free core.
    let per_line_output = options.json
        || options.print_matched
        || options.print_missed
        || options.print_ignored
        || options.verbose;
    if journal.is_none()
        && input != "-"
        && path.is_file()
        && !per_line_output
        && let Some((mut report, tally)) = test_file_in_parts(path, &filter, &dates, now, &names)?
    {
        return print_test_summary(&label, input, &mut report, &filter, &tally);
    }
    let reader: Box<dyn Read> = if journal.is_some() {
        Box::new(std::io::empty())
    } else if input == "-" {
        Box::new(std::io::stdin())
    } else if path.is_file() {
        let file = std::fs::File::open(path).with_context(|| format!("opening {input}"))?;
        Box::new(file)
    } else {
        Box::new(std::io::Cursor::new(input.as_bytes().to_vec()))
    };
    let mut report = Report::new(&filter).with_names(names());
    let mut tally = DateTally::default();
    let line_dates = dates.reader(now);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Dates are read where they are shown: the JSON output dates failures, the summary
    // counts the formats of the lines a failregex matched (and names the first line's when
    // none did).
    let mut examine = |number: usize,
                       line: &str,
                       stamped: Option<std::time::SystemTime>|
     -> Result<(), Failure> {
        let verdict = report.add(&filter, line);
        let wanted = if options.json {
            matches!(verdict, Verdict::Matched(_) | Verdict::Name { .. })
        } else {
            verdict != Verdict::Missed || number == 1
        };
        let date = if !wanted {
            None
        } else {
            match stamped {
                // A journal entry's own time, as the daemon dates it.
                Some(at) => Some(banctl::filter::date::Found {
                    at,
                    format: banctl::filter::date::Format::Iso8601,
                    span: (0, 0),
                }),
                None => line_dates.find(line),
            }
        };
        if !options.json && wanted {
            let format = match stamped {
                Some(_) => DateKind::Journal,
                None => DateKind::of(date.as_ref()),
            };
            tally.note(number == 1, verdict != Verdict::Missed, format);
        }
        let shown = match verdict {
            Verdict::Matched(hit) if options.json => {
                let mut value = serde_json::json!({
                    "line": number,
                    "match": true,
                    "host": hit.addr.to_string(),
                    "pattern": hit.pattern + 1,
                });
                if let Some(d) = date {
                    let secs =
                        d.at.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |t| t.as_secs_f64());
                    value["time"] = serde_json::json!(secs);
                }
                for (name, field) in filter.fields(line, hit.pattern) {
                    if value.get(&name).is_none() {
                        value[name] = serde_json::json!(field);
                    }
                }
                writeln!(out, "{value}")
            }
            Verdict::Matched(hit) if options.verbose && !options.json => writeln!(
                out,
                "matched {:>6}: {}  [{}] failregex {}",
                number,
                line,
                hit.addr,
                hit.pattern + 1
            ),
            Verdict::Matched(hit) if options.print_matched => {
                writeln!(out, "matched {:>6}: {}  [{}]", number, line, hit.addr)
            }
            Verdict::Ignored { hit, by }
                if (options.print_ignored || options.verbose) && !options.json =>
            {
                writeln!(
                    out,
                    "ignored {:>6}: {}  [{}] ignoreregex {}",
                    number,
                    line,
                    hit.addr,
                    by + 1
                )
            }
            Verdict::NoFailure { pattern }
                if (options.print_ignored || options.verbose) && !options.json =>
            {
                writeln!(
                    out,
                    "ignored {number:>6}: {line}  [no failure] failregex {}",
                    pattern + 1
                )
            }
            Verdict::Name { pattern, name } => {
                let addrs: Vec<String> = report
                    .addresses_of(&name)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let resolved = options.usedns == banctl::cli::UseDnsArg::Yes && !addrs.is_empty();
                if options.json && resolved {
                    let mut value = serde_json::json!({
                        "line": number,
                        "match": true,
                        "host": name,
                        "addresses": addrs,
                        "pattern": pattern + 1,
                    });
                    if let Some(d) = date {
                        let secs =
                            d.at.duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |t| t.as_secs_f64());
                        value["time"] = serde_json::json!(secs);
                    }
                    writeln!(out, "{value}")
                } else if (options.print_matched || options.verbose) && resolved {
                    writeln!(
                        out,
                        "matched {:>6}: {}  [{name}: {}]",
                        number,
                        line,
                        addrs.join(", ")
                    )
                } else if (options.print_missed || options.verbose) && !options.json && !resolved {
                    writeln!(out, "missed  {number:>6}: {line}  [host name {name}]")
                } else {
                    Ok(())
                }
            }
            Verdict::Missed if (options.print_missed || options.verbose) && !options.json => {
                writeln!(out, "missed  {number:>6}: {line}")
            }
            _ => Ok(()),
        };
        shown.context("writing the output")?;
        Ok(())
    };
    // Lines the filter says no pattern can match are counted as missed without a look, unless
    // missed lines are printed. The first line is always looked at: the summary names its
    // date format when no line matched.
    let mut skipped = 0usize;
    match &journal {
        Some(spec) => {
            let mut failed = None;
            let mut number = 0;
            banctl::source::journal::read_all(spec, |text, at| {
                number += 1;
                match examine(number, &text, Some(at)) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .context("reading the journal")?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        None => {
            let every = options.print_missed || options.verbose;
            skipped = candidate_lines(reader, &filter, every, |number, line| {
                examine(number, line, None)
            })?;
        }
    }
    report.add_missed(skipped);
    if options.json {
        return out
            .flush()
            .context("writing the output")
            .map_err(Failure::from);
    }
    if per_line_output {
        writeln!(out).context("writing the output")?;
    }
    out.flush().context("writing the output")?;
    drop(out);
    let source = if journal.is_some() {
        "the systemd journal"
    } else if input == "-" {
        "(standard input)"
    } else if path.is_file() {
        input
    } else {
        "(one line)"
    };
    print_test_summary(&label, source, &mut report, &filter, &tally)
}

/// How `banctl test` treats a failure that names a host (`--usedns`).
fn test_names(usedns: banctl::cli::UseDnsArg) -> banctl::filter::Names {
    match usedns {
        banctl::cli::UseDnsArg::No => banctl::filter::Names::Miss,
        banctl::cli::UseDnsArg::Warn => banctl::filter::Names::Report,
        banctl::cli::UseDnsArg::Yes => banctl::filter::Names::Resolve(Box::new(|name: &str| {
            use std::net::ToSocketAddrs;
            if !banctl::addr::is_host_name(name) {
                return Vec::new();
            }
            let mut addrs: Vec<std::net::IpAddr> = (name, 0u16)
                .to_socket_addrs()
                .map(|found| found.map(|a| a.ip()).collect())
                .unwrap_or_default();
            addrs.sort();
            addrs.dedup();
            addrs
        })),
    }
}

/// The date formats `banctl test` names: of the lines a failregex matched, and of the first
/// line (named when none matched). Counted by format, named once at the end.
#[derive(Debug, Default)]
struct DateTally {
    matched: Vec<(DateKind, usize)>,
    first: Option<DateKind>,
}

impl DateTally {
    fn note(&mut self, first: bool, matched: bool, format: DateKind) {
        if first {
            self.first = Some(format);
        }
        if matched {
            self.add(format, 1);
        }
    }

    fn add(&mut self, format: DateKind, n: usize) {
        match self.matched.iter_mut().find(|(f, _)| *f == format) {
            Some((_, count)) => *count += n,
            None => self.matched.push((format, n)),
        }
    }

    /// Adds the tally of the lines that follow this one's.
    fn merge(&mut self, later: DateTally) {
        self.first = self.first.or(later.first);
        for (format, n) in later.matched {
            self.add(format, n);
        }
    }
}

/// Reads `reader` in blocks of whole lines and calls `examine(number, line)` for every line
/// a failregex may match (every line when `every`; the first line always), numbered from 1.
/// Returns how many lines were skipped unseen: each is one no failregex matches.
fn candidate_lines(
    mut reader: impl std::io::Read,
    filter: &banctl::filter::Filter,
    every: bool,
    mut examine: impl FnMut(usize, &str) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    let (mut number, mut skipped) = (0, 0);
    // `block[..kept]` holds a partial last line from the previous read. The block is zeroed
    // only when it grows (a line longer than the room left), not for every read.
    let mut block = vec![0u8; BLOCK];
    let mut kept = 0;
    let mut done = false;
    while !done {
        // Whole lines only: a partial last line waits for the next read.
        if block.len() - kept < BLOCK {
            block.resize(kept + BLOCK, 0);
        }
        let n = loop {
            match reader.read(&mut block[kept..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                read => break read.context("reading the input")?,
            }
        };
        let filled = kept + n;
        done = n == 0;
        let end = if done {
            if filled > 0 && block[filled - 1] != b'\n' {
                // There is room: the read was given at least BLOCK bytes and returned none.
                block[filled] = b'\n';
                filled + 1
            } else {
                filled
            }
        } else {
            match memchr::memrchr(b'\n', &block[..filled]) {
                Some(nl) => nl + 1,
                None => {
                    kept = filled;
                    continue;
                }
            }
        };
        let whole = &block[..end];
        let mut from = 0;
        while from < end {
            let at = if every || number == 0 {
                Some(from)
            } else {
                filter.next_candidate(whole, from)
            }
            .unwrap_or(end);
            let start = memchr::memrchr(b'\n', &whole[from..at]).map_or(from, |i| from + i + 1);
            let unseen = memchr::memchr_iter(b'\n', &whole[from..start]).count();
            number += unseen;
            skipped += unseen;
            if at == end {
                break;
            }
            let stop = memchr::memchr(b'\n', &whole[at..]).map_or(end, |i| at + i);
            number += 1;
            // Invalid UTF-8 is replaced, never skipped, as the daemon does; valid text is
            // not copied.
            let raw = &whole[start..stop];
            let text = match std::str::from_utf8(raw) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(raw),
            };
            examine(number, text.trim_end_matches(['\n', '\r']))?;
            from = stop + 1;
        }
        if !done {
            block.copy_within(end..filled, 0);
            kept = filled - end;
        }
    }
    Ok(skipped)
}

/// The least a part of a file read on a core of its own holds.
const PART: u64 = 8 << 20;

/// `banctl test` on a file with only the summary to print: the file cut at line ends into
/// one part per free core (each at least [`PART`]), each part examined on its own thread
/// with a report of its own, and the reports added up in file order. `None` when the file
/// is too small or one core is all there is, or when the filter joins lines (it must see
/// them in order): then the caller reads it line after line.
fn test_file_in_parts(
    path: &Path,
    filter: &banctl::filter::Filter,
    dates: &banctl::filter::date::Dates,
    now: std::time::SystemTime,
    names: &(dyn Fn() -> banctl::filter::Names + Sync),
) -> Result<Option<(banctl::filter::Report, DateTally)>, Failure> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::FileExt;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let parts = cores.min(size / PART);
    if parts < 2 || filter.remembers() {
        return Ok(None);
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Each part starts right after a line end.
    let mut starts = vec![0u64];
    let mut probe = vec![0u8; 64 * 1024];
    for k in 1..parts {
        let mut at = (size * k / parts).max(*starts.last().unwrap_or(&0));
        let start = loop {
            let n = file.read_at(&mut probe, at).context("reading the input")?;
            if n == 0 {
                break size;
            }
            if let Some(i) = memchr::memchr(b'\n', &probe[..n]) {
                break at + i as u64 + 1;
            }
            at += n as u64;
        };
        if start < size && start > *starts.last().unwrap_or(&0) {
            starts.push(start);
        }
    }
    tracing::debug!(
        parts = starts.len(),
        "reading the file in parts, one per core"
    );
    let results: Vec<Result<(banctl::filter::Report, DateTally), Failure>> =
        std::thread::scope(|scope| {
            let workers: Vec<_> = starts
                .iter()
                .enumerate()
                .map(|(k, &start)| {
                    // The last part reads to the end, as a file read whole does.
                    let len = starts.get(k + 1).map_or(u64::MAX, |next| next - start);
                    scope.spawn(move || {
                        let mut file = std::fs::File::open(path)
                            .with_context(|| format!("opening {}", path.display()))?;
                        file.seek(std::io::SeekFrom::Start(start))
                            .context("reading the input")?;
                        let mut report = banctl::filter::Report::new(filter).with_names(names());
                        let mut tally = DateTally::default();
                        let dates = dates.reader(now);
                        let skipped = candidate_lines(file.take(len), filter, false, |n, line| {
                            let verdict = report.add(filter, line);
                            let matched = verdict != banctl::filter::Verdict::Missed;
                            let first = k == 0 && n == 1;
                            if matched || first {
                                let format = DateKind::of(dates.find(line).as_ref());
                                tally.note(first, matched, format);
                            }
                            Ok(())
                        })?;
                        report.add_missed(skipped);
                        Ok((report, tally))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a part's reader never panics"))
                .collect()
        });
    let mut whole: Option<(banctl::filter::Report, DateTally)> = None;
    for part in results {
        let (report, tally) = part?;
        match &mut whole {
            None => whole = Some((report, tally)),
            Some((all, all_tally)) => {
                all.merge(report);
                all_tally.merge(tally);
            }
        }
    }
    Ok(whole)
}

/// `banctl test`'s summary: the report, then the dates.
fn print_test_summary(
    label: &str,
    source: &str,
    report: &mut banctl::filter::Report,
    filter: &banctl::filter::Filter,
    tally: &DateTally,
) -> Result<(), Failure> {
    use std::fmt::Write as _;
    let mut text = format!(
        "Filter: {label}\nInput:  {source}\n\n{}",
        report.render(filter)
    );
    if tally.matched.is_empty() {
        let first = tally
            .first
            .map_or("(no line)".to_owned(), |d| d.to_string());
        let _ = writeln!(text, "\nDates: no line matched; the first line's: {first}");
    } else {
        text.push_str("\nDates of the lines a failregex matched:\n");
    }
    let named: std::collections::BTreeMap<String, usize> = tally
        .matched
        .iter()
        .map(|(f, n)| (f.to_string(), *n))
        .collect();
    for (format, n) in &named {
        let _ = writeln!(text, "  [{n}] {format}");
    }
    outp!("{text}");
    Ok(())
}

fn run_daemon(config_path: &Path) -> Result<(), Failure> {
    let config = Config::load(config_path)?;
    let runtime = banctl::thread_runtime().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot handle SIGTERM");
                        return std::future::pending().await;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            }
        };
        daemon::run(config_path.to_owned(), config, shutdown).await
    })?;
    Ok(())
}
