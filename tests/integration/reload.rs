//! Reload (`banctl reload` and SIGHUP): the difference applied in one batch, bans and failure
//! counters of kept jails preserved, an invalid file refused with the old config enforcing.

use std::time::Duration;

use crate::daemon::Daemon;
use crate::netns;

fn jail(name: &str, port: u16) -> String {
    format!(
        "[jails.{name}]\nfailregex = ['^fail <HOST>$']\nlogpath = \"{{dir}}/{name}.log\"\nports = [{port}]\n"
    )
}

fn config(jails: &[String]) -> String {
    format!(
        "[defaults]\nmaxretry = 3\nignoreself = false\n\n{}",
        jails.join("\n")
    )
}

#[test]
fn reload_adds_removes_and_changes_jails_keeping_bans_and_counters() {
    let Some(()) = netns::enter("reload_adds_removes_and_changes_jails_keeping_bans_and_counters")
    else {
        return;
    };
    let (pa, pb, pb2) = (
        netns::listen("127.0.0.1:0"),
        netns::listen("127.0.0.1:0"),
        netns::listen("127.0.0.1:0"),
    );
    let before = config(&[
        jail("kept", pa.port()),
        jail("changed", pb.port()),
        jail("dropped", 1),
    ]);
    let daemon = Daemon::start("reload", &before);
    let dir = daemon.scratch.0.display().to_string();
    for j in ["kept", "changed", "dropped", "added"] {
        std::fs::write(daemon.scratch.path(&format!("{j}.log")), "").unwrap();
    }
    for j in ["kept", "changed", "dropped"] {
        daemon.ok(&["ban", j, "127.0.0.2"]);
    }
    // Two failures of 127.0.0.4 in the kept jail: the third, after the reload, must ban.
    daemon.append(
        "kept.log",
        &["fail 127.0.0.4".into(), "fail 127.0.0.4".into()],
    );
    assert!(netns::eventually(Duration::from_secs(5), || {
        let s: serde_json::Value =
            serde_json::from_str(&daemon.ok(&["status", "kept", "--json"])).unwrap();
        s[0]["tracked"] == 1
    }));

    let after = config(&[
        jail("kept", pa.port()),
        jail("changed", pb2.port()),
        jail("added", 2),
    ]);
    let path = daemon.scratch.path("banctl.toml");
    let header = std::fs::read_to_string(&path).unwrap();
    let header = &header[..header.find("[defaults]").unwrap()];
    std::fs::write(&path, format!("{header}{}", after.replace("{dir}", &dir))).unwrap();
    assert_eq!(
        daemon.ok(&["reload"]),
        "reloaded: 3 jail(s); added: added; removed: dropped\n\
         1 ban(s) of removed jails lifted from the kernel; kept in the state store: enabling \
         the jail again puts back the unexpired ones\n"
    );

    // Kept jail: ban and counter survive.
    assert_eq!(daemon.banned("kept"), ["127.0.0.2"]);
    assert!(!netns::connects("127.0.0.2", pa));
    daemon.append("kept.log", &["fail 127.0.0.4".into()]);
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("kept").len() == 2),
        "counter was lost"
    );
    // Changed jail: its ban stays and its rule now guards the new port only.
    assert_eq!(daemon.banned("changed"), ["127.0.0.2"]);
    assert!(netns::connects("127.0.0.2", pb), "old port still guarded");
    assert!(!netns::connects("127.0.0.2", pb2), "new port not guarded");
    // Removed jail: sets gone. Added jail: present.
    let table = netns::nft(&["list", "table", "inet", "banctl"]);
    assert!(!table.contains("dropped_v4"), "{table}");
    assert!(table.contains("set added_v4"), "{table}");
    assert!(daemon.cli(&["status", "added"]).status.success());
}

#[test]
fn invalid_reload_is_refused_and_the_old_config_keeps_enforcing() {
    let Some(()) = netns::enter("invalid_reload_is_refused_and_the_old_config_keeps_enforcing")
    else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let daemon = Daemon::start("badreload", &config(&[jail("web", target.port())]));
    daemon.ok(&["ban", "web", "127.0.0.2"]);
    let path = daemon.scratch.path("banctl.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace(
            "maxretry = 3",
            "maxretry = 3\nbantime = \"soon\"\ncolour = 1",
        ),
    )
    .unwrap();

    let out = daemon.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(banctl::cli::exit::CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:7: defaults.bantime: \"soon\" is not a duration"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:8: defaults.colour: unknown key")),
        "{stderr}"
    );
    assert!(
        !netns::connects("127.0.0.2", target),
        "the old config stopped enforcing"
    );
    assert_eq!(daemon.banned("web"), ["127.0.0.2"]);

    // SIGHUP with a fixed file applies it.
    std::fs::write(
        &path,
        format!(
            "{good}\n{}",
            jail("second", 3).replace("{dir}", &daemon.scratch.0.display().to_string())
        ),
    )
    .unwrap();
    std::fs::write(daemon.scratch.path("second.log"), "").unwrap();
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .cli(&["status", "second"])
        .status
        .success()));
    assert!(!netns::connects("127.0.0.2", target));
}

/// `enabled = false` and a reload lift a jail's bans from the kernel, says how many, and keeps
/// them in the store: enabling it again puts back the unexpired ones, with the time they have
/// left; so does a restart in between.
#[test]
fn a_disabled_jail_gets_its_bans_back_when_enabled_again() {
    let Some(()) = netns::enter("a_disabled_jail_gets_its_bans_back") else {
        return;
    };
    let (pa, pb) = (netns::listen("127.0.0.1:0"), netns::listen("127.0.0.1:0"));
    let on = config(&[jail("web", pa.port()), jail("mail", pb.port())]);
    let mut daemon = Daemon::start("disable-jail", &on);
    let dir = daemon.scratch.0.display().to_string();
    for j in ["web", "mail"] {
        std::fs::write(daemon.scratch.path(&format!("{j}.log")), "").unwrap();
    }
    daemon.ok(&["ban", "mail", "127.0.0.2", "--time", "1h"]);
    daemon.ok(&["ban", "mail", "127.0.0.3", "--time", "1h"]);
    assert!(!netns::connects("127.0.0.2", pb));
    let path = daemon.scratch.path("banctl.toml");
    let header = std::fs::read_to_string(&path).unwrap();
    let header = header[..header.find("[defaults]").unwrap()].to_owned();
    let write = |body: &str| {
        std::fs::write(&path, format!("{header}{}", body.replace("{dir}", &dir))).unwrap();
    };
    write(&on.replace("[jails.mail]", "[jails.mail]\nenabled = false"));
    let said = daemon.ok(&["reload"]);
    assert!(
        said.contains("removed: mail") && said.contains("2 ban(s) of removed jails lifted"),
        "{said}"
    );
    assert!(
        netns::connects("127.0.0.2", pb),
        "the disabled jail still drops"
    );
    // A restart while it is disabled forgets nothing.
    daemon.restart();
    std::thread::sleep(Duration::from_millis(1100));
    write(&on);
    let said = daemon.ok(&["reload"]);
    assert!(
        said.contains("added: mail") && said.contains("2 ban(s) put back"),
        "{said}"
    );
    assert!(!netns::connects("127.0.0.2", pb));
    assert!(!netns::connects("127.0.0.3", pb));
    let list: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["list", "--jail", "mail", "--json"])).unwrap();
    for ban in list.as_array().unwrap() {
        let left = ban["expires_in_s"].as_u64().unwrap();
        assert!(left < 3600 && left > 3500, "{list}");
        assert_eq!(ban["origin"], "manual", "{list}");
    }
}
