//! What the fleet's bucket holds, and how its keys name an origin, a jail and a prefix.
//!
//! Keys (one KV bucket, stream `KV_<bucket>`, subjects `$KV.<bucket>.<key>`):
//! - `<origin>.ban.<jail>.<net>`: a ban of `origin`'s jail (JSON [`BanMsg`]); a delete of the
//!   key withdraws it.
//! - `<origin>.unban.<net>`: an admin on `origin` lifted `net` (JSON [`UnbanMsg`]): every host
//!   lifts its bans of `net`, whoever made them.
//!
//! The origin is the key's first token, never a field of the value: the servers' permissions
//! let each host publish under its own name only, so the subject is what proves who sent it.
//! A prefix is one token: `4_203-0-113-7_32`, `6_2001-db8--7_128`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::addr::IpNet;
use crate::duration::BanTime;
use crate::engine::{RemoteBan, RemoteLift};

pub const VERSION: u32 = 1;

/// The value of a ban key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanMsg {
    pub v: u32,
    pub jail: String,
    pub net: IpNet,
    /// Seconds; absent for a permanent ban.
    pub bantime_s: Option<u64>,
    /// Which ban of the address this is on the origin.
    pub count: u32,
    pub reason: String,
}

/// The value of an unban key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnbanMsg {
    pub v: u32,
    pub net: IpNet,
    /// The jail it was lifted in; absent: every jail.
    pub jail: Option<String>,
}

/// One entry of the bucket, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Ban(RemoteBan),
    Lift(RemoteLift),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("key {0:?} names no ban or unban")]
    Key(String),
    #[error("key {key:?}: {message}")]
    Value { key: String, message: String },
}

/// `net` as one key token.
pub fn net_token(net: &IpNet) -> String {
    match net.addr() {
        IpAddr::V4(a) => format!("4_{}_{}", a.to_string().replace('.', "-"), net.prefix_len()),
        IpAddr::V6(a) => format!("6_{}_{}", a.to_string().replace(':', "-"), net.prefix_len()),
    }
}

/// The inverse of [`net_token`].
pub fn parse_net_token(token: &str) -> Option<IpNet> {
    let mut parts = token.split('_');
    let (family, addr, len) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let addr: IpAddr = match family {
        "4" => addr.replace('-', ".").parse().ok()?,
        "6" => addr.replace('-', ":").parse().ok()?,
        _ => return None,
    };
    let net: IpNet = format!("{addr}/{len}").parse().ok()?;
    // Only the canonical spelling: one prefix, one key.
    (net.addr() == addr && net_token(&net) == token).then_some(net)
}

/// What fleet host `host` must be allowed on the NATS server (a `permissions` value of its
/// user): publish under its own name only, and use the JetStream API of the bucket's stream;
/// read replies. The README, the tests and `cargo xtask demo fleet` use this.
pub fn server_permissions(host: &str, bucket: &str) -> String {
    let stream = format!("KV_{bucket}");
    let publish = [
        format!("$KV.{bucket}.{host}.>"),
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.FC.{stream}.>"),
    ];
    let publish: Vec<String> = publish.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "{{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }}",
        publish.join(", ")
    )
}

pub fn ban_key(origin: &str, jail: &str, net: &IpNet) -> String {
    format!("{origin}.ban.{jail}.{}", net_token(net))
}

pub fn unban_key(origin: &str, net: &IpNet) -> String {
    format!("{origin}.unban.{}", net_token(net))
}

/// Reads one entry: `deleted` for a delete or purge of the key, `stored_at` the server's
/// time of the entry (where a ban's time starts).
pub fn decode(
    key: &str,
    value: &[u8],
    deleted: bool,
    stored_at: SystemTime,
) -> Result<Option<Decoded>, WireError> {
    let bad_key = || WireError::Key(key.to_owned());
    let tokens: Vec<&str> = key.split('.').collect();
    let bad_value = |message: String| WireError::Value {
        key: key.to_owned(),
        message,
    };
    match tokens.as_slice() {
        [origin, "ban", jail, net] => {
            let net = parse_net_token(net).ok_or_else(bad_key)?;
            if deleted {
                return Ok(Some(Decoded::Lift(RemoteLift::Withdrawn {
                    origin: (*origin).to_owned(),
                    jail: (*jail).to_owned(),
                    net,
                })));
            }
            let msg: BanMsg =
                serde_json::from_slice(value).map_err(|e| bad_value(e.to_string()))?;
            if msg.v != VERSION || msg.net != net || msg.jail != *jail {
                return Err(bad_value(
                    "its value does not match its key (or has another version)".into(),
                ));
            }
            Ok(Some(Decoded::Ban(RemoteBan {
                origin: (*origin).to_owned(),
                jail: msg.jail,
                net,
                started: stored_at,
                time: msg.bantime_s.map_or(BanTime::Permanent, |s| {
                    BanTime::Finite(Duration::from_secs(s))
                }),
                count: msg.count,
                reason: format!("from {origin}: {}", msg.reason),
            })))
        }
        [_, "unban", _] if deleted => Ok(None),
        [origin, "unban", net] => {
            let net = parse_net_token(net).ok_or_else(bad_key)?;
            let msg: UnbanMsg =
                serde_json::from_slice(value).map_err(|e| bad_value(e.to_string()))?;
            if msg.v != VERSION || msg.net != net {
                return Err(bad_value(
                    "its value does not match its key (or has another version)".into(),
                ));
            }
            Ok(Some(Decoded::Lift(RemoteLift::Unban {
                origin: (*origin).to_owned(),
                net,
                jail: msg.jail,
            })))
        }
        _ => Err(bad_key()),
    }
}

