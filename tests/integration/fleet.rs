//! A fleet over NATS JetStream: three members and an enforcer, each in its own network
//! namespace with its own state, one NATS server on an address of the hub namespace the test
//! made. Bans are proved with traffic from the hub to each host.

use std::net::SocketAddr;
use std::time::Duration;

use crate::daemon::{Daemon, Scratch, failures, web_jail};
use crate::nats::{self, Nats};
use crate::netns::{self, Peer};

const PORT: u16 = 2222;

/// One host of the fleet: its namespace (linked to the hub as 10.9.N.2) and its daemon.
struct Host {
    peer: Peer,
    daemon: Daemon,
    addr: String,
}

impl Host {
    fn start(test: &str, name: &str, n: u8, config: &str, scratch: &Scratch) -> Host {
        let peer = Peer::new();
        let addr = format!("10.9.{n}.2");
        peer.link(
            &format!("fl-{name}"),
            &format!("10.9.{n}.1/24"),
            &[&format!("{addr}/24")],
        );
        peer.enter(|| {
            netns::listen(&format!("0.0.0.0:{PORT}"));
        });
        let pid = peer.pid();
        let wrapper = ["nsenter", "-t", pid.as_str(), "-n"];
        let config = config.replace("{secrets}", &scratch.0.display().to_string());
        let daemon = Daemon::start_under(&format!("{test}-{name}"), &config, &wrapper);
        Host { peer, daemon, addr }
    }

    fn target(&self) -> SocketAddr {
        format!("{}:{PORT}", self.addr).parse().unwrap()
    }

    fn banned(&self, jail: &str) -> Vec<String> {
        self.daemon.banned(jail)
    }

    fn wait(&self, what: &str, check: impl FnMut() -> bool) {
        assert!(
            netns::eventually(Duration::from_secs(15), check),
            "{what} (on {})",
            self.addr
        );
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.daemon.ok(&["status", "--json"])).unwrap()
    }
}

fn member_config(scratch: &Scratch, host: &str, url: &str, extra_jail: &str) -> String {
    format!(
        "{}\n{}",
        web_jail(PORT, extra_jail),
        nats::fleet_section(&scratch.0, host, "member", &[url.to_owned()], "")
    )
}

