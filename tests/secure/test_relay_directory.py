"""Directory groups through the real relay and a real slapd: a Secure Messaging policy for
a directory group holds its members' mail, and the relay's background refresh picks up a
membership change without a reload."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from connectwiz.policy.model import Applies, DirectorySettings, Scope, SecurePolicy
from tests.relay.conftest import make_model, send, token
from tests.secure.test_relay import SETTINGS, events, message
from tests.slapd import ADMIN, PASSWORD, SUFFIX, Slapd, running_slapd

pytestmark = [pytest.mark.network, pytest.mark.peer]

PEOPLE = f"""\
dn: ou=People,{SUFFIX}
objectClass: organizationalUnit
ou: People

dn: uid=ann,ou=People,{SUFFIX}
objectClass: inetOrgPerson
uid: ann
cn: Ann
sn: A
mail: ann@corp.example

dn: uid=bob,ou=People,{SUFFIX}
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
mail: bob@corp.example

dn: cn=Finance Team,{SUFFIX}
objectClass: groupOfNames
cn: Finance Team
member: uid=ann,ou=People,{SUFFIX}
"""


@pytest.fixture
def slapd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Slapd]:
    monkeypatch.setenv("CONNECTWIZ_TEST_LDAP_PASSWORD", PASSWORD)
    with running_slapd(tmp_path / "slapd") as server:
        server.add(PEOPLE)
        yield server


async def test_directory_group_policy_holds_and_background_refresh_applies(
        lab, relays, slapd: Slapd) -> None:
    directory = DirectorySettings(slapd.url, SUFFIX, bind_dn=ADMIN,
                                  password_env="CONNECTWIZ_TEST_LDAP_PASSWORD",
                                  refresh_seconds=1)  # below the bundle's minimum: a test
    model = replace(make_model(lab), directory=directory, secure_policies=(SecurePolicy(
        "finance is secure", "External Recipients",
        from_=Scope(Applies.ADDRESS_GROUP, ("Finance Team",)), to=Scope(Applies.EXTERNAL)),))
    r = await relays(model, SETTINGS)
    tag = token()
    teller = f"teller-{tag}@trusted.example"

    held = await send(r.port, "ann@corp.example", [teller], message(tag))
    rec = await r.wait_status(held, "held")
    reason = events(rec, "secure")[0]["reason"]
    assert "<ann@corp.example> is in directory group 'Finance Team'" in reason

    plain = await send(r.port, "bob@corp.example", [teller], message(tag + "b"))
    rec = await r.wait_status(plain, "delivered")
    assert not events(rec, "held")

    slapd.modify(f"dn: cn=Finance Team,{SUFFIX}\nchangetype: modify\n"
                 f"add: member\nmember: uid=bob,ou=People,{SUFFIX}\n")
    deadline = time.monotonic() + 30
    cache = r.relay._directory
    assert cache is not None
    while "bob@corp.example" not in cache.snapshot.members("Finance Team"):
        assert time.monotonic() < deadline, "the relay did not refresh the directory"
        await asyncio.sleep(0.05)
    held = await send(r.port, "bob@corp.example", [teller], message(tag + "c"))
    await r.wait_status(held, "held")


async def test_unreadable_directory_is_logged_and_its_groups_match_nobody(
        lab, relays, event_log) -> None:
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        url = f"ldap://127.0.0.1:{s.getsockname()[1]}"
    model = replace(make_model(lab), directory=DirectorySettings(url, SUFFIX),
                    secure_policies=(SecurePolicy(
                        "finance is secure", "External Recipients",
                        from_=Scope(Applies.ADDRESS_GROUP, ("Finance Team",))),))
    r = await relays(model, SETTINGS)
    [failed] = [e for e in event_log.events() if e.get("event") == "directory-failed"]
    assert url in failed["reason"] and "match nobody" in failed["note"]
    tag = token()
    msg_id = await send(r.port, "ann@corp.example", [f"teller-{tag}@trusted.example"],
                        message(tag))
    rec = await r.wait_status(msg_id, "delivered")
    assert not events(rec, "held")
