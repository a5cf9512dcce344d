//! The firewall module against the real kernel, in a throw-away namespace.

use std::time::Duration;

use banctl::duration::BanTime;
use banctl::firewall::{Ban, Firewall, JailRules, PortRange, Protocol};

use crate::netns;

fn jail(name: &str, ports: &[u16]) -> JailRules {
    JailRules {
        name: name.into(),
        ports: ports.iter().map(|p| PortRange::single(*p)).collect(),
        protocol: Protocol::Tcp,
        forward: true,
    }
}

fn ban(jail: &str, net: &str, secs: u64) -> Ban {
    Ban {
        jail: jail.into(),
        net: net.parse().unwrap(),
        time: BanTime::Finite(Duration::from_secs(secs)),
    }
}

#[test]
fn ban_list_unban_and_traffic() {
    let Some(()) = netns::enter("ban_list_unban_and_traffic") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut fw = Firewall::open().unwrap();
    fw.apply_layout(
        &[jail("web", &[target.port()]), jail("other", &[1, 2])],
        &[],
    )
    .unwrap();

    fw.ban(&[ban("web", "127.0.0.2", 60), ban("web", "2001:db8::/64", 60)])
        .unwrap();
    let listed = fw.list("web").unwrap();
    let nets: Vec<String> = listed.iter().map(|e| e.net.to_string()).collect();
    assert_eq!(nets, ["127.0.0.2", "2001:db8::/64"]);
    assert_eq!(listed[0].timeout, Some(Duration::from_secs(60)));
    assert!(listed[0].expires_in.unwrap() > Duration::from_secs(55));

    assert!(
        !netns::connects("127.0.0.2", target),
        "banned source connected"
    );
    assert!(
        netns::connects("127.0.0.3", target),
        "innocent source was dropped"
    );
    assert!(fw.dropped("web").unwrap().packets >= 1);

    // Re-banning replaces the timeout.
    fw.ban(&[ban("web", "127.0.0.2", 5)]).unwrap();
    let e = &fw.list("web").unwrap()[0];
    assert_eq!(e.timeout, Some(Duration::from_secs(5)));

    fw.unban(&[("web".into(), "127.0.0.2".parse().unwrap())])
        .unwrap();
    assert!(
        netns::connects("127.0.0.2", target),
        "unbanned source still dropped"
    );
    // Unbanning something absent fails and changes nothing.
    assert!(
        fw.unban(&[
            ("web".into(), "2001:db8::/64".parse().unwrap()),
            ("web".into(), "127.0.0.9".parse().unwrap())
        ])
        .is_err()
    );
    assert_eq!(fw.list("web").unwrap().len(), 1);

    // Re-applying the layout keeps bans; dropping a jail removes its sets.
    fw.apply_layout(&[jail("web", &[target.port()])], &[])
        .unwrap();
    assert_eq!(fw.list("web").unwrap().len(), 1);
    assert_eq!(fw.jails_in_kernel().unwrap(), ["web"]);
    println!("{}", netns::nft(&["list", "table", "inet", "banctl"]));
}

#[test]
fn the_ruleset_generation_tells_our_transactions_from_others() {
    use banctl::engine::Enforcer;
    let Some(()) = netns::enter("generation") else {
        return;
    };
    let mut fw = Firewall::open().unwrap();
    let start = fw.changes().unwrap();
    fw.apply_layout(&[jail("web", &[22])], &[]).unwrap();
    fw.ban(&[ban("web", "192.0.2.1", 60)]).unwrap();
    let ours = fw.changes().unwrap();
    assert_eq!(ours.ours - start.ours, 2);
    assert_eq!(start.others_until(ours), 0);
    netns::nft_script("table inet someone_else {}\n");
    let after = fw.changes().unwrap();
    assert_eq!(start.others_until(after), 1);
    assert_eq!(ours.others_until(after), 1);
}