#[test]
fn a_ban_on_one_host_is_enforced_by_the_whole_fleet_and_lifted_everywhere() {
    let test = "fleet";
    let Some(()) = netns::enter(test) else { return };
    if !nats::available(test) {
        return;
    }
    let scratch = Scratch::new(test);
    netns::ip(&["addr", "add", "10.9.0.1/32", "dev", "lo"]);
    for a in [
        "10.9.99.9",
        "10.9.99.10",
        "10.9.99.11",
        "10.9.99.12",
        "10.9.99.13",
    ] {
        netns::ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    let mut server = Nats::start_new(&scratch, "10.9.0.1:4222", &["a", "b", "c", "e"]);
    let url = server.url();
    let a = Host::start(
        test,
        "a",
        1,
        &member_config(&scratch, "a", &url, ""),
        &scratch,
    );
    // B never bans 10.9.99.50, whoever asks.
    let b_jail = "ignoreip = [\"10.9.99.50\"]";
    let mut b = Host::start(
        test,
        "b",
        2,
        &member_config(&scratch, "b", &url, b_jail),
        &scratch,
    );
    let c = Host::start(
        test,
        "c",
        3,
        &member_config(&scratch, "c", &url, ""),
        &scratch,
    );
    let enforcer = format!(
        "[defaults]\nignoreself = false\n\n{}",
        nats::fleet_section(&scratch.0, "e", "enforcer", std::slice::from_ref(&url), "")
    );
    let e = Host::start(test, "e", 4, &enforcer, &scratch);
    for h in [&a, &b, &c, &e] {
        assert!(
            netns::connects("10.9.99.9", h.target()),
            "{} reachable before",
            h.addr
        );
    }

    // Three failures on A: B, C and the enforcer drop the address, with the time left.
    a.daemon.append("web.log", &failures("10.9.99.9", 3));
    a.daemon.wait_banned("web", "10.9.99.9");
    for (h, jail) in [(&b, "web"), (&c, "web"), (&e, "fleet")] {
        h.wait("A's ban arrives", || {
            h.banned(jail).contains(&"10.9.99.9".to_owned())
        });
        let list: serde_json::Value =
            serde_json::from_str(&h.daemon.ok(&["list", "--json", "--jail", jail])).unwrap();
        let ban = &list[0];
        assert_eq!(ban["origin"], "remote:a", "{list}");
        let left = ban["expires_in_s"].as_u64().unwrap();
        assert!((3590..=3600).contains(&left), "time left {left}");
        assert!(
            !netns::connects("10.9.99.9", h.target()),
            "{} still lets 10.9.99.9 in",
            h.addr
        );
        assert!(
            netns::connects("10.9.99.10", h.target()),
            "{} drops a bystander",
            h.addr
        );
    }

    // An unban on C lifts it everywhere, A's own ban included.
    c.daemon.ok(&["unban", "10.9.99.9"]);
    for (h, jail) in [(&a, "web"), (&b, "web"), (&e, "fleet")] {
        h.wait("the unban arrives", || h.banned(jail).is_empty());
        assert!(
            netns::connects("10.9.99.9", h.target()),
            "{} still drops 10.9.99.9",
            h.addr
        );
    }

    // B offline while A bans two: both are in B's kernel when B answers again.
    b.daemon.stop();
    a.daemon.append("web.log", &failures("10.9.99.11", 3));
    a.daemon.append("web.log", &failures("10.9.99.12", 3));
    e.wait("both bans reach the enforcer", || {
        e.banned("fleet").len() == 2
    });
    b.daemon.restart();
    let mut on_b = b.banned("web");
    on_b.sort();
    assert_eq!(
        on_b,
        ["10.9.99.11", "10.9.99.12"],
        "B ready without the fleet's bans"
    );
    assert!(!netns::connects("10.9.99.11", b.target()));

    // NATS down: A still bans locally, queues, and B gets it when NATS is back.
    server.stop();
    a.daemon.append("web.log", &failures("10.9.99.13", 3));
    a.daemon.wait_banned("web", "10.9.99.13");
    assert!(!netns::connects("10.9.99.13", a.target()));
    a.wait("A reports the queue", || {
        let s = a.status();
        s["fleet"]["queued"].as_u64() >= Some(1) && s["fleet"]["connected"] == false
    });
    server.start();
    b.wait("the queued ban reaches B", || {
        b.banned("web").contains(&"10.9.99.13".to_owned())
    });
    a.wait("A's queue empties", || a.status()["fleet"]["queued"] == 0);

    // A remote ban of B's ignoreip is refused by B and counted; the enforcer takes it.
    a.daemon.ok(&["ban", "web", "10.9.99.50"]);
    e.wait("the manual ban reaches the enforcer", || {
        e.banned("fleet").contains(&"10.9.99.50".to_owned())
    });
    b.wait("B counts the refusal", || {
        b.status()["fleet"]["refused"]["a:ignored"] == 1
    });
    assert!(!b.banned("web").contains(&"10.9.99.50".to_owned()));

    // C cannot publish a ban in A's name: the server refuses it, nobody enforces it.
    let refused = publish_as("c", &url, "$KV.banctl.a.ban.web.4_10-9-99-77_32");
    assert!(
        refused.is_err(),
        "the server took C's publish on A's subject"
    );
    let accepted = publish_as("c", &url, "$KV.banctl.c.ban.web.4_10-9-99-78_32");
    assert!(accepted.is_ok(), "C's own subject: {accepted:?}");
    e.wait("C's own ban arrives", || {
        e.banned("fleet").contains(&"10.9.99.78".to_owned())
    });
    assert!(!e.banned("fleet").contains(&"10.9.99.77".to_owned()));

    // `unban --origin` lifts every ban one host made here.
    let lifted = e.daemon.ok(&["unban", "--origin", "a"]);
    assert!(
        lifted.contains("10.9.99.11") && lifted.contains("10.9.99.50"),
        "{lifted}"
    );
    let mut left = e.banned("fleet");
    left.sort();
    assert_eq!(left, ["10.9.99.78"]);
    drop(b.peer);
}

/// How many of the fleet stream's followers are current, asked as fleet user `user`.
fn replicas_current(url: &str, user: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Ok(client) = async_nats::ConnectOptions::new()
            .user_and_password(user.into(), format!("pw-{user}"))
            .connect(url)
            .await
        else {
            return 0;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), js.get_stream("KV_banctl")).await
        else {
            return 0;
        };
        match tokio::time::timeout(Duration::from_secs(2), stream.info()).await {
            Ok(Ok(info)) => info.cluster.as_ref().map_or(0, |c| {
                c.replicas
                    .iter()
                    .filter(|p| p.current && !p.offline)
                    .count()
            }),
            _ => 0,
        }
    })
}

