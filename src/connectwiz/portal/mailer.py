"""Mail the portal sends, all of it through the relay by SMTP (the relay delivers it like any
other mail, under the Secure Delivery policy of the recipient's domain):

- the one-time code, to the recipient (or to a sender signing in to their own messages),
  from the null sender (a bounce never returns it);
- the read receipt, to the sender, from the null sender;
- replies, with the original sender as envelope sender (an internal address, so the relay
  applies Secure Messaging) and the definition requested with the client header, so every
  external addressee gets the reply held in the portal (docs/portal.md says why).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

import aiosmtplib

from connectwiz.policy.secure import REQUEST_HEADER
from connectwiz.policy.wording import Wording, render

# Everything Python's str.splitlines() breaks on (CR, LF, VT, FF, FS-RS, NEL, U+2028/9), the
# other C0/C1 controls and DEL: a decoded subject may hold any of them, and a header value
# with a line break either raises in EmailMessage or, worse, starts a new header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_MSG_ID = re.compile(r"<[^<>\s]{1,250}>")


def clean(value: str, limit: int = 400) -> str:
    """``value`` fit for one header line: controls become spaces, runs of space fold."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


class RelayUnavailable(Exception):
    """The relay refused or could not be reached; the page asks to try again."""


async def submit(relay: tuple[str, int], sender: str, recipients: list[str], msg: EmailMessage,
                 hostname: str, timeout: float = 30.0) -> None:
    data = msg.as_bytes(policy=email_policy.SMTP)
    try:
        # Plain SMTP: the relay runs on the same host or a trusted network (docs/portal.md).
        client = aiosmtplib.SMTP(hostname=relay[0], port=relay[1], start_tls=False,
                                 use_tls=False, timeout=timeout, local_hostname=hostname)
        async with client:  # not aiosmtplib.send: it refuses the null sender
            errors, _ = await client.sendmail(sender, recipients, data)
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise RelayUnavailable(type(exc).__name__) from None
    if errors:  # some recipients refused: the page says it did not work
        raise RelayUnavailable(f"{len(errors)} recipient(s) refused")


def _base(from_: str, to: str, subject: str, hostname: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = clean(from_)
    msg["To"] = clean(to, 10_000)
    msg["Subject"] = clean(subject)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=hostname)
    return msg


def code_mail(sender: str, recipient: str, code: str, minutes: int, hostname: str,
              organisation: str = "", wording: Wording | None = None) -> EmailMessage:
    """The one-time code for a recipient, in the bundle's wording (``code_subject``,
    ``code_text``)."""
    wording = wording or Wording()
    values = {"sender": sender, "code": code, "minutes": str(minutes),
              "organisation": organisation}
    service = f"{organisation} Secure Messaging" if organisation else "Secure Messaging"
    msg = _base(formataddr((service, sender)), recipient,
                render(wording.code_subject, values), hostname)
    msg["Auto-Submitted"] = "auto-generated"
    text = render(wording.code_text, values)
    msg.set_content("\r\n".join(text.splitlines()) + "\r\n")
    return msg


def sign_in_code_mail(address: str, code: str, minutes: int, hostname: str,
                      organisation: str = "") -> EmailMessage:
    """The code a sender signs in with to see their own secure messages."""
    service = f"{organisation} Secure Messaging" if organisation else "Secure Messaging"
    msg = _base(formataddr((service, address)), address,
                "Your code to see your secure messages", hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"Your one-time code is: {code}\r\n\r\n"
        f"Enter it in the Secure Messaging portal within {minutes} minutes to see the\r\n"
        "secure messages you sent.\r\n"
        "If you did not ask for a code, ignore this e-mail.\r\n")
    return msg


def receipt_mail(sender: str, reader: str, subject: str, held_id: str, when: str,
                 hostname: str, overview: str = "") -> EmailMessage:
    """``overview``: the sender's own page in the portal, where they can extend or
    withdraw the message (docs/portal.md, "What a sender sees")."""
    msg = _base(f"Secure Messaging <{sender}>", sender, f"Read: {subject}", hostname)
    msg["Auto-Submitted"] = "auto-replied"
    see = (f"\r\nSee who has read your secure messages, extend or withdraw them:\r\n"
           f"    {overview}\r\n") if overview else ""
    msg.set_content(
        f"{reader} opened your secure message in the portal at {when}.\r\n"
        f"Subject: {clean(subject)}\r\nHeld message: {held_id}\r\n{see}")
    return msg


def reply_mail(author: str, to: list[str], cc: list[str], subject: str, text: str,
               in_reply_to: str, definition: str, hostname: str) -> EmailMessage:
    msg = _base(author, ", ".join(to), subject, hostname)
    if cc:
        msg["Cc"] = clean(", ".join(cc), 10_000)
    msg["Reply-To"] = clean(author)
    parent = _MSG_ID.search(clean(in_reply_to, 1000))  # a Message-ID is one <token>, no more
    if parent:
        msg["In-Reply-To"] = msg["References"] = parent.group(0)
    msg[REQUEST_HEADER] = clean(definition)
    msg.set_content(text.replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n")
    return msg
