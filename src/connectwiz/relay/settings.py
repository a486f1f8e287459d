"""Tunables of the relay: limits on receipt and the retry schedule of delivery.

Defaults follow Postfix where it has an equivalent (message_size_limit, smtpd_recipient_limit,
minimal/maximal_backoff_time, maximal_queue_lifetime), so an admin's expectations carry over.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RelaySettings:
    hostname: str = "localhost"  # name in the banner, Received: headers and DSNs
    max_message_size: int = 10_240_000  # bytes of DATA
    max_recipients: int = 1000  # RCPT TO per message
    max_connections: int = 100  # concurrent SMTP sessions; more get 421
    idle_timeout: float = 300.0  # seconds a client may stay silent
    # Per-client bounds on receipt (Postfix: smtpd_client_connection_count_limit,
    # smtpd_junk_command_limit, hopcount_limit; the deadline has no Postfix equivalent).
    max_connections_per_client: int = 50  # concurrent sessions from one IP, 421 above
    junk_command_limit: int = 100  # NOOP/RSET/VRFY/HELP/EXPN per session, then 421
    session_deadline: float = 3600.0  # seconds any session may last in all
    max_hops: int = 50  # Received: headers (ours included); 554 5.4.0 at this many
    queue_run_delay: float = 300.0  # seconds between rescans of the queue for strays
    backoff_min: float = 300.0  # first retry after a temporary failure
    backoff_max: float = 4000.0  # retries never wait longer than this
    max_lifetime: float = 5 * 86400.0  # then the message bounces
    delivery_workers: int = 50  # messages delivered at once (--concurrency)
    # Deliveries in flight to one destination (Postfix default_destination_concurrency_limit).
    destination_concurrency: int = 20
    shutdown_grace: float = 30.0  # SIGTERM waits this long for sessions and deliveries
    portal_url: str = ""  # Secure Messaging links start with this; "" = https://<hostname>/secure
    secure_key: str = ""  # key file for held content; "" = $XDG_CONFIG_HOME/connectwiz/secure.key
    # Networks a TLS-RPT https: rua may resolve to although they are loopback or private
    # (--tlsrpt-allow-networks; relay.tlsrpt_post refuses them otherwise).
    tlsrpt_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # How often TLS-RPT counts are written and the end of the UTC day looked for.
    tlsrpt_tick: float = 5.0

    @property
    def secure_portal_url(self) -> str:
        return self.portal_url or f"https://{self.hostname}/secure"

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after ``attempts`` failed ones: doubling, clamped."""
        delay = self.backoff_min * (2 ** max(attempts - 1, 0))
        return min(max(delay, self.backoff_min), self.backoff_max)
