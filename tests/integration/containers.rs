//! Published container ports, host services and routed containers: one jail rule covers them.
//!
//! Topology, all inside namespaces this test makes:
//!
//! ```text
//! client ns 10.20.0.5 (banned), 10.20.0.6 ──veth── host ns 10.20.0.1   (banctl, NAT :8080 → ctr:80,
//!                                                   10.10.0.1 ──veth── ctr ns 10.10.0.2:80, :2222
//! ```

use std::time::Duration;

use crate::daemon::Daemon;
use crate::netns::{self, Peer, connects, listen};

fn docker_like_nat() {
    netns::run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    netns::nft_script(
        r#"
table ip nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    tcp dport 8080 dnat to 10.10.0.2:80
  }
}
# Another table accepting everything at the same hooks, earlier: an accept is not final,
# banctl's drop must still win.
table inet allow_all {
  chain early {
    type filter hook prerouting priority raw - 10; policy accept;
    accept
  }
  chain routed {
    type filter hook forward priority filter - 10; policy accept;
    accept
  }
}
"#,
    );
}

#[test]
fn published_container_port_host_service_and_routed_container() {
    let Some(()) = netns::enter("published_container_port_host_service_and_routed_container")
    else {
        return;
    };
    let ctr = Peer::new();
    ctr.link("h-ctr", "10.10.0.1/24", &["10.10.0.2/24"]);
    let client = Peer::new();
    client.link("h-cli", "10.20.0.1/24", &["10.20.0.5/24", "10.20.0.6/24"]);
    docker_like_nat();

    let (ctr_web, ctr_ssh) = ctr.enter(|| (listen("0.0.0.0:80"), listen("0.0.0.0:2222")));
    let host_ssh = listen("10.20.0.1:2222");
    let published: std::net::SocketAddr = "10.20.0.1:8080".parse().unwrap();
    let routed_web = std::net::SocketAddr::new("10.10.0.2".parse().unwrap(), ctr_web.port());
    let routed_ssh = std::net::SocketAddr::new("10.10.0.2".parse().unwrap(), ctr_ssh.port());
    let from = |src: &'static str, target| client.enter(move || connects(src, target));
    for target in [published, host_ssh, routed_web] {
        assert!(
            from("10.20.0.5", target),
            "no connectivity to {target} before any ban"
        );
    }

    // One jail names the ports users see: 8080 (published, DNAT to ctr:80) and 2222 (host).
    // It does not police routed traffic (forward = false): a router's transit is not its business.
    // A second jail protects the routed container's port 80 through the forward chain.
    let daemon = Daemon::start(
        "containers",
        r#"
[jails.web]
failregex = ['^fail <HOST>$']
logpath = "{dir}/web.log"
ports = [8080, 2222]
forward = false

[jails.routed]
failregex = ['^fail <HOST>$']
logpath = "{dir}/routed.log"
ports = [80]
"#,
    );
    daemon.ok(&["ban", "web", "10.20.0.5"]);
    assert!(
        !from("10.20.0.5", published),
        "banned client reached the published port 8080"
    );
    assert!(
        !from("10.20.0.5", host_ssh),
        "banned client reached the host service"
    );
    assert!(
        from("10.20.0.6", published),
        "other client lost the published port"
    );
    assert!(
        from("10.20.0.6", host_ssh),
        "other client lost the host service"
    );
    // Transit to another machine's port 2222 is not dropped by the prerouting rule.
    assert!(
        from("10.20.0.5", routed_ssh),
        "router transit was dropped (fib daddr type local missing?)"
    );

    let status: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "web", "--json"])).unwrap();
    assert!(
        status[0]["dropped_packets"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        status[0]["dropped_bytes"].as_u64().unwrap() >= 80,
        "{status}"
    );

    // The routed container, reached by its own address: the forward chain drops by original port.
    assert!(from("10.20.0.5", routed_web));
    daemon.ok(&["ban", "routed", "10.20.0.5"]);
    assert!(
        !from("10.20.0.5", routed_web),
        "banned client reached the routed container"
    );
    assert!(
        from("10.20.0.6", routed_web),
        "other client lost the routed container"
    );

    daemon.ok(&["unban", "10.20.0.5"]);
    assert!(
        netns::eventually(Duration::from_secs(2), || from("10.20.0.5", published)
            && from("10.20.0.5", routed_web)),
        "still dropped after unban"
    );
}
