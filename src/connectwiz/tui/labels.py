"""How verdicts read on screen. Ticks and crosses carry the meaning when NO_COLOR is set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from connectwiz.policy.domains import display_domain
from connectwiz.policy.model import EncryptionMode, LastValidation, ValidationStatus

if TYPE_CHECKING:
    from connectwiz.probe.results import TargetResult

GOOD = "bold green"
BAD = "bold red"
MUTED = "dim"

_ROUTE = {
    ValidationStatus.STRICT: "✔ Strict - Trusted Enforced",
    ValidationStatus.RELAXED: "✔ Relaxed",
    ValidationStatus.UNSUPPORTED: "✖ TLS Not Supported",
    ValidationStatus.ERROR: "✖ Could not validate",
}
_DOMAIN = {
    ValidationStatus.STRICT: "✔ Supports TLS (Strict)",
    ValidationStatus.RELAXED: "✔ Supports TLS (Relaxed)",
    ValidationStatus.UNSUPPORTED: "✖ TLS Not Supported",
    ValidationStatus.ERROR: "✖ Could not validate",
}
TESTING = Text("… testing", style="italic")
NOT_VALIDATED = Text("not validated", style=MUTED)


def _verdict(labels: dict[ValidationStatus, str], status: ValidationStatus | None,
             reason: str) -> Text:
    if status is None:
        return NOT_VALIDATED.copy()
    good = status in (ValidationStatus.STRICT, ValidationStatus.RELAXED)
    text = Text(labels[status], style=GOOD if good else BAD)
    if reason and not good:
        text.append(f": {reason}", style="red")
    elif reason and status is ValidationStatus.RELAXED:  # say which strict check failed
        text.append(f" ({reason})")
    return text


def route_verdict(status: ValidationStatus | None, reason: str = "") -> Text:
    return _verdict(_ROUTE, status, reason)


def domain_verdict(status: ValidationStatus | None, reason: str = "") -> Text:
    return _verdict(_DOMAIN, status, reason)


def mode_label(mode: EncryptionMode | None) -> str:
    if mode is None:
        return "—"
    return "Strict" if mode is EncryptionMode.STRICT else "Relaxed"


def shown_domain(domain: str) -> str:
    """display_domain, skipping the IDNA decoder for plain ASCII names (big lists)."""
    return display_domain(domain) if "xn--" in domain else domain


def shown_names(names: tuple[str, ...], limit: int = 8) -> str:
    """The first ``limit`` names as shown on screen (U-labels), then how many more."""
    shown = ", ".join(shown_domain(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" … and {more} more" if more > 0 else "")


def when(last: LastValidation | None) -> str:
    return last.at.strftime("%Y-%m-%d %H:%M") if last else ""


def result_details(result: TargetResult) -> str:
    """The More section: every host tried, what TLS it spoke, its certificate, its replies."""
    from connectwiz.probe.published import publication_lines  # not needed for the first frame

    lines: list[str] = []
    if not result.hosts:
        lines.append(f"No mail host to try: {result.reason}")
    for host in result.hosts:
        where = f"{host.host} [{host.address}]:{host.port}" if host.address else host.host
        pref = f" (MX {host.preference})" if host.preference is not None else ""
        lines.append(f"{where}{pref}: {host.status}" + (f" — {host.reason}" if host.reason else ""))
        if host.address is not None:
            lines.append(f"  STARTTLS offered: {'yes' if host.starttls else 'no'}")
        if host.tls_version:
            lines.append(f"  TLS: {host.tls_version} {host.cipher or ''}".rstrip())
        cert = host.certificate
        if cert is not None:
            lines.append(f"  Certificate: {cert.subject}")
            lines.append(f"    issuer: {cert.issuer}")
            lines.append(f"    names: {', '.join(cert.names) or '(none)'}")
            lines.append(f"    valid: {cert.not_before:%Y-%m-%d} to {cert.not_after:%Y-%m-%d}")
            checks = [
                "trusted" if cert.trusted else "not trusted",
                "self-signed" if cert.self_signed else "",
                "name matches" if cert.hostname_match else "name does not match",
                "expired" if cert.expired else "",
            ]
            lines.append(f"    checks: {', '.join(c for c in checks if c)}")
        if host.rcpt is not None:
            lines.append(f"  RCPT TO reply: {host.rcpt.code} {host.rcpt.message}")
    if result.mta_sts is not None and result.mta_sts.warning:
        lines.append(f"WARNING: {result.mta_sts.warning}")
    lines += publication_lines(result)  # MTA-STS, TLS-RPT, DANE
    return "\n".join(lines)


def pretty_path(path: Path) -> str:
    """Relative to the working directory when under it, else with ~ for the home folder."""
    path = path.absolute()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)