/// Keeps, of a round read in stream order, the bans that no later lift of the round takes
/// back; the lifts all stay (they also lift what is in force already). The engine applies
/// the lifts first, then the bans.
pub fn settle(entries: Vec<Decoded>) -> (Vec<RemoteBan>, Vec<RemoteLift>) {
    let mut bans: Vec<Option<RemoteBan>> = Vec::new();
    let mut lifts = Vec::new();
    for entry in entries {
        match entry {
            Decoded::Ban(b) => bans.push(Some(b)),
            Decoded::Lift(lift) => {
                for slot in &mut bans {
                    let taken_back = slot.as_ref().is_some_and(|b| match &lift {
                        RemoteLift::Unban { net, jail, .. } => {
                            b.net.covers(net) && jail.as_ref().is_none_or(|j| *j == b.jail)
                        }
                        RemoteLift::Withdrawn { origin, jail, net } => {
                            b.origin == *origin && b.jail == *jail && b.net == *net
                        }
                    });
                    if taken_back {
                        *slot = None;
                    }
                }
                lifts.push(lift);
            }
        }
    }
    (bans.into_iter().flatten().collect(), lifts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn net_tokens_round_trip_and_only_canonical_ones_are_read() {
        for s in [
            "203.0.113.7/32",
            "10.1.0.0/16",
            "2001:db8::7/128",
            "2001:db8:5::/64",
            "::/0",
        ] {
            let token = net_token(&net(s));
            assert!(!token.contains(['.', ':', '*', '>', ' ']), "{token}");
            assert_eq!(parse_net_token(&token), Some(net(s)), "{token}");
        }
        for bad in [
            "4_203-0-113-7",
            "4_203-0-113-7_33",
            "6_2001-0db8--7_128",
            "4_10-1-0-1_16",
            "x_1_1",
            "4_1-2-3-4_32_1",
        ] {
            assert_eq!(parse_net_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_decode_with_their_origin_from_the_key() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ban = BanMsg {
            v: VERSION,
            jail: "sshd".into(),
            net: net("203.0.113.7/32"),
            bantime_s: Some(600),
            count: 2,
            reason: "3 failures".into(),
        };
        let key = ban_key("web1", "sshd", &ban.net);
        assert_eq!(key, "web1.ban.sshd.4_203-0-113-7_32");
        let value = serde_json::to_vec(&ban).unwrap();
        let Some(Decoded::Ban(b)) = decode(&key, &value, false, at).unwrap() else {
            panic!("not a ban")
        };
        assert_eq!((b.origin.as_str(), b.started), ("web1", at));
        assert_eq!(b.time, BanTime::Finite(Duration::from_secs(600)));
        // A value naming another prefix than its key is refused, not believed.
        let other = ban_key("web1", "sshd", &net("198.51.100.1/32"));
        assert!(decode(&other, &value, false, at).is_err());
        assert_eq!(
            decode(&key, b"", true, at).unwrap(),
            Some(Decoded::Lift(RemoteLift::Withdrawn {
                origin: "web1".into(),
                jail: "sshd".into(),
                net: ban.net
            }))
        );
        assert!(decode("web1.ban.sshd", &value, false, at).is_err());
        assert!(decode("web1.ban.sshd.4_203-0-113-7_32", b"{", false, at).is_err());
    }

    #[test]
    fn a_later_lift_takes_back_earlier_bans_of_its_round_only() {
        let at = SystemTime::UNIX_EPOCH;
        let ban = |origin: &str, n: &str| {
            Decoded::Ban(RemoteBan {
                origin: origin.into(),
                jail: "sshd".into(),
                net: net(n),
                started: at,
                time: BanTime::Permanent,
                count: 1,
                reason: String::new(),
            })
        };
        let unban = Decoded::Lift(RemoteLift::Unban {
            origin: "c".into(),
            net: net("192.0.2.1/32"),
            jail: None,
        });
        let (bans, lifts) = settle(vec![
            ban("a", "192.0.2.1/32"),
            ban("b", "192.0.2.0/24"),
            ban("a", "192.0.2.9/32"),
            unban,
            ban("a", "192.0.2.1/32"),
        ]);
        let kept: Vec<String> = bans
            .iter()
            .map(|b| format!("{}:{}", b.origin, b.net))
            .collect();
        assert_eq!(kept, ["a:192.0.2.9", "a:192.0.2.1"]);
        assert_eq!(lifts.len(), 1);
    }
}
