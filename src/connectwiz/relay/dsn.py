"""Bounces: RFC 3464 delivery status notifications, sent with the null sender."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid

from connectwiz.policy.secure import REQUEST_HEADER
from connectwiz.relay.queuefile import QueueEntry, Recipient
from connectwiz.relay.secure_content import strip_header


def _status(rcpt: Recipient, expired: bool) -> str:
    """An RFC 3463 status code: the remote one when the reply carried it, else our best."""
    parts = rcpt.detail.split(": ")
    for part in parts:
        words = part.split()
        if len(words) > 1 and words[0][:1] == "5" and words[1][:2] == "5.":
            return words[1]
    if "loops back to myself" in rcpt.detail:
        return "5.4.6"  # routing loop detected
    if "null MX" in rcpt.detail:
        return "5.1.10"  # RFC 7505: the domain accepts no mail
    if "NXDOMAIN" in rcpt.detail:
        return "5.1.2"  # bad destination system
    if expired:
        return "5.4.7"  # delivery time expired
    return "5.0.0"


def build_dsn(entry: QueueEntry, failed: list[Recipient], original: bytes, hostname: str,
              expired: bool) -> bytes:
    """The bounce for ``failed`` recipients of ``entry``, addressed to its sender."""
    human = [
        f"This is the mail relay at {hostname}.",
        "",
        "Your message could not be delivered to the recipients below."
        if not expired else
        "Your message could not be delivered to the recipients below before the relay "
        "gave up retrying.",
        "",
    ]
    for rcpt in failed:
        human.append(f"<{rcpt.address}>: {rcpt.detail or 'delivery failed'}")
    text = MIMEText("\n".join(human) + "\n", "plain", "utf-8")
    text.add_header("Content-Description", "Notification")

    arrival = format_datetime(datetime.fromtimestamp(entry.received_at, UTC))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Connectwiz-Queue-ID"] = entry.id
    per_message["Arrival-Date"] = arrival
    blocks = [per_message]
    for rcpt in failed:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {rcpt.address}"
        block["Action"] = "failed"
        block["Status"] = _status(rcpt, expired)
        block["Diagnostic-Code"] = "smtp; " + " ".join(rcpt.detail.split())
        blocks.append(block)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(blocks)  # RFC 3464: header-style blocks, which email renders as such
    status.add_header("Content-Description", "Delivery report")

    # The sender's request for Secure Messaging is consumed by the relay; it is not handed back.
    original = strip_header(original, REQUEST_HEADER)
    end = original.find(b"\r\n\r\n")
    headers = MIMEBase("text", "rfc822-headers")
    headers.set_payload((original if end < 0 else original[: end + 2]).decode("utf-8", "replace"))
    headers.add_header("Content-Description", "Undelivered message headers")

    report: Message = MIMEMultipart("report", report_type="delivery-status")
    for part in (text, status, headers):
        report.attach(part)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = entry.mail_from
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = format_datetime(datetime.now(UTC))
    report["Message-ID"] = make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

