"""`connectwiz explain`: which delivery and receipt policies apply to a message, and why."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from connectwiz.errors import UserError
from connectwiz.policy.addresses import InvalidAddress, normalize_address
from connectwiz.policy.explain import explain
from connectwiz.policy.model import DeliveryDefinition
from connectwiz.policy.secure import MessageContent
from connectwiz.policy.select import IPAddress, MessageContext, PolicyIndex

if TYPE_CHECKING:  # DNS and TLS modules load only for --published
    from connectwiz.relay.published import PublishedView


def _address(option: str, text: str, null_ok: bool = False) -> str:
    if null_ok and text.strip() in ("", "<>"):
        return ""
    try:
        return normalize_address(text)
    except InvalidAddress as exc:
        raise UserError(f"{option}: {text!r} is not a valid address: {exc.reason}") from None


def _ip(text: str | None) -> IPAddress | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise UserError(f"--ip: {text!r} is not an IPv4 or IPv6 address") from None


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"--at: {text!r} is not an ISO 8601 date/time (e.g. 2026-11-23T09:30:00Z)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at  # naive means UTC


def context_from_args(args: argparse.Namespace) -> MessageContext:
    header = args.header_from
    return MessageContext(
        envelope_from=_address("--from", args.sender, null_ok=True),
        header_from=None if header is None else _address("--header-from", header),
        recipient=_address("--to", args.recipient),
        client_ip=_ip(args.ip),
        at=_at(args.at),
    )


def content_from_args(args: argparse.Namespace) -> MessageContent:
    headers = []
    for text in args.header:
        name, colon, value = text.partition(":")
        if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
            raise UserError(f"--header: {text!r} is not 'Name: value'")
        headers.append((name.strip(), value.strip()))
    subject = args.subject
    return MessageContent(subject=subject, body=args.body,
                          headers=(("Subject", subject), *headers) if subject else tuple(headers))


def _published(args: argparse.Namespace, ctx: MessageContext,
               definition: DeliveryDefinition) -> PublishedView:
    from connectwiz.probe.options import options_from
    from connectwiz.relay.published import look

    options = options_from(nameserver=args.nameserver, smtp_port=args.smtp_port,
                           ca_file=args.ca_file, timeout=args.timeout,
                           https_port=args.https_port, dnssec_resolver=args.dnssec_resolver)
    domain = ctx.recipient.rpartition("@")[2].lower()
    return asyncio.run(look(domain, definition, options))


def run(args: argparse.Namespace) -> int:
    from connectwiz.bundle import Bundle
    from connectwiz.bundle.paths import resolve_bundle_path

    ctx = context_from_args(args)  # bad input is reported before the bundle is read
    content = content_from_args(args)
    model = Bundle.load(resolve_bundle_path(args.bundle)).model
    directory = None
    if model.directory is not None:
        from connectwiz.directory.ldap import DirectoryCache, DirectoryError

        directory = DirectoryCache(model.directory)
        try:
            directory.refresh()
        except DirectoryError as exc:
            print(f"warning: directory not read ({exc}); directory groups and address "
                  f"attributes match nobody below", file=sys.stderr)
    try:
        result = explain(model, ctx, content, directory)
    except ValueError as exc:  # e.g. a policy naming a definition the bundle lacks
        raise UserError(f"{args.bundle or 'bundle'}: {exc}") from None
    if args.published and not PolicyIndex(model).is_internal(ctx.recipient):
        result = replace(result, published=_published(args, ctx, result.delivery.definition))
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        print(result.render_text())
    return 0
