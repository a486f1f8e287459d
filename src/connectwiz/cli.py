"""Command line: parse arguments, hand them to one command module, map errors to exit codes.

Each subcommand lives in ``connectwiz.commands.<name>`` with ``run(args) -> int`` and is
imported only when used, so ``connectwiz wizard`` does not pay for the relay's imports.
Exit codes: 0 success, 1 negative result, 2 bad usage or bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from connectwiz import __version__
from connectwiz.errors import UserError


class _Parser(argparse.ArgumentParser):
    _intermixing = False

    def error(self, message: str) -> None:  # argparse's default prints usage; keep it one line
        self.exit(2, f"connectwiz: {message} (see {self.prog} --help)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:  # said by the subcommand's parser, so that the hint names its --help
            commands = next((a.choices for a in self._actions
                             if isinstance(a, argparse._SubParsersAction)), {})
            parser = commands.get(getattr(parsed, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # Let options sit between positionals (`domains add --relaxed a.example`); argparse
        # supports that only in parsers without subcommands, so the top level parses as usual.
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _network_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network options (also CONNECTWIZ_NAMESERVER, ... variables)")
    g.add_argument("--nameserver", metavar="HOST[:PORT]", help="DNS server to query")
    g.add_argument("--smtp-port", type=int, metavar="N", help="port for hosts that name none")
    g.add_argument("--ca-file", metavar="PEM", help="extra trusted CA certificates")
    g.add_argument("--timeout", type=float, metavar="S",
                   help="per-step timeout: connect, each reply, the TLS handshake (10)")
    g.add_argument("--greeting-timeout", type=float, metavar="S",
                   help="wait for a server's greeting (30: postscreen and tarpits greet late)")
    g.add_argument("--concurrency", type=int, metavar="N", help="probes in flight (50)")
    g.add_argument("--https-port", type=int, metavar="N",
                   help="port for MTA-STS policy fetches from mta-sts.<domain> (443)")


def _dnssec_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dnssec-resolver", metavar="HOST[:PORT]",
                   help="validating resolver whose AD bit is trusted: enables DANE on delivery "
                        "(also CONNECTWIZ_DNSSEC_RESOLVER; default: no DANE)")


def _bundle_option(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--bundle", metavar="PATH", required=required,
        help="policy bundle (default: $CONNECTWIZ_BUNDLE, else the per-user config path)",
    )


def _config_option(p: argparse.ArgumentParser, section: str) -> None:
    """``section``: the table of service.toml the command reads (relay/config.py)."""
    p.add_argument("--config", metavar="FILE",
                   help="service options in TOML (default: service.toml beside the bundle); "
                        "command-line options override it")
    p.set_defaults(config_section=section)


def _metrics_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="connectwiz", description="Enforced TLS with your mail partners.")
    parser.add_argument("--version", action="version", version=f"connectwiz {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    parser.set_defaults(commands=sub.choices)  # for the config file (relay/config.py)

    p = sub.add_parser("wizard", help="the terminal wizard (default)")
    _bundle_option(p)
    p.add_argument("--spool", metavar="DIR",
                   help="the relay's spool, whose message log Mail flow reads (default: per-user)")
    _network_options(p)
    _dnssec_option(p)  # the wizard says when the partner's DANE decides TLS

    p = sub.add_parser("demo", help="the lab and the wizard wired to it: no set-up needed")
    p.add_argument("--bundle", metavar="PATH", help="keep the demo bundle here (default: temp)")

    p = sub.add_parser("lab", help="run the local test lab until Ctrl-C")
    p.add_argument("--smtp-port", type=int, default=25, metavar="N",
                   help="port the lab's SMTP servers listen on (default 25)")
    p.add_argument("--write-info", metavar="FILE", help="write nameserver, port, CA file as JSON")

    p = sub.add_parser("validate", help="check that domains and routes support TLS")
    p.add_argument("--json", action="store_true", help="JSON array on stdout")
    p.add_argument("--verbose", "-v", action="store_true", help="hosts and certificate details")
    p.add_argument("--email", metavar="ADDR", help="also test RCPT TO for this address")
    p.add_argument("--route", action="append", default=[], metavar="HOST[:PORT]",
                   help="an inbound route (internal server) to validate; repeatable")
    p.add_argument("--ssl-mode", choices=("legacy", "medium", "strong", "very_strong"),
                   help="also check that each host negotiates TLS at this delivery SSL Mode")
    p.add_argument("targets", nargs="*", metavar="DOMAIN")
    _network_options(p)

    for name, what in (("domains", "DOMAIN"), ("routes", "HOST[:PORT]")):
        p = sub.add_parser(name, help=f"list, add or remove {name}")
        p.add_argument("action", nargs="?", default="list", choices=("list", "add", "remove"),
                       help="default: list")
        p.add_argument("items", nargs="*", metavar=what)
        p.add_argument("--json", action="store_true")
        if name == "domains":
            p.add_argument("--relaxed", action="store_true",
                           help="enforce TLS with relaxed certificate checks for these domains")
        _bundle_option(p)

    p = sub.add_parser("org", help="show or set the organisation")
    p.add_argument("action", nargs="?", default="show", choices=("show", "set"),
                   help="default: show")
    p.add_argument("--internal-domain", action="append", metavar="D")
    p.add_argument("--authorized-outbound", action="append", metavar="CIDR")
    p.add_argument("--json", action="store_true")
    _bundle_option(p)

    p = sub.add_parser("policies", help="list, show, add, enable, disable or remove policies "
                                        "and definitions")
    p.add_argument("action", choices=("list", "show", "add", "enable", "disable", "remove"))
    p.add_argument("kind", nargs="?", choices=("delivery", "receipt", "secure", "bypass",
                                               "definition", "secure-definition"))
    p.add_argument("items", nargs="*", metavar="NAME|#N|KEY=VALUE",
                   help="the entry's narrative or name, or #N from list; add: KEY=VALUE "
                        "pairs (values in TOML, e.g. 'to={applies=\"domain\", "
                        "specifically=[\"bank.example\"]}')")
    p.add_argument("--json", action="store_true")
    _bundle_option(p)

    p = sub.add_parser("explain", help="which policies apply to a message, and why")
    _bundle_option(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    p.add_argument("--to", dest="recipient", required=True, metavar="ADDR")
    p.add_argument("--header-from", metavar="ADDR")
    p.add_argument("--ip", metavar="IP", help="the client's source IP")
    p.add_argument("--at", metavar="ISO8601", help="the time to evaluate at (default now)")
    p.add_argument("--subject", default="", metavar="TEXT",
                   help="the message's subject, for Secure Messaging content triggers")
    p.add_argument("--body", default="", metavar="TEXT", help="the message's text, likewise")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a message header (e.g. 'X-Connectwiz-Secure: External Recipients'); "
                        "repeatable")
    p.add_argument("--json", action="store_true")
    p.add_argument("--published", action="store_true",
                   help="look up the recipient domain's MTA-STS (and DANE with "
                        "--dnssec-resolver): which of bundle / MTA-STS / DANE decides TLS")
    _dnssec_option(p)
    _network_options(p)

    p = sub.add_parser("export", help="write the bundle as TOML, JSON or Postfix tables")
    _bundle_option(p)
    p.add_argument("--format", choices=("toml", "json", "postfix"), default="toml")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="default: stdout; for --format postfix a folder (required)")
    p.add_argument("--dane", action="store_true",
                   help="postfix: opportunistic becomes Postfix's dane level "
                        "(smtp_dns_support_level = dnssec; needs a validating resolver)")
    p.add_argument("--mta-sts", nargs="?", const="inet:127.0.0.1:8461", metavar="SOCKETMAP",
                   help="postfix: chain postfix-mta-sts-resolver after the bundle's table "
                        "(default inet:127.0.0.1:8461, the resolver's own default)")

    p = sub.add_parser("relay", help="the enforcing SMTP relay")
    _bundle_option(p)
    p.add_argument("--listen", default="127.0.0.1:2525", metavar="HOST:PORT",
                   help="where to accept SMTP (127.0.0.1:2525; port 0: any free port)")
    p.add_argument("--tls-cert", metavar="PEM",
                   help="certificate for STARTTLS (default: self-signed, made once)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--spool", metavar="DIR", help="queue and message log (default: per-user)")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    _config_option(p, "relay")
    _metrics_option(p)
    p.add_argument("--check", action="store_true",
                   help="check configuration, bundle, certificates and spool, then exit "
                        "without listening")
    p.add_argument("--workers", type=int, metavar="N",
                   help="relay processes sharing the port and the spool (default: one per "
                        "core); the limits below are for all of them together")
    g = p.add_argument_group("relay limits and retries (Postfix-like defaults)")
    g.add_argument("--hostname", help="name in the banner, Received: and bounces")
    g.add_argument("--max-size", type=int, metavar="BYTES", help="message size limit (10240000)")
    g.add_argument("--max-recipients", type=int, metavar="N", help="recipients per message (1000)")
    g.add_argument("--max-connections", type=int, metavar="N", help="concurrent sessions (100)")
    g.add_argument("--idle-timeout", type=float, metavar="S", help="silent client limit (300)")
    g.add_argument("--max-connections-per-client", type=int, metavar="N",
                   help="concurrent sessions from one IP (50; authorised clients exempt)")
    g.add_argument("--junk-command-limit", type=int, metavar="N",
                   help="NOOP/RSET/VRFY/HELP/EXPN per session before 421 (100)")
    g.add_argument("--session-deadline", type=float, metavar="S",
                   help="longest SMTP session, however busy (3600)")
    g.add_argument("--max-hops", type=int, metavar="N",
                   help="Received: headers that mean a mail loop: 554 (50)")
    g.add_argument("--queue-run-delay", type=float, metavar="S",
                   help="rescan the queue for stray messages this often (300)")
    g.add_argument("--destination-concurrency", type=int, metavar="N",
                   help="deliveries in flight to one destination (20)")
    g.add_argument("--backoff-min", type=float, metavar="S", help="first retry delay (300)")
    g.add_argument("--backoff-max", type=float, metavar="S", help="longest retry delay (4000)")
    g.add_argument("--max-lifetime", type=float, metavar="S",
                   help="bounce after retrying this long (432000 = 5 days)")
    g.add_argument("--shutdown-grace", type=float, metavar="S",
                   help="SIGTERM waits this long for sessions and deliveries (30)")
    g.add_argument("--portal-url", metavar="URL",
                   help="Secure Messaging portal links start with this "
                        "(default https://<hostname>/secure)")
    g.add_argument("--secure-key", metavar="FILE",
                   help="key encrypting held Secure Messaging content, kept outside the spool "
                        "(default $XDG_CONFIG_HOME/connectwiz/secure.key, made 0600 on first use)")
    g.add_argument("--tlsrpt-allow-networks", metavar="CIDR[,CIDR...]",
                   help="networks a TLS-RPT https: report address may resolve to although "
                        "loopback or private (refused by default; a lab: 127.0.0.0/8)")
    _dnssec_option(p)
    _network_options(p)

    p = sub.add_parser("queue", help="list, show, flush, hold, release or delete queued mail")
    p.add_argument("action", choices=("list", "show", "flush", "hold", "release", "delete"))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--domain", metavar="D", help="only messages (recipients) at this domain")
    p.add_argument("--deferred", action="store_true", help="list: deferred messages only")
    p.add_argument("--headers", action="store_true", help="show: the message's headers too")
    p.add_argument("--silent", action="store_true", help="delete: send the sender no bounce")
    p.add_argument("--json", action="store_true")
    p.add_argument("--spool", metavar="DIR", help="the relay's spool (default: per-user)")
    p.add_argument("--hostname", help="name in bounces made while the relay is stopped")
    _bundle_option(p)
    _config_option(p, "relay")

    p = sub.add_parser("install-units", help="write systemd units for the relay and the portal")
    p.add_argument("--prefix", default="/", metavar="DIR",
                   help="root to install under (default /: /etc/systemd/system, ...)")
    p.add_argument("--executable", metavar="PATH",
                   help="the connectwiz program the units start (default: this one)")

    p = sub.add_parser("log", help="receipt/delivery view of relayed messages")
    p.add_argument("--spool", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.add_argument("message_id", nargs="?", metavar="MESSAGE-ID")

    p = sub.add_parser("tlsrpt", help="TLS reports (RFC 8460) the relay sent or will send")
    p.add_argument("--spool", metavar="DIR", help="the relay's spool (default: per-user)")
    p.add_argument("--day", metavar="YYYY-MM-DD", help="the UTC day (default: yesterday)")
    p.add_argument("--domain", metavar="D", help="only the report for this policy domain")

    p = sub.add_parser("secure", help="messages held for the Secure Messaging portal")
    p.add_argument("action", choices=("list", "show", "extend", "revoke", "unlock"))
    p.add_argument("message_id", nargs="?", metavar="ID")
    p.add_argument("--days", type=int, metavar="N", help="extend: days to add to the expiry")
    p.add_argument("--spool", metavar="DIR", help="the relay's spool (default: per-user)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("portal", help="the Secure Messaging portal (web) for external recipients")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to serve HTTP(S) (127.0.0.1:8080; port 0: any free port)")
    p.add_argument("--spool", metavar="DIR", help="the relay's spool (default: per-user)")
    p.add_argument("--public-url", metavar="URL",
                   help="the address recipients open: the same as the relay's --portal-url "
                        "(default https://<hostname>/secure)")
    p.add_argument("--relay", default="127.0.0.1:2525", metavar="HOST:PORT",
                   help="the relay that sends codes, read receipts and replies (127.0.0.1:2525)")
    p.add_argument("--secure-key", metavar="FILE",
                   help="the relay's key for held content (default "
                        "$XDG_CONFIG_HOME/connectwiz/secure.key)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--hostname", help="name in Message-IDs and the HELO to the relay")
    p.add_argument("--behind-proxy", action="store_true",
                   help="take the client IP (rate limits) from X-Forwarded-For's last hop")
    p.add_argument("--insecure-cookies", action="store_true",
                   help="cookies without Secure, for tests on http://127.0.0.1 only")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    _bundle_option(p)
    _config_option(p, "portal")
    _metrics_option(p)
    return parser


def parse(args_list: list[str]) -> argparse.Namespace:
    """Arguments, with the service config file's values as defaults for relay, portal and
    queue (a UserError when the file is wrong)."""
    parser = build_parser()
    args = parser.parse_args(args_list)
    if getattr(args, "config_section", None) is None:
        return args
    from connectwiz.relay.config import apply_config  # only for the commands that use it

    return apply_config(parser, args.commands, args_list, args)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The wizard is the default subcommand: `connectwiz --bundle B` means `connectwiz wizard ...`.
    if not args_list or (args_list[0].startswith("-")
                         and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "wizard")
    try:
        args = parse(args_list)
    except UserError as exc:
        print(f"connectwiz: {exc}", file=sys.stderr)
        return 2
    try:
        name = f"connectwiz.commands.{args.command.replace('-', '_')}"
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        print(f"connectwiz: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(module.run(args))
    except UserError as exc:
        print(f"connectwiz: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `connectwiz log | head`
        return 0
