"""Secure Messaging costs per message: the decision, reading the content, adding the banner.

    .venv/bin/python benchmarks/secure_decision.py [--triggers 50] [--messages 5000]

The model has one secure policy per partner domain (100), ``--triggers`` content triggers
with three conditions each and one bypass. Messages have 3 recipients and a ~20 kB
multipart body (text + HTML). The same decision is then timed with deeper conditions
(a regular expression, a whole-word phrase, a 20-term dictionary) against the plain
``contains`` conditions as baseline, and one RE2 pattern that backtracks catastrophically
in Python's ``re`` over a 2 MB body. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage

from connectwiz.policy.content import Examined, condition_matches
from connectwiz.policy.model import (
    Applies,
    ConditionField,
    ConditionKind,
    Organisation,
    PolicyModel,
    Scope,
    SecureBypass,
    SecureCondition,
    SecurePolicy,
    SecureTrigger,
)
from connectwiz.policy.secure import SecureIndex
from connectwiz.relay.secure_content import add_banner, parse_content

PARTNERS = [f"partner{i}.example" for i in range(100)]
DOMAINS = [*PARTNERS, "other.example"]


def deep(i: int) -> tuple[SecureCondition, ...]:
    return (SecureCondition(ConditionField.SUBJECT, rf"\bproject[- ]{i}\b",
                            kind=ConditionKind.MATCHES),
            SecureCondition(ConditionField.BODY, f"codeword {i} applies", whole_word=True),
            SecureCondition(ConditionField.BODY, "", kind=ConditionKind.DICTIONARY,
                            whole_word=True, threshold=3,
                            terms=tuple(f"term{i}x{t}" for t in range(20))))


def model(triggers: int, conditions: Callable[[int], tuple[SecureCondition, ...]] | None = None
          ) -> PolicyModel:
    return PolicyModel(
        organisation=Organisation(internal_domains=("corp.example",)),
        secure_policies=tuple(
            SecurePolicy(f"to {d}", "External Recipients", to=Scope(Applies.DOMAIN, (d,)))
            for d in PARTNERS),
        secure_triggers=tuple(
            SecureTrigger(f"trigger {i}", "External Recipients", conditions(i) if conditions
                          else (
                SecureCondition(ConditionField.SUBJECT, f"project {i}"),
                SecureCondition(ConditionField.BODY, f"codeword {i} applies"),
                SecureCondition(ConditionField.HEADER, f"level-{i}", "X-Classification"),
            )) for i in range(triggers)),
        secure_bypass=(SecureBypass("auditors", to=Scope(Applies.DOMAIN, ("audit.example",))),),
    )


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@corp.example"
    msg["To"] = "someone@partner1.example"
    msg["Subject"] = f"Weekly report {n}"
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 160)
    msg.set_content(text)
    msg.add_alternative(f"<html><body><p>{text}</p></body></html>", subtype="html")
    return msg.as_bytes(policy=email_policy.SMTP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    rng = random.Random(7)

    start = time.perf_counter()
    index = SecureIndex(model(args.triggers))
    print(f"index build ({len(PARTNERS)} policies, {args.triggers} triggers): "
          f"{(time.perf_counter() - start) * 1000:.1f} ms")

    bodies = [message(n) for n in range(20)]
    start = time.perf_counter()
    contents = [parse_content(b) for b in bodies for _ in range(args.messages // 20)]
    elapsed = time.perf_counter() - start
    print(f"parse_content ({len(bodies[0]) // 1024} kB message): "
          f"{elapsed / len(contents) * 1e6:.0f} us/message")

    at = datetime.now(UTC)
    for label, idx in (("contains", index), ("deep", SecureIndex(model(args.triggers, deep)))):
        start = time.perf_counter()
        applied = 0
        for content in contents:
            rcpts = [f"r{rng.randrange(9)}@{rng.choice(DOMAINS)}"
                     for _ in range(3)]
            applied += idx.decide("alice@corp.example", None, rcpts, None, at, content).applies
        elapsed = time.perf_counter() - start
        print(f"decide, {label} conditions (3 recipients): "
              f"{elapsed / len(contents) * 1e6:.0f} us/message, "
              f"{len(contents) / elapsed:.0f} messages/s ({applied} applied)")

    hostile = SecureCondition(ConditionField.BODY, "(a+)+$", kind=ConditionKind.MATCHES,
                              case_sensitive=True)
    start = time.perf_counter()
    condition_matches(hostile, Examined("", "a" * 2_000_000 + "b", (), ()))
    print(f"(a+)+$ over 2 MB with RE2: {(time.perf_counter() - start) * 1000:.1f} ms")
    for n in (20, 22, 24):
        start = time.perf_counter()
        re.search("(a+)+$", "a" * n + "b")
        print(f"(a+)+$ over {n} bytes with Python re (baseline): "
              f"{(time.perf_counter() - start) * 1000:.1f} ms")

    start = time.perf_counter()
    for body in bodies * 10:
        add_banner(body, "This message was sent securely.")
    elapsed = time.perf_counter() - start
    print(f"add_banner: {elapsed / (len(bodies) * 10) * 1e6:.0f} us/message")


if __name__ == "__main__":
    main()
