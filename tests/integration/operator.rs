//! The admin's run-time controls (issue 20 item 8): `banctl status JAIL` with its bans,
//! totals and settings, `banctl config`, `banctl log-level`, and `conf.d/*.toml` drop-ins.

use std::time::Duration;

use crate::daemon::{Daemon, check_config, failures, web_jail};
use crate::netns;

#[test]
fn status_config_log_level_and_drop_ins_work_at_run_time() {
    let Some(()) = netns::enter("status_config_log_level_and_drop_ins_work_at_run_time") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut daemon = Daemon::start(
        "operator",
        &web_jail(
            target.port(),
            "ignoreip = [\"127.0.0.9\", \"10.0.0.0/8\"]\nescalation = { factor = 3, max = \"1w\" }\n",
        ),
    );
    let main = daemon.scratch.path("banctl.toml");

    // A drop-in beside the file: read at reload, merged over the main file.
    std::fs::create_dir_all(daemon.scratch.path("conf.d")).unwrap();
    let drop_in = daemon
        .scratch
        .write("conf.d/10-web.toml", "[jails.web]\nmaxretry = 2\n");
    let checked = check_config(&main);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{said}");
    assert!(
        said.contains(&format!("(with {})", drop_in.display())),
        "{said}"
    );
    daemon.ok(&["reload"]);
    let config = daemon.ok(&["config"]);
    assert!(
        config.starts_with(&format!(
            "# the configuration the daemon runs, from {}, {}\n",
            main.display(),
            drop_in.display()
        )),
        "{config}"
    );
    let web = config.split("[jails.web]").nth(1).expect("[jails.web]");
    assert!(web.contains("\nmaxretry = 2\n"), "{config}");
    assert!(web.contains("\nfindtime = \"10m\"\n"), "{config}");
    assert!(web.contains("\nbantime = \"1h\"\n"), "{config}");
    assert!(
        web.contains("\nignoreip = [\"127.0.0.9\", \"10.0.0.0/8\"]\n"),
        "{config}"
    );

    // Two failures ban now (the drop-in's maxretry).
    daemon.append("web.log", &failures("127.0.0.2", 2));
    daemon.wait_banned("web", "127.0.0.2");
    let status = daemon.ok(&["status", "web"]);
    for expected in [
        "  since start:  2 failures, 1 bans\n",
        "  ignores:      127.0.0.9",
        "  escalation:   bantime × 3^n for the n-th earlier ban, at most 1w, counting this jail's bans\n",
        "  banned:\n",
    ] {
        assert!(status.contains(expected), "{expected:?} in\n{status}");
    }
    let banned_line = status
        .lines()
        .find(|l| l.contains("127.0.0.2"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(banned_line.starts_with("    web  "), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "web", "--json"])).unwrap();
    assert_eq!(json[0]["bans"][0]["address"], "127.0.0.2");
    assert_eq!(json[0]["failures_total"], 2);
    assert_eq!(json[0]["bans_total"], 1);
    // The whole status lists no bans per jail.
    let all: serde_json::Value = serde_json::from_str(&daemon.ok(&["status", "--json"])).unwrap();
    assert!(all[0].get("bans").is_none(), "{all}");

    // The log level, at run time: an ignored address is logged at debug only.
    let log = daemon.restart_logging(&[("BANCTL_LOG", "info")]);
    let ignored_said = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("ignored address")
    };
    daemon.append("web.log", &failures("127.0.0.9", 1));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!ignored_said(), "debug line at info level");
    assert_eq!(daemon.ok(&["log-level", "debug"]), "log level: debug\n");
    daemon.append("web.log", &failures("127.0.0.9", 1));
    assert!(
        netns::eventually(Duration::from_secs(5), ignored_said),
        "no debug line after log-level debug"
    );
    let bad = daemon.cli(&["log-level", "loud"]);
    assert_eq!(bad.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("\"loud\" is not a level"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // With the daemon down, `config` reads the files and says so.
    daemon.stop();
    let down = daemon.cli(&["--config", &main.display().to_string(), "config"]);
    assert!(down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("the daemon is not running"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(String::from_utf8_lossy(&down.stdout).contains("maxretry = 2"));
}
