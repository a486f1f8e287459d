"""The pure explanation: JSON shape and text, built from a model in memory (no files)."""

from __future__ import annotations

import json

from connectwiz.policy.explain import explain
from connectwiz.policy.model import Applies
from tests.policy.select_helpers import INTERNAL, dp, model, msg, rp, scope


def test_default_explanation_json_is_serialisable_and_complete():
    data = explain(model(), msg(ip="2001:db8::1")).to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["message"] == {
        "envelope_from": "alice@example.com", "header_from": None,
        "recipient": "bob@partner.example", "client_ip": "2001:db8::1",
        "at": "2026-06-01T12:00:00+00:00",
    }
    assert data["delivery"]["policy"] is None and data["delivery"]["default"] is True
    assert data["delivery"]["definition"] == {
        "name": "Default (Opportunistic TLS)", "option": "opportunistic",
        "encryption_mode": "relaxed", "min_tls": "1.2", "ssl_mode": "strong",
    }
    assert data["receipt"]["option"] == "opportunistic" and data["receipt"]["candidates"] == []


def test_candidates_in_json_carry_scopes_outcome_and_position():
    m = model(dp("everyone"), dp("partner", to=scope(Applies.DOMAIN, "partner.example")))
    data = explain(m, msg()).to_json()["delivery"]
    assert data["policy"] == {"position": 2, "narrative": "partner"}
    first, second = data["candidates"]
    assert (first["position"], first["outcome"]) == (2, "applies")
    assert first["to"] == {"applies": "domain", "specifically": ["partner.example"],
                           "based_on": "envelope"}
    assert (second["position"], second["outcome"]) == (1, "lost")
    assert "less specific" in second["why"]


def test_text_shows_swapped_match_and_null_sender():
    m = model(receipt=(rp("with partner", from_=INTERNAL,
                          to=scope(Applies.DOMAIN, "partner.example"), bidirectional=True),))
    text = explain(m, msg("", "alice@example.com")).render_text()
    assert "from <> (null sender) to alice@example.com" in text
    assert "Receipt: opportunistic" in text  # the null sender is not in partner.example
    text = explain(m, msg("bob@partner.example", "alice@example.com")).render_text()
    assert "Receipt: enforced" in text and "Bi-Directional" in text
