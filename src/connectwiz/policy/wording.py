"""Secure Messaging's wording: the texts of notifications, code e-mails and the banner, as
templates with a small set of ``{placeholders}`` (docs/secure-messaging.md, "Branding and
wording"). Pure: the relay and the portal render them; the bundle checks them at load.

Only ``{name}`` with a known name is a placeholder; any other brace is text, so an HTML
banner may hold CSS. Values are escaped for HTML wherever the result is HTML (the banner's
HTML copy); plain-text e-mail gets them as they are, minus control characters.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")

DEFAULT_BANNER = (
    "This message was sent securely by {sender} with Secure Messaging. "
    "Keep its content confidential."
)

# Which placeholders each text may use, and which one it must use (else it is useless).
PLACEHOLDERS: dict[str, tuple[frozenset[str], str | None]] = {
    "notification_subject": (frozenset({"organisation", "sender", "recipient"}), None),
    "notification_text": (frozenset({"organisation", "sender", "recipient", "link",
                                     "expires"}), "link"),
    "code_subject": (frozenset({"organisation", "sender"}), None),
    "code_text": (frozenset({"organisation", "sender", "code", "minutes"}), "code"),
    "banner": (frozenset({"organisation", "sender"}), None),
}


@dataclass(frozen=True, slots=True)
class Wording:
    """The organisation's texts and portal colours; the defaults are connectwiz's own."""

    accent_colour: str = "#1f5fbf"  # buttons and links in the portal
    bar_colour: str = "#1d2330"  # the portal's top bar
    notification_subject: str = "Secure message from {sender}"
    notification_text: str = (
        "{sender} sent you a secure message. Read it in the Secure Messaging portal:\n"
        "\n"
        "    {link}\n"
        "\n"
        "This link is personal: do not forward this e-mail.\n"
        "The message can be read until {expires}.")
    code_subject: str = "Your code for the secure message from {sender}"
    code_text: str = (
        "Your one-time code is: {code}\n"
        "\n"
        "Enter it in the Secure Messaging portal within {minutes} minutes.\n"
        "If you did not ask for a code, ignore this e-mail: nobody can read the message\n"
        "without it.")
    banner: str = DEFAULT_BANNER  # for definitions without a banner of their own


def problems(key: str, template: str) -> str | None:
    """Why ``template`` cannot be used for ``key``, in one line; None when it can."""
    allowed, required = PLACEHOLDERS[key]
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - allowed)
    if unknown:
        return (f"unknown placeholder {{{unknown[0]}}}; this text may use "
                + ", ".join(f"{{{n}}}" for n in sorted(allowed)))
    if required and f"{{{required}}}" not in template:
        return f"must contain {{{required}}}"
    return None


def render(template: str, values: Mapping[str, str], for_html: bool = False) -> str:
    """``template`` with its placeholders filled; values escaped when ``for_html``."""
    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            return m.group(0)
        value = _CONTROL.sub(" ", values[m.group(1)])
        return html.escape(value) if for_html else value

    return _PLACEHOLDER.sub(fill, template)
