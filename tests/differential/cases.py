"""The differential corpus as a table: every case, and what each engine must do with it.

One verdict per case (the lab's ``expected``: what the relay enforces) fixes the outcome of
every engine through ``BY_VERDICT``; a case lists an engine in ``intended`` only where that
engine differs on purpose, and docs/validate.md ("Engines compared") says why. The same
table is rendered into docs/validate.md and checked against it (test_docs_table.py), so the
document cannot drift from what the suite enforces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectwiz.lab.zones import CORPUS, CORPUS_ROUTES, DOMAINS, LabDomain

ENGINES = ("validate", "relay strict", "relay relaxed", "posttls-finger", "Postfix strict",
           "Postfix relaxed")
PEER_ENGINES = ("posttls-finger", "Postfix strict", "Postfix relaxed")  # need Postfix

DELIVERED, DEFERRED = "delivered", "deferred"
VERIFIED, NOT_VERIFIED, NO_TLS = "Verified", "not verified", "no TLS"  # posttls-finger

# validate's verdict -> what each engine does with the case (ENGINES order).
BY_VERDICT: dict[str, tuple[str, ...]] = {
    "strict": ("strict", DELIVERED, DELIVERED, VERIFIED, DELIVERED, DELIVERED),
    "relaxed": ("relaxed", DEFERRED, DELIVERED, NOT_VERIFIED, DEFERRED, DELIVERED),
    "unsupported": ("unsupported", DEFERRED, DEFERRED, NO_TLS, DEFERRED, DEFERRED),
    "error": ("error", DEFERRED, DEFERRED, NO_TLS, DEFERRED, DEFERRED),
}


@dataclass(frozen=True)
class Case:
    lab: LabDomain
    route: bool = False  # an inbound route (validated with --route, delivered as internal mail)
    intended: dict[str, str] = field(default_factory=dict)  # engine -> its outcome, on purpose

    @property
    def name(self) -> str:
        return self.lab.name

    @property
    def verdict(self) -> str:
        return self.lab.expected

    def expected(self) -> dict[str, str]:
        return {**dict(zip(ENGINES, BY_VERDICT[self.verdict], strict=True)), **self.intended}


# The demo lab's domains that are also corpus shapes (self-signed, expired, wrong name, no
# STARTTLS, TLS 1.0 only, 454, CNAME'd MX, three MX of mixed strength, a 421 greeting,
# nothing listening).
_FROM_DEMO = ("trusted.example", "selfsigned.example", "expired.example", "wrongname.example",
              "nostarttls.example", "tls10.example", "starttls454.example", "cname-mx.example",
              "mixed.example", "greeting421.example", "refused.example")
_DEMO = {d.name: d for d in DOMAINS}

# Where an engine differs on purpose; docs/validate.md gives each reason (checked).
INTENDED: dict[str, dict[str, str]] = {
    # Postfix verifies at OpenSSL security level 1 (80 bits: RSA-1024 passes), connectwiz at
    # the system default (level 2 on Debian); no main.cf setting raises Postfix's level.
    "rsa1024.example": {"posttls-finger": VERIFIED, "Postfix strict": DELIVERED},
}

# What validate's reason (or a warning) must say: the real cause, not a neighbouring one.
CAUSE: dict[str, str] = {
    "selfsigned.example": "self-signed",
    "expired.example": "expired on",
    "wrongname.example": "name mismatch: certificate is for not-this-host.example",
    "nostarttls.example": "STARTTLS not offered",
    "tls10.example": "only offers TLSv1.0",
    "starttls454.example": "454",
    "greeting421.example": "421",
    "refused.example": "connection refused",
    "mixed.example": "mx3.mixed.example is weaker (unsupported",
    "nointermediate.example": "intermediate CA,O=connectwiz lab): neither in the trust store "
                              "nor sent by the server",
    "notyetvalid.example": "not valid before",
    "sha1.example": "SHA1",
    "clientauth.example": "purpose",
    "rsa1024.example": "RSA 1024 bits",
    "sni.example": "no SNI",
    "hosted.example": "valid for mx.hoster.example",
    "tenmx.example": "mx01.tenmx.example is not reachable",
    "127.0.3.22": "valid for 127.0.3.22",
}

CASES: tuple[Case, ...] = (
    *(Case(_DEMO[name]) for name in _FROM_DEMO),
    *(Case(d, intended=INTENDED.get(d.name, {})) for d in CORPUS),
    *(Case(r, route=True) for r in CORPUS_ROUTES),
)

CASE_NAMES = frozenset(c.name for c in CASES)


def docs_row(case: Case) -> str:
    expected = case.expected()
    cells = [f"`{case.name}`" + (" (route)" if case.route else ""), case.lab.reason]
    cells += [expected[e] + (" ¹" if e in case.intended else "") for e in ENGINES]
    return "| " + " | ".join(cells) + " |"


def docs_table() -> str:
    """The table docs/validate.md must contain, line for line."""
    head = "| case | shape | " + " | ".join(ENGINES) + " |"
    rule = "| " + " | ".join("---" for _ in range(len(ENGINES) + 2)) + " |"
    return "\n".join([head, rule, *(docs_row(c) for c in CASES)])


if __name__ == "__main__":  # print the table to paste into docs/validate.md
    print(docs_table())
