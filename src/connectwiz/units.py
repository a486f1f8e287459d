"""systemd units for the relay and the portal, and the files they expect around them.

``connectwiz install-units`` writes these under a prefix (``/`` by default). Layout on the
host: bundle and ``service.toml`` in ``/etc/connectwiz`` (read-only to the services);
spool and secure key under ``/var/lib/connectwiz`` (``StateDirectory``, 0700, owned by the
``connectwiz`` user that ``sysusers.d`` creates). The relay gets exactly one privilege,
``CAP_NET_BIND_SERVICE`` for port 25; both run sandboxed. ``ExecStartPre`` runs
``relay --check``, so spool and key permissions, certificates and the bundle are checked
before every start; ``systemctl reload`` sends SIGHUP (the relay reloads the bundle).
The services log one line per event to stderr, which the journal keeps.
"""

from __future__ import annotations

USER = "connectwiz"
CONFIG_DIR = "/etc/connectwiz"
STATE_DIR = "/var/lib/connectwiz"

# Shared by both services. Each line is something the relay and portal never need:
# no new privileges, no writes outside the state folder, no home folders, devices,
# kernel knobs, namespaces, privileged system calls or foreign architectures.
# MemoryDenyWriteExecute is left off: libffi (ctypes, cffi) may need writable code pages.
_SANDBOX = """\
NoNewPrivileges=yes
PrivateMounts=yes
RemoveIPC=yes
ProcSubset=pid
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
UMask=0077
"""

RELAY = f"""\
[Unit]
Description=connectwiz enforcing SMTP relay
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={USER}
Group={USER}
Environment=CONNECTWIZ_BUNDLE={CONFIG_DIR}/bundle.toml
ExecStartPre=@EXECUTABLE@ relay --check
ExecStart=@EXECUTABLE@ relay
ExecReload=/bin/kill -HUP $MAINPID
# The relay's --shutdown-grace (30 s) plus a margin; what is not delivered stays queued.
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
SyslogIdentifier=connectwiz-relay
StateDirectory=connectwiz
StateDirectoryMode=0700
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
LimitNOFILE=65536
{_SANDBOX}
[Install]
WantedBy=multi-user.target
"""

PORTAL = f"""\
[Unit]
Description=connectwiz Secure Messaging portal
After=network-online.target connectwiz-relay.service
Wants=network-online.target

[Service]
Type=exec
User={USER}
Group={USER}
Environment=CONNECTWIZ_BUNDLE={CONFIG_DIR}/bundle.toml
ExecStart=@EXECUTABLE@ portal
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
SyslogIdentifier=connectwiz-portal
StateDirectory=connectwiz
StateDirectoryMode=0700
# Behind a TLS proxy on loopback it needs no privilege; give it port 443 only if it
# serves HTTPS itself (--tls-cert): AmbientCapabilities=CAP_NET_BIND_SERVICE.
CapabilityBoundingSet=
{_SANDBOX}
[Install]
WantedBy=multi-user.target
"""

SYSUSERS = f"""\
# The user the connectwiz relay and portal run as (systemd-sysusers).
u {USER} - "connectwiz relay and portal" {STATE_DIR}
"""

SERVICE_TOML = f"""\
# connectwiz service options: the keys are the command-line options of
# `connectwiz relay` and `connectwiz portal` (see docs/relay.md, docs/portal.md).
# Options given on the command line override these. Check with: connectwiz relay --check

[relay]
listen = "0.0.0.0:25"
spool = "{STATE_DIR}/spool"
secure_key = "{STATE_DIR}/secure.key"
# hostname = "mail.example.com"
# tls_cert = "/etc/letsencrypt/live/mail.example.com/fullchain.pem"
# tls_key = "/etc/letsencrypt/live/mail.example.com/privkey.pem"
# portal_url = "https://mail.example.com/secure"
# metrics = "127.0.0.1:9325"

[portal]
listen = "127.0.0.1:8080"
spool = "{STATE_DIR}/spool"
secure_key = "{STATE_DIR}/secure.key"
behind_proxy = true
# public_url = "https://mail.example.com/secure"
# metrics = "127.0.0.1:9326"
"""


def files(executable: str) -> dict[str, str]:
    """Path under the prefix -> content."""
    return {
        "etc/systemd/system/connectwiz-relay.service": RELAY.replace("@EXECUTABLE@", executable),
        "etc/systemd/system/connectwiz-portal.service":
            PORTAL.replace("@EXECUTABLE@", executable),
        "etc/sysusers.d/connectwiz.conf": SYSUSERS,
        "etc/connectwiz/service.toml": SERVICE_TOML,
    }
