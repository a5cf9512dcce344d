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
