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
    let many: Vec<Ban> = (0..60_000u32)
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
    assert!(overflowed, "60,000 notifications fit the buffer");
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