#[test]
fn a_watcher_that_cannot_keep_up_is_told_so_and_a_late_one_hears_nothing_before() {
    use banctl::firewall::{Monitor, NFT_MSG_NEWGEN};
    let Some(()) = netns::enter("watcher-overflow") else {
        return;
    };
    let mut fw = Firewall::open().unwrap();
    fw.apply_layout(&[jail("web", &[22])], &[]).unwrap();
    let late = Monitor::open_unjoined().unwrap();
    let mut listening = Monitor::open().unwrap();
    // One notification per address: far more than an 8 MiB receive buffer holds.
    let many: Vec<Ban> = (0..200_000u32)
        .map(|i| {
            ban(
                "web",
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                600,
            )
        })
        .collect();
    fw.ban(&many).unwrap();
    // A notification per element: the buffer overflows, and the error says so (ENOBUFS),
    // which the ruleset watcher turns into a full check instead of stopping.
    let overflowed = (0..100).any(|_| match listening.next(Duration::from_millis(100)) {
        Err(e) => e.errno() == Some(libc::ENOBUFS),
        Ok(_) => false,
    });
    assert!(overflowed, "200,000 notifications fit the buffer");
    // Joined after the transaction: it hears the next one only.
    let mut late = late;
    late.join().unwrap();
    fw.ban(&[ban("web", "192.0.2.9", 60)]).unwrap();
    let mut heard = Vec::new();
    while !heard
        .iter()
        .any(|n: &banctl::firewall::Notification| n.kind == NFT_MSG_NEWGEN)
    {
        let more = late.next(Duration::from_secs(2)).unwrap();
        assert!(!more.is_empty(), "no commit heard: {heard:?}");
        heard.extend(more);
    }
    let others = heard.iter().filter(|n| n.kind != NFT_MSG_NEWGEN).count();
    assert!(others < 10, "the late watcher heard {others} notifications");
}

/// A table written before address sets (one interval set per family holding every ban) is
/// moved by the first layout: the same bans, with the time they had left, now in an address
/// set and a prefix set, and still dropping traffic.
#[test]
fn an_older_table_is_moved_into_address_and_prefix_sets() {
    let Some(()) = netns::enter("older-table") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    netns::nft_script(&format!(
        "table inet banctl {{
           set web_v4 {{ type ipv4_addr; flags interval, timeout;
             elements = {{ 127.0.0.2 timeout 1h expires 30m, 10.9.0.0/24 timeout 2h, 127.0.0.7 }} }}
           set web_v6 {{ type ipv6_addr; flags interval, timeout;
             elements = {{ 2001:db8::/64 timeout 1h }} }}
           chain prerouting {{ type filter hook prerouting priority -305; policy accept;
             ip saddr @web_v4 tcp dport {port} drop
             ip6 saddr @web_v6 tcp dport {port} drop
           }}
         }}\n",
        port = target.port()
    ));
    let mut fw = Firewall::open().unwrap();
    let shown = |elements: Vec<banctl::firewall::Element>| -> Vec<(String, Option<u64>)> {
        elements
            .into_iter()
            .map(|e| (e.net.to_string(), e.timeout.map(|t| t.as_secs())))
            .collect()
    };
    let expected = [
        ("10.9.0.0/24".to_owned(), Some(7200)),
        ("127.0.0.2".to_owned(), Some(3600)),
        ("127.0.0.7".to_owned(), None),
        ("2001:db8::/64".to_owned(), Some(3600)),
    ];
    // Read as it is, before the move…
    let before = fw.snapshot(&["web"]).unwrap().remove("web").unwrap();
    assert_eq!(shown(before), expected);

    fw.apply_layout(&[jail("web", &[target.port()])], &[])
        .unwrap();
    // …and after it, with the time left kept.
    let after = fw.list("web").unwrap();
    let left = after[1].expires_in.unwrap();
    assert!(
        left <= Duration::from_secs(1800) && left > Duration::from_secs(1790),
        "{left:?}"
    );
    assert_eq!(shown(after), expected);
    let v4 = netns::nft(&["list", "set", "inet", "banctl", "web_v4"]);
    assert!(
        v4.contains("flags timeout") && !v4.contains("flags interval"),
        "{v4}"
    );
    assert!(v4.contains("127.0.0.2 timeout 1h expires"), "{v4}");
    let nets = netns::nft(&["list", "set", "inet", "banctl", "web_v4_nets"]);
    assert!(nets.contains("10.9.0.0/24 timeout 2h"), "{nets}");
    assert!(
        !netns::connects("127.0.0.2", target),
        "a moved ban let traffic through"
    );
    assert!(netns::connects("127.0.0.3", target));
}

