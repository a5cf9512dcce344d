//! The services `banctl init` knows: where each one leaves traces (units, journal identifiers,
//! log files, container images) and the jail that protects it.

/// A container image's log as a volume makes it visible on the host: the container path of
/// the volume, and the log files' pattern inside it.
#[derive(Debug, Clone, Copy)]
pub struct VolumeLog {
    pub mount: &'static str,
    pub pattern: &'static str,
}

/// One service and the jail that protects it.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The jail's name (and, unless `filter` says otherwise, the built-in filter's).
    pub jail: &'static str,
    pub filter: &'static str,
    /// systemd units that run it.
    pub units: &'static [&'static str],
    /// `SYSLOG_IDENTIFIER`s its journal entries carry.
    pub idents: &'static [&'static str],
    /// Its log files in their usual places (globs).
    pub logs: &'static [&'static str],
    /// Whether only a log file shows the service is worth a jail (an access log's filter: the
    /// unit alone says nothing about where that log is).
    pub needs_log: bool,
    /// Ports it usually listens on.
    pub ports: &'static [u16],
    /// Whether it takes UDP too.
    pub udp: bool,
    /// Container images that run it (a part of the image name).
    pub images: &'static [&'static str],
    pub volume_log: Option<VolumeLog>,
}

const NONE: &[&str] = &[];

const fn service(jail: &'static str) -> Service {
    Service {
        jail,
        filter: jail,
        units: NONE,
        idents: NONE,
        logs: NONE,
        needs_log: false,
        ports: &[],
        udp: false,
        images: NONE,
        volume_log: None,
    }
}

/// Every service `banctl init` looks for, in the order the jails are written.
pub const SERVICES: &[Service] = &[
    Service {
        units: &["ssh.service", "sshd.service"],
        idents: &["sshd", "sshd-session"],
        logs: &["/var/log/auth.log", "/var/log/secure"],
        ports: &[22],
        ..service("sshd")
    },
    Service {
        units: &["nginx.service"],
        logs: &["/var/log/nginx/error.log"],
        ports: &[80, 443],
        ..service("nginx-http-auth")
    },
    Service {
        units: &["nginx.service"],
        logs: &["/var/log/nginx/access.log"],
        needs_log: true,
        ports: &[80, 443],
        ..service("nginx-botsearch")
    },
    Service {
        units: &["apache2.service", "httpd.service"],
        logs: &["/var/log/apache2/error.log", "/var/log/httpd/error_log"],
        ports: &[80, 443],
        ..service("apache-auth")
    },
    Service {
        units: &["postfix.service", "postfix@-.service"],
        idents: &[
            "postfix/smtpd",
            "postfix/submission/smtpd",
            "postfix/smtps/smtpd",
        ],
        logs: &["/var/log/mail.log", "/var/log/maillog"],
        ports: &[25, 465, 587],
        ..service("postfix")
    },
    Service {
        units: &["dovecot.service"],
        idents: &["dovecot"],
        logs: &[
            "/var/log/dovecot.log",
            "/var/log/mail.log",
            "/var/log/maillog",
        ],
        ports: &[110, 143, 993, 995, 4190],
        ..service("dovecot")
    },
    Service {
        units: &["jellyfin.service"],
        logs: &["/var/log/jellyfin/log_*.log"],
        ports: &[8096, 8920],
        images: &["jellyfin"],
        volume_log: Some(VolumeLog {
            mount: "/config",
            pattern: "log/log_*.log",
        }),
        ..service("jellyfin")
    },
    Service {
        units: &["vaultwarden.service"],
        logs: &[
            "/var/log/vaultwarden/vaultwarden.log",
            "/var/log/vaultwarden.log",
        ],
        needs_log: true,
        ports: &[80, 443],
        images: &["vaultwarden"],
        volume_log: Some(VolumeLog {
            mount: "/data",
            pattern: "vaultwarden.log",
        }),
        ..service("vaultwarden")
    },
    Service {
        units: &["gitea.service"],
        logs: &["/var/lib/gitea/log/gitea.log", "/var/log/gitea/gitea.log"],
        needs_log: true,
        ports: &[3000],
        images: &["gitea/gitea"],
        volume_log: Some(VolumeLog {
            mount: "/data",
            pattern: "gitea/log/gitea.log",
        }),
        ..service("gitea")
    },
    Service {
        units: &["forgejo.service"],
        logs: &["/var/lib/forgejo/log/forgejo.log"],
        needs_log: true,
        ports: &[3000],
        images: &["forgejo"],
        volume_log: Some(VolumeLog {
            mount: "/data",
            pattern: "gitea/log/gitea.log",
        }),
        ..service("forgejo")
    },
    Service {
        units: &["grafana-server.service"],
        logs: &["/var/log/grafana/grafana.log"],
        ports: &[3000],
        ..service("grafana")
    },
    Service {
        logs: &[],
        needs_log: true,
        ports: &[8123],
        images: &["home-assistant", "homeassistant"],
        volume_log: Some(VolumeLog {
            mount: "/config",
            pattern: "home-assistant.log",
        }),
        ..service("home-assistant")
    },
    Service {
        logs: &["/var/www/nextcloud/data/nextcloud.log"],
        needs_log: true,
        ports: &[80, 443],
        images: &["nextcloud"],
        volume_log: Some(VolumeLog {
            mount: "/var/www/html",
            pattern: "data/nextcloud.log",
        }),
        ..service("nextcloud")
    },
    Service {
        units: &["pveproxy.service", "proxmox-backup-proxy.service"],
        idents: &["pvedaemon", "pveproxy", "proxmox-backup-proxy"],
        ports: &[8006, 8007],
        ..service("proxmox")
    },
    Service {
        units: &["mariadb.service", "mysql.service"],
        logs: &["/var/log/mysql/error.log"],
        needs_log: true,
        ports: &[3306],
        ..service("mysqld-auth")
    },
    Service {
        units: &["vsftpd.service"],
        logs: &["/var/log/vsftpd.log"],
        ports: &[21],
        ..service("vsftpd")
    },
    Service {
        units: &["proftpd.service"],
        logs: &["/var/log/proftpd/proftpd.log"],
        ports: &[21],
        ..service("proftpd")
    },
    Service {
        units: &["asterisk.service"],
        logs: &["/var/log/asterisk/messages", "/var/log/asterisk/security"],
        ports: &[5060, 5061],
        udp: true,
        ..service("asterisk")
    },
    Service {
        units: &["named.service", "bind9.service"],
        idents: &["named"],
        ports: &[53],
        udp: true,
        ..service("named-refused")
    },
    Service {
        units: &["xrdp-sesman.service"],
        logs: &["/var/log/xrdp-sesman.log"],
        ports: &[3389],
        ..service("xrdp")
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_uses_a_built_in_filter() {
        for s in SERVICES {
            assert!(
                crate::filter::Builtin::by_name(s.filter).is_some(),
                "{}: no built-in filter {}",
                s.jail,
                s.filter
            );
        }
    }
}
