"""Secure Messaging relay tests reuse the relay's fixtures: an in-process relay on an
ephemeral port, the shared lab as next hop (see tests/relay/conftest.py)."""

from __future__ import annotations

from tests.relay.conftest import relays  # noqa: F401 - a fixture, used by name