/// The two sets of a family are one ban list: an address inside a banned prefix is covered
/// by it, and a prefix over banned addresses replaces them, as in a single interval set.
#[test]
fn the_address_and_prefix_sets_of_a_family_are_one_ban_list() {
    let Some(()) = netns::enter("one-ban-list") else {
        return;
    };
    let mut fw = Firewall::open().unwrap();
    fw.apply_layout(&[jail("web", &[22])], &[]).unwrap();
    let listed = |fw: &mut Firewall| -> Vec<String> {
        let list = fw.list("web").unwrap();
        list.iter().map(|e| e.net.to_string()).collect()
    };

    fw.ban(&[ban("web", "10.1.0.5", 60), ban("web", "10.1.0.6", 60)])
        .unwrap();
    let overlaps = fw
        .ban(&[ban("web", "10.1.0.0/24", 60), ban("web", "10.2.0.1", 60)])
        .unwrap();
    let mut replaced: Vec<String> = overlaps
        .replaced
        .iter()
        .map(|(_, n)| n.to_string())
        .collect();
    replaced.sort();
    assert_eq!(replaced, ["10.1.0.5", "10.1.0.6"]);
    assert_eq!(listed(&mut fw), ["10.1.0.0/24", "10.2.0.1"]);

    let overlaps = fw
        .ban(&[ban("web", "10.1.0.9", 60), ban("web", "10.3.0.1", 60)])
        .unwrap();
    let covered: Vec<(usize, String)> = overlaps
        .covered
        .iter()
        .map(|(i, n)| (*i, n.to_string()))
        .collect();
    assert_eq!(covered, [(0, "10.1.0.0/24".to_owned())]);
    assert_eq!(listed(&mut fw), ["10.1.0.0/24", "10.2.0.1", "10.3.0.1"]);
    let v4 = netns::nft(&["list", "set", "inet", "banctl", "web_v4"]);
    assert!(!v4.contains("10.1.0."), "{v4}");
}

/// The kernel sweeps an address set once a minute: an address whose ban ended a moment ago is
/// still in its table. It neither matches a packet nor is listed, and a new ban of it is
/// written as a fresh element, by the fast path (no refusal, no second batch).
#[test]
fn an_ended_ban_waiting_for_the_sweep_is_neither_enforced_nor_in_the_way() {
    use banctl::engine::Enforcer;
    let Some(()) = netns::enter("ended-before-sweep") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut fw = Firewall::open().unwrap();
    fw.apply_layout(&[jail("web", &[target.port()])], &[])
        .unwrap();
    fw.ban(&[ban("web", "127.0.0.2", 1)]).unwrap();
    assert!(!netns::connects("127.0.0.2", target));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(netns::connects("127.0.0.2", target), "an ended ban dropped");
    assert!(fw.list("web").unwrap().is_empty());

    let before = fw.changes().unwrap();
    fw.ban(&[ban("web", "127.0.0.2", 60)]).unwrap();
    assert_eq!(fw.changes().unwrap().ours - before.ours, 1, "one batch");
    let listed = fw.list("web").unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].timeout, Some(Duration::from_secs(60)));
    assert!(!netns::connects("127.0.0.2", target));
    let set = netns::nft(&["list", "set", "inet", "banctl", "web_v4"]);
    assert!(set.contains("gc-interval 1m"), "{set}");
}