/// Publishes a ban value as fleet user `user` on `subject`; the stream's answer.
fn publish_as(user: &str, url: &str, subject: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = subject.rsplit('.').next().unwrap();
    let net = banctl::fleet::wire::parse_net_token(token).unwrap();
    let value = serde_json::json!({
        "v": 1, "jail": "web", "net": net.to_string(), "bantime_s": 600, "count": 1, "reason": "test"
    });
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .user_and_password(user.into(), format!("pw-{user}"))
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let ack = js
            .publish(subject.to_owned(), value.to_string().into())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(3), ack)
            .await
            .map_err(|_| "no acknowledgement".to_owned())?
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

#[test]
fn a_replicated_stream_loses_no_ban_when_a_server_dies_during_a_burst() {
    let test = "fleet-cluster";
    let Some(()) = netns::enter(test) else { return };
    if !nats::available(test) {
        return;
    }
    let scratch = Scratch::new(test);
    let ips = ["10.9.0.1", "10.9.0.2", "10.9.0.3"];
    for ip in ips {
        netns::ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    netns::ip(&["addr", "add", "10.8.0.0/23", "dev", "lo"]);
    let mut servers = Nats::start_cluster(&scratch, &ips, &["a", "b"]);
    let urls: Vec<String> = servers.iter().map(Nats::url).collect();
    let section = |host: &str, urls: &[String]| {
        nats::fleet_section(
            &scratch.0,
            host,
            "member",
            urls,
            "replicas = 3\nwait = \"2s\"",
        )
    };
    // A may be on the server that dies; B is on another.
    let a_config = format!("{}\n{}", web_jail(PORT, ""), section("a", &urls[..2]));
    let b_config = format!("{}\n{}", web_jail(PORT, ""), section("b", &urls[2..]));
    let a = Host::start(test, "a", 1, &a_config, &scratch);
    let b = Host::start(test, "b", 2, &b_config, &scratch);
    a.wait("A's link is up", || {
        a.status()["fleet"]["caught_up"] == true
    });
    b.wait("B's link is up", || {
        b.status()["fleet"]["caught_up"] == true
    });
    // The scenario is a formed cluster losing a server: the stream has its three copies,
    // all current, before one goes.
    assert!(
        netns::eventually(Duration::from_secs(30), || replicas_current(&urls[2], "b")
            == 2),
        "the stream's replicas did not catch up"
    );

    // 300 attackers in one write; the first server dies while the bans go out.
    let attackers: Vec<String> = (0..300u32)
        .map(|i| format!("10.8.{}.{}", i / 256, i % 256))
        .collect();
    let lines: Vec<String> = attackers.iter().flat_map(|ip| failures(ip, 3)).collect();
    a.daemon.append("web.log", &lines);
    servers[0].stop();
    a.wait("A banned all 300", || a.banned("web").len() == 300);
    assert!(
        netns::eventually(Duration::from_secs(30), || b.banned("web").len() == 300),
        "B has {} of A's 300 bans",
        b.banned("web").len()
    );
    let mut on_b = b.banned("web");
    on_b.sort();
    let mut wanted = attackers.clone();
    wanted.sort();
    assert_eq!(on_b, wanted);
    assert!(!netns::connects("10.8.1.20", b.target()));
    a.wait("A's queue is empty", || a.status()["fleet"]["queued"] == 0);
}
