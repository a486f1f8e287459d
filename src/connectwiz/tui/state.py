"""The wizard's state: one object the App owns and every step reads and edits.

Edits go to the Bundle's in-memory document; nothing reaches the disk until Finish
(``save``). ``loaded`` is the model as it was read, so Finish can say what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from connectwiz.atomic import write_atomic
from connectwiz.bundle import Bundle
from connectwiz.policy.addresses import InvalidAddress, normalize_address
from connectwiz.policy.domains import display_domain
from connectwiz.policy.model import (
    EncryptionMode,
    ExternalDomain,
    InboundRoute,
    LastValidation,
    PolicyModel,
    ValidationStatus,
)
from connectwiz.probe.options import NetworkOptions

if TYPE_CHECKING:
    from connectwiz.probe.results import TargetResult
    from connectwiz.relay.published import PublishedView

Clock = Callable[[], datetime]
RouteKey = tuple[str, int]
SUPPORTED = (ValidationStatus.STRICT, ValidationStatus.RELAXED)
NULL_MX = "null MX"  # in the probe's reason when a domain publishes that it accepts no mail
def utc_now() -> datetime:
    return datetime.now(UTC)


def email_problem(text: str, domains: Collection[str] = ()) -> str | None:
    """Why ``text`` is not a usable test address (at one of ``domains``, when given), or
    None when it is."""
    if not text.strip():
        return "enter an e-mail address"
    try:
        address = normalize_address(text)
    except InvalidAddress as exc:
        return f"{text.strip()!r} is not a usable e-mail address: {exc.reason}"
    if domains and address.rpartition("@")[2] not in domains:
        shown = " or ".join(display_domain(d) for d in domains)
        return f"use an address at {shown}"
    return None


@dataclass(frozen=True, slots=True)
class Changes:
    """What differs between the loaded bundle and the current one."""

    domains_added: tuple[str, ...] = ()
    domains_removed: tuple[str, ...] = ()
    routes_added: tuple[RouteKey, ...] = ()
    routes_removed: tuple[RouteKey, ...] = ()
    modes_changed: tuple[str, ...] = ()  # routes and domains whose encryption mode changed

    @property
    def empty(self) -> bool:
        return not (self.domains_added or self.domains_removed or self.routes_added
                    or self.routes_removed or self.modes_changed)


def too_strict(domain: ExternalDomain, status: ValidationStatus | None) -> bool:
    """Enforced Strict, but its servers only pass Relaxed checks: its mail would bounce."""
    return domain.encryption_mode is EncryptionMode.STRICT and status is ValidationStatus.RELAXED


@dataclass(frozen=True, slots=True)
class Risks:
    """Domains a bundle would enforce TLS with although mail to them would be deferred, then
    bounced: they do not support TLS (or were never shown to), or only pass Relaxed checks
    while Strict is enforced."""

    unsupported: tuple[str, ...] = ()
    no_mail: tuple[str, ...] = ()  # they publish a null MX: they accept no mail at all
    failed: tuple[str, ...] = ()  # the last validation could not reach a verdict
    not_validated: tuple[str, ...] = ()
    too_strict: tuple[str, ...] = ()  # validated Relaxed, enforced Strict

    @property
    def empty(self) -> bool:
        return not (self.unsupported or self.no_mail or self.failed or self.not_validated
                    or self.too_strict)


@dataclass
class WizardState:
    bundle: Bundle
    options: NetworkOptions
    clock: Clock = utc_now
    # Shown on the Start screen (the demo suggests lab domains), drawn from the model as it
    # is now when it depends on it.
    hint: str | Callable[[PolicyModel], str] = ""
    scratch: bool = False  # the bundle is deleted on exit (the demo's): say so, export elsewhere
    loaded: PolicyModel = field(init=False)
    saved_text: str = field(init=False)  # the bundle as last read or written
    route_results: dict[RouteKey, TargetResult] = field(default_factory=dict)
    domain_results: dict[str, TargetResult] = field(default_factory=dict)
    route_email: str = ""
    domain_emails: dict[str, str] = field(default_factory=dict)
    # Who decides TLS per domain (tui.deciding), looked up after this session's validations.
    decisions: dict[str, PublishedView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loaded = self.bundle.model
        self.saved_text = self.bundle.to_toml()

    def hint_text(self) -> str:
        return self.hint if isinstance(self.hint, str) else self.hint(self.model)

    @property
    def model(self) -> PolicyModel:
        return self.bundle.model

    @property
    def path(self) -> Path:
        return Path(self.bundle.path)

    # Inbound routes -------------------------------------------------------------------

    def route(self, key: RouteKey) -> InboundRoute | None:
        return next((r for r in self.model.inbound_routes if (r.host, r.port) == key), None)

    def route_status(self, route: InboundRoute) -> ValidationStatus | None:
        """This session's verdict, else the one stored in the bundle."""
        result = self.route_results.get((route.host, route.port))
        if result is not None:
            return ValidationStatus(result.status)
        return route.last_validation.status if route.last_validation else None

    def routes_blocking(self) -> list[InboundRoute]:
        """Routes that keep the wizard from going on: not validated, or not supporting TLS."""
        return [r for r in self.model.inbound_routes if self.route_status(r) not in SUPPORTED]

    def routes_ready(self) -> bool:
        return bool(self.model.inbound_routes) and not self.routes_blocking()

    def add_route(self, host: str, port: int) -> None:
        self.bundle.add_route(host, port)

    def update_route(self, old: RouteKey, host: str, port: int) -> None:
        self.bundle.update_route(old[0], old[1], host, port)
        self.route_results.pop(old, None)

    def remove_route(self, key: RouteKey) -> None:
        self.bundle.remove_route(*key)
        self.route_results.pop(key, None)

    # External domains -----------------------------------------------------------------

    def domain(self, name: str) -> ExternalDomain | None:
        return next((d for d in self.model.external_domains if d.domain == name), None)

    def domain_status(self, domain: ExternalDomain) -> ValidationStatus | None:
        result = self.domain_results.get(domain.domain)
        if result is not None:
            return ValidationStatus(result.status)
        return domain.last_validation.status if domain.last_validation else None

    def reason(self, domain: ExternalDomain) -> str:
        """The reason of this session's verdict, else of the one stored in the bundle."""
        result = self.domain_results.get(domain.domain)
        if result is not None:
            return result.reason
        return domain.last_validation.reason if domain.last_validation else ""

    def add_domains(self, domains: Iterable[str]) -> None:
        self.bundle.add_domains(list(domains), at=self.clock())

    def remove_domain(self, name: str) -> None:
        self.bundle.remove_domains([name])
        self.domain_results.pop(name, None)
        self.domain_emails.pop(name, None)
        self.decisions.pop(name, None)

    def set_domain_mode(self, name: str, mode: EncryptionMode) -> None:
        self.bundle.set_domain_mode(name, mode)

    def email_for(self, name: str) -> str:
        return self.domain_emails.get(name) or f"postmaster@{name}"

    # Validation results (the worker's progress messages end here) --------------------

    def record_route(self, key: RouteKey, result: TargetResult) -> None:
        """Keep a route's verdict for display and write it (and the learned mode) to the bundle."""
        if self.route(key) is None:  # removed while the probe ran
            return
        status = ValidationStatus(result.status)
        mode = EncryptionMode(status.value) if status in SUPPORTED else None
        self.bundle.record_route_validation(key[0], key[1], self._last(result), mode)
        self.route_results[key] = result

    def record_domain(self, name: str, result: TargetResult) -> None:
        if self.domain(name) is None:
            return
        self.bundle.record_domain_validation(name, self._last(result))
        self.domain_results[name] = result

    def _last(self, result: TargetResult) -> LastValidation:
        return LastValidation(ValidationStatus(result.status), self.clock(), result.reason)

    # Finish ---------------------------------------------------------------------------

    def changes(self) -> Changes:
        before, after = self.loaded, self.model
        old_domains = {d.domain: d for d in before.external_domains}
        new_domains = {d.domain: d for d in after.external_domains}
        old_routes = {(r.host, r.port): r for r in before.inbound_routes}
        new_routes = {(r.host, r.port): r for r in after.inbound_routes}
        modes = [f"{k[0]}:{k[1]}" for k, r in new_routes.items()
                 if k in old_routes and old_routes[k].encryption_mode != r.encryption_mode]
        modes += [d for d, x in new_domains.items()
                  if d in old_domains and old_domains[d].encryption_mode != x.encryption_mode]
        return Changes(
            domains_added=tuple(d for d in new_domains if d not in old_domains),
            domains_removed=tuple(d for d in old_domains if d not in new_domains),
            routes_added=tuple(k for k in new_routes if k not in old_routes),
            routes_removed=tuple(k for k in old_routes if k not in new_routes),
            modes_changed=tuple(modes),
        )

    def risks(self) -> Risks:
        groups: dict[ValidationStatus | None, list[str]] = {}
        strict_only: list[str] = []
        no_mail: list[str] = []
        for domain in self.model.external_domains:
            status = self.domain_status(domain)
            if too_strict(domain, status):
                strict_only.append(domain.domain)
            elif status is ValidationStatus.ERROR and NULL_MX in self.reason(domain):
                no_mail.append(domain.domain)
            elif status not in SUPPORTED:
                groups.setdefault(status, []).append(domain.domain)
        return Risks(
            unsupported=tuple(groups.get(ValidationStatus.UNSUPPORTED, ())),
            no_mail=tuple(no_mail),
            failed=tuple(groups.get(ValidationStatus.ERROR, ())),
            not_validated=tuple(groups.get(None, ())),
            too_strict=tuple(strict_only),
        )

    def unsaved(self) -> bool:
        return self.bundle.to_toml() != self.saved_text

    def save(self) -> None:
        self.bundle.save()
        self.saved_text = self.bundle.to_toml()

    def export(self, path: Path, fmt: str) -> None:
        """Write the bundle as TOML or JSON to ``path``, atomically (as `connectwiz export`)."""
        write_atomic(path.expanduser(), self.bundle.export_text(fmt).encode("utf-8"), 0o644)
