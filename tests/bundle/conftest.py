"""A hand-written bundle with comments, blank lines, inline tables and a hand-written policy."""

from __future__ import annotations

from pathlib import Path

import pytest

HAND_WRITTEN = '''\
# Acme's TLS policy — reviewed by the mail team every quarter.
schema_version = 1

[organisation]
internal_domains = ["acme.example"]   # our only mail domain
authorized_outbound = ["10.0.0.0/8", "2001:db8::/32"]

[organisation.address_groups]
legal = ["counsel@acme.example"]

# The two Exchange front ends.
[[inbound_routes]]
host = "mx1.acme.example"
port = 25
encryption_mode = "strict"

[[external_domains]]
domain = "bank.example"     # our bank: strict only
added = 2026-11-01T09:00:00Z
encryption_mode = "strict"
last_validation = { status = "strict", at = 2026-11-01T09:01:00Z, reason = "TLS 1.3" }

[[delivery_definitions]]
# Hand-written: legal mail never leaves without TLS 1.3.
name = "Legal TLS 1.3"
option = "enforced"
encryption_mode = "strict"
min_tls = "1.3"

[[delivery_definitions]]
name = "Enforced TLS - Strict"
option = "enforced"
encryption_mode = "strict"
min_tls = "1.2"
managed = true

[[delivery_policies]]
narrative = "Legal to anyone"   # hand-written, connectwiz must not touch it
definition = "Legal TLS 1.3"
from = { based_on = "header", applies = "address_group", specifically = ["legal"] }
to = { applies = "everyone" }
override = true

[[delivery_policies]]
narrative = "Enforced TLS to partners"
definition = "Enforced TLS - Strict"
managed = true
from = { based_on = "envelope", applies = "everyone" }

[delivery_policies.to]
applies = "domain"
specifically = [
    "bank.example",
]

[[receipt_policies]]
narrative = "Enforced TLS from partners"
option = "enforced"
managed = true
to = { applies = "internal" }

[receipt_policies.from]
applies = "domain"
specifically = [
    "bank.example",
]
'''


@pytest.fixture
def hand_written(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    return path
