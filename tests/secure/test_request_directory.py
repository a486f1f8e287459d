"""Definition access by a directory group: a real OpenLDAP (tests/slapd.py), read into the
cache the relay uses; a group the bundle does not define is the directory's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectwiz.directory.ldap import DirectoryCache
from connectwiz.policy.secure import MessageContent, SecureIndex
from tests.policy import test_directory
from tests.policy.test_directory import ADMIN, SUFFIX, load

pytestmark = [pytest.mark.network, pytest.mark.peer]
slapd = test_directory.slapd  # the directory with Finance Team (ann) and Managers (cat)

BUNDLE = test_directory.BUNDLE.replace("schema_version = 1", "schema_version = 2") + """
[[secure_definitions]]
name = "Finance only"
allow_reply = false
may_request = {{ groups = ["Finance Team"] }}
"""


def test_directory_group_may_request_and_others_fall_back(tmp_path: Path, slapd) -> None:
    model = load(tmp_path, BUNDLE.format(url=slapd.url, suffix=SUFFIX, admin=ADMIN)).model
    directory = DirectoryCache(model.directory)
    directory.refresh()
    index = SecureIndex(model, directory)

    def chosen(sender: str) -> str:
        d = index.decide(sender, None, ["teller@bank.example"], None, datetime.now(UTC),
                         MessageContent("[secure:Finance only] figures"))
        assert d.definition is not None
        return d.definition.name

    assert chosen("ann@corp.example") == "Finance only"  # in the directory's group
    assert chosen("cat@corp.example") == "External Recipients"  # not in it: refused
