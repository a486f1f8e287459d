"""Which of the bundle, the partner's MTA-STS or its DANE decides TLS for a partner domain.

The answer is the one `connectwiz explain --published` gives: the bundle's delivery policy
for mail from the organisation to the domain (``PolicyIndex.delivery``, as explain selects
it), then the relay's own per-MX-host plan (``relay.published.look``). The wizard never
works it out by itself. It needs DNS and HTTPS, so the App runs it in a worker after each
real validation of domains; ``WizardState.decisions`` keeps the answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual.message import Message

from connectwiz.policy.select import MessageContext, PolicyIndex

if TYPE_CHECKING:
    from connectwiz.policy.model import DeliveryDefinition
    from connectwiz.relay.published import PublishedView
    from connectwiz.tui.state import WizardState


@dataclass
class TlsDecided(Message, bubble=False):
    """The decision for ``domain`` is in ``WizardState.decisions``: redraw what shows it."""

    domain: str


def sender(state: WizardState) -> str:
    """Mail from the organisation: the address routes were tested with, else postmaster at
    the first internal domain ('' is the null sender when there is none)."""
    internal = state.model.organisation.internal_domains
    return state.route_email or (f"postmaster@{internal[0]}" if internal else "")


def bundle_definitions(state: WizardState, recipients: Mapping[str, str]
                       ) -> dict[str, DeliveryDefinition]:
    """The delivery definition the bundle gives each domain's recipient (``explain``'s pick;
    directory groups match nobody here, as in explain without a directory)."""
    index = PolicyIndex(state.model)
    at, source = state.clock(), sender(state)
    return {domain: index.delivery(MessageContext(source, None, address, None, at)).definition
            for domain, address in recipients.items()}


async def decide(state: WizardState, recipients: Mapping[str, str]
                 ) -> AsyncIterator[tuple[str, PublishedView]]:
    """Each domain's decision as it comes in (``options.concurrency`` at a time)."""
    from connectwiz.relay.published import look  # DNS, TLS, HTTPS: loaded on first use

    definitions = bundle_definitions(state, recipients)
    gate = asyncio.Semaphore(max(1, state.options.concurrency))

    async def one(domain: str) -> tuple[str, PublishedView]:
        async with gate:
            return domain, await look(domain, definitions[domain], state.options)

    for done in asyncio.as_completed([one(d) for d in definitions]):
        yield await done


def decided_by(view: PublishedView) -> Text:
    """'TLS decided by: …' and the warnings explain gives, for the line under a verdict."""
    names = {"bundle": f"bundle policy ({view.bundle.name})",
             "mta-sts": f"partner's MTA-STS {view.sts_mode}", "dane": "partner's DANE"}
    text = Text("TLS decided by: ", style="bold")
    text.append(", ".join(names.get(who, who) for who in view.decided_by))
    if view.sts_mode == "testing":  # testing never decides: it only has failures recorded
        text.append(" (its MTA-STS testing: failures are recorded)")
    for warning in view.warnings():
        text.append(f"\n⚠ {warning}", style="bold yellow")
    return text
