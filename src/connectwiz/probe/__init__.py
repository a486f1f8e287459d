"""Validation engine: DNS (MX), SMTP STARTTLS probe, certificate analysis, batches.

The names below are imported on first use (PEP 562), so importing ``connectwiz.probe.options``
or ``Target`` does not load dnspython and cryptography: the wizard draws its first frame
without them and loads them when the first validation starts.
"""

import importlib
from typing import Any

_HOMES = {
    "validate_targets": "batch",
    "CertificateInfo": "certs", "analyse_certificate": "certs", "match_hostname": "certs",
    "DnsError": "dns", "MxHost": "dns", "resolve_mx": "dns",
    "NetworkOptions": "options", "options_from": "options",
    "HostResult": "results", "RcptReply": "results", "Status": "results", "Target": "results",
    "TargetResult": "results",
    "client_context": "tls",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'connectwiz.probe' has no attribute {name!r}")
    return getattr(importlib.import_module(f"connectwiz.probe.{home}"), name)


__all__ = [
    "CertificateInfo",
    "DnsError",
    "HostResult",
    "MxHost",
    "NetworkOptions",
    "RcptReply",
    "Status",
    "Target",
    "TargetResult",
    "analyse_certificate",
    "client_context",
    "match_hostname",
    "options_from",
    "resolve_mx",
    "validate_targets",
]
