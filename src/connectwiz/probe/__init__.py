"""Validation engine: DNS (MX), SMTP STARTTLS probe, certificate analysis, batches."""

from connectwiz.probe.batch import validate_targets
from connectwiz.probe.certs import CertificateInfo, analyse_certificate, match_hostname
from connectwiz.probe.dns import DnsError, MxHost, resolve_mx
from connectwiz.probe.options import NetworkOptions, options_from
from connectwiz.probe.results import HostResult, RcptReply, Status, Target, TargetResult
from connectwiz.probe.tls import client_context

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
