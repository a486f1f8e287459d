"""Schema v1 and v2 of the bundle: plain TOML data (from tomllib or tomlkit) to a validated
PolicyModel (``bundle.data`` is the other direction). v2 adds the Secure Messaging sections
(``bundle.secure_schema``); a bundle without them is written as v1, so older connectwiz
versions keep reading it. The keys are in ``bundle.keys``, the reading of values in
``bundle.reader``.

Every problem is reported as a BundleError naming the file, line, key path and what is wrong;
the first problem found stops validation. Stored values are normalised (domains in A-label
form, addresses lower case, networks in canonical form).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectwiz.bundle.keys import (
    DEFINITION_KEYS,
    DELIVERY_KEYS,
    DIRECTORY_DEFAULTS,
    DIRECTORY_KEYS,
    DOMAIN_KEYS,
    FROM_KEYS,
    LATEST_SCHEMA_VERSION,
    ORGANISATION_KEYS,
    RECEIPT_KEYS,
    ROUTE_KEYS,
    SCHEMA_VERSION,
    SECURE_KEYS,
    SECURE_SCHEMA_VERSION,
    TLS_VERSIONS,
    TO_KEYS,
    TOP_KEYS,
    VALIDATION_KEYS,
)
from connectwiz.bundle.locate import KeyPath
from connectwiz.bundle.reader import check_port, kind_of, normalize_host, suggest
from connectwiz.bundle.secure_schema import SecureSections
from connectwiz.directory.snapshot import attribute_pair
from connectwiz.policy.model import (
    Applies,
    BasedOn,
    ClientCertificatePin,
    DeliveryDefinition,
    DeliveryOption,
    DeliveryPolicy,
    DirectorySettings,
    EncryptionMode,
    ExternalDomain,
    InboundRoute,
    LastValidation,
    Organisation,
    PolicyModel,
    ReceiptOption,
    ReceiptPolicy,
    Scope,
    SslMode,
    ValidationStatus,
    Validity,
)
from connectwiz.policy.sslmode import LEVELS, TLS_ORDER


class _Validator(SecureSections):
    def __init__(self, source: str, text: Callable[[], str]) -> None:
        super().__init__(source, text)
        self.groups: dict[str, tuple[str, ...]] = {}
        self.directory: DirectorySettings | None = None

    def validation(self, t: dict[str, Any], path: KeyPath) -> LastValidation | None:
        if "last_validation" not in t:
            return None
        p = (*path, "last_validation")
        v = self.table(t["last_validation"], p, VALIDATION_KEYS, ("status", "at"))
        status = self.choice(v, "status", p, ValidationStatus, ValidationStatus.ERROR)
        at = self.when(v, "at", p)
        assert at is not None  # required above
        return LastValidation(status, at, self.text(v, "reason", p))

    # Sections ---------------------------------------------------------------------------

    def organisation(self, data: dict[str, Any]) -> Organisation:
        p: KeyPath = ("organisation",)
        t = self.table(data.get("organisation", {}), p, ORGANISATION_KEYS)
        groups_path = (*p, "address_groups")
        raw_groups = t.get("address_groups", {})
        if not isinstance(raw_groups, dict):
            self.fail(groups_path,
                      f"must be a table of name = [addresses], not {kind_of(raw_groups)}")
        groups: dict[str, tuple[str, ...]] = {}
        for name in raw_groups:
            members = self.strings(raw_groups, name, groups_path)
            addrs = [self.address(a, (*groups_path, name, i)) for i, a in enumerate(members)]
            self.unique(addrs, (*groups_path, name))
            groups[name] = tuple(addrs)
        self.groups = groups
        name = " ".join(self.typed(t, "name", p, str, "").split())  # one line on the page
        if len(name) > 100:
            self.fail((*p, "name"), "must be at most 100 characters (it heads every portal page)")
        return Organisation(
            internal_domains=self.domains(t, "internal_domains", p),
            authorized_outbound=self.networks(t, "authorized_outbound", p),
            address_groups=groups,
            name=name,
            logo=self.typed(t, "logo", p, str, "").strip(),
        )

    # Directory (directory/ldap.py reads it) -----------------------------------------------

    def directory_settings(self, data: dict[str, Any]) -> DirectorySettings | None:
        if "directory" not in data:
            return None
        p: KeyPath = ("directory",)
        t = self.table(data["directory"], p, DIRECTORY_KEYS, ("url", "base_dn"))
        url = self.typed(t, "url", p, str, "").strip()
        if not url.lower().startswith(("ldap://", "ldaps://")):
            self.fail((*p, "url"), "must start with ldap:// or ldaps://", url)
        text = {k: self.typed(t, k, p, str, "").strip()
                for k in DIRECTORY_KEYS if k in t and k not in
                ("url", "attributes", "refresh_seconds", "timeout_seconds")}
        for key in ("base_dn", "mail_attribute", "group_name_attribute", "user_filter",
                    "group_filter"):
            if key in text and not text[key]:
                self.fail((*p, key), "must not be empty")
        for key in ("user_filter", "group_filter"):
            if key in text and not (text[key].startswith("(") and text[key].endswith(")")):
                self.fail((*p, key), "must be an LDAP filter in parentheses, e.g. (mail=*)",
                          text[key])
        attributes = [a.strip() for a in self.strings(t, "attributes", p)]
        for i, name in enumerate(attributes):
            if not name or not name.replace("-", "").isalnum():
                self.fail((*p, "attributes", i), f"{name!r} is not an LDAP attribute name")
        self.unique([a.lower() for a in attributes], (*p, "attributes"))
        numbers = {}
        for key, low in (("refresh_seconds", 10), ("timeout_seconds", 1)):
            numbers[key] = self.typed(t, key, p, int, getattr(DIRECTORY_DEFAULTS, key))
            if numbers[key] < low:
                self.fail((*p, key), f"must be at least {low}", numbers[key])
        return DirectorySettings(url=url, attributes=tuple(attributes), **text, **numbers)

    def attribute(self, text: str, p: KeyPath) -> str:
        """An address_attribute entry: ``name=value``, ``name`` one the directory reads."""
        if self.directory is None:
            self.fail(p, "address_attribute needs a [directory] section to read attributes "
                         "from", text)
        try:
            name, value = attribute_pair(text)
        except ValueError as exc:
            self.fail(p, str(exc), text)
        known = {a.lower(): a for a in self.directory.attributes}
        if name.lower() not in known:
            self.fail(p, f"attribute {name!r} is not in directory.attributes"
                         + suggest(name, list(known.values()) or ["(none listed)"]), text)
        return f"{known[name.lower()]}={value}"

    def route(self, t: dict[str, Any], p: KeyPath) -> InboundRoute:
        self.table(t, p, ROUTE_KEYS, ("host",))
        host_text = self.typed(t, "host", p, str, "")
        try:
            host = normalize_host(host_text)
            port = check_port(t.get("port", 25))
        except ValueError as exc:
            key = "port" if str(exc).startswith("port") else "host"
            self.fail((*p, key), str(exc))
        mode = self.choice(t, "encryption_mode", p, EncryptionMode, None)  # type: ignore[arg-type]
        return InboundRoute(host, port, mode, self.validation(t, p))

    def external_domain(self, t: dict[str, Any], p: KeyPath) -> ExternalDomain:
        self.table(t, p, DOMAIN_KEYS, ("domain",))
        domain = self.domain(self.typed(t, "domain", p, str, ""), (*p, "domain"))
        return ExternalDomain(
            domain=domain,
            added=self.when(t, "added", p),
            encryption_mode=self.choice(t, "encryption_mode", p, EncryptionMode,
                                        EncryptionMode.STRICT),
            last_validation=self.validation(t, p),
        )

    def definition(self, t: dict[str, Any], p: KeyPath) -> DeliveryDefinition:
        self.table(t, p, DEFINITION_KEYS, ("name",))
        min_tls = t.get("min_tls", "1.2")
        if isinstance(min_tls, float):  # min_tls = 1.2 written without quotes
            min_tls = f"{min_tls:.1f}"
        if min_tls not in TLS_VERSIONS:
            self.fail((*p, "min_tls"), f"{min_tls!r} is not one of: {', '.join(TLS_VERSIONS)}")
        return DeliveryDefinition(
            name=self.text(t, "name", p),
            option=self.choice(t, "option", p, DeliveryOption, DeliveryOption.OPPORTUNISTIC),
            encryption_mode=self.choice(t, "encryption_mode", p, EncryptionMode,
                                        EncryptionMode.STRICT),
            min_tls=min_tls,
            managed=self.flag(t, "managed", p),
            ssl_mode=self.ssl_mode(t, p, min_tls),
        )

    def scope(self, t: dict[str, Any], side: str, p: KeyPath) -> Scope:
        if side not in t:
            return Scope()
        sp = (*p, side)
        known = FROM_KEYS if side == "from" else TO_KEYS
        s = self.table(t[side], sp, known)
        applies = self.choice(s, "applies", sp, Applies, Applies.EVERYONE)
        based_on = self.choice(s, "based_on", sp, BasedOn, BasedOn.ENVELOPE)
        entries = self.strings(s, "specifically", sp)
        lp = (*sp, "specifically")
        keyed = applies in (Applies.DOMAIN, Applies.INDIVIDUAL, Applies.ADDRESS_GROUP,
                            Applies.ADDRESS_ATTRIBUTE)
        if keyed and not entries:
            self.fail(lp if "specifically" in s else (*sp, "applies"),
                      f"applies = '{applies}' needs at least one entry in 'specifically'")
        if not keyed and entries:
            self.fail(lp, f"'specifically' is not used with applies = '{applies}'")
        if applies is Applies.DOMAIN:
            items = [self.domain(e, (*lp, i)) for i, e in enumerate(entries)]
        elif applies is Applies.INDIVIDUAL:
            items = [self.address(e, (*lp, i)) for i, e in enumerate(entries)]
        elif applies is Applies.ADDRESS_ATTRIBUTE:
            items = [self.attribute(e, (*lp, i)) for i, e in enumerate(entries)]
        else:
            items = list(entries)
            for i, name in enumerate(items):
                # Without a directory every group must be the bundle's; with one, a name the
                # bundle does not define is a directory group (checked when it is read).
                if name not in self.groups and self.directory is None:
                    self.fail((*lp, i), f"unknown address group {name!r}"
                              + suggest(name, list(self.groups) or ["(none defined)"]), name)
        self.unique(items, lp)
        return Scope(applies, tuple(items), based_on)

    def validity(self, t: dict[str, Any], p: KeyPath) -> Validity:
        start, end = self.when(t, "start", p), self.when(t, "end", p)
        if start is not None and end is not None and end <= start:
            self.fail((*p, "end"), "must be later than start")
        return Validity(
            enabled=self.flag(t, "enabled", p, True),
            start=start,
            end=end,
            override=self.flag(t, "override", p),
            bidirectional=self.flag(t, "bidirectional", p),
            source_ips=self.networks(t, "source_ips", p),
        )

    def delivery_policy(
        self, t: dict[str, Any], p: KeyPath, definitions: dict[str, DeliveryDefinition]
    ) -> DeliveryPolicy:
        self.table(t, p, DELIVERY_KEYS, ("narrative", "definition"))
        name = self.text(t, "definition", p)
        if name not in definitions:
            self.fail((*p, "definition"), f"no [[delivery_definitions]] is named {name!r}"
                      + suggest(name, list(definitions) or ["(none defined)"]))
        return DeliveryPolicy(
            narrative=self.text(t, "narrative", p),
            definition=name,
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.validity(t, p),
            managed=self.flag(t, "managed", p),
        )

    def receipt_policy(self, t: dict[str, Any], p: KeyPath) -> ReceiptPolicy:
        self.table(t, p, RECEIPT_KEYS, ("narrative",))
        return ReceiptPolicy(
            narrative=self.text(t, "narrative", p),
            option=self.choice(t, "option", p, ReceiptOption, ReceiptOption.OPPORTUNISTIC),
            from_=self.scope(t, "from", p),
            to=self.scope(t, "to", p),
            validity=self.validity(t, p),
            managed=self.flag(t, "managed", p),
            client_certificate=self.client_certificate(t, p),
        )

    # SSL Mode and pinned client certificates (issue 18) ---------------------------------

    def ssl_mode(self, t: dict[str, Any], p: KeyPath, min_tls: str) -> SslMode | None:
        if "ssl_mode" not in t:
            return None  # Strong, or Legacy for an older min_tls: see sslmode.default_mode
        mode = self.choice(t, "ssl_mode", p, SslMode, SslMode.STRONG)
        floor = LEVELS[mode].min_tls
        if TLS_ORDER.index(min_tls) < TLS_ORDER.index(floor):
            self.fail((*p, "min_tls"), f"'{min_tls}' is older than ssl_mode = '{mode}' allows "
                                       f"(TLS {floor} or newer); raise min_tls or choose "
                                       f"ssl_mode = 'legacy'")
        return mode

    def client_certificate(self, t: dict[str, Any], p: KeyPath) -> ClientCertificatePin | None:
        """A PEM file (relative to the bundle's folder) holding the certificate(s) a sending
        server must present: its own, or the CA that issued it."""
        if "client_certificate" not in t:
            return None
        # Imported here: most bundles pin nothing, and every command loads a bundle.
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        key = (*p, "client_certificate")
        name = self.typed(t, "client_certificate", p, str, "").strip()
        if not name:
            self.fail(key, "must name a PEM certificate file (relative to the bundle's folder)")
        folder = Path(self.source).parent if not self.source.startswith("<") else Path()
        try:
            pem = (folder / name).read_bytes()
        except OSError as exc:
            self.fail(key, f"cannot read {name!r} (relative to the bundle's folder): "
                           f"{exc.strerror or exc}")
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError:
            self.fail(key, f"{name!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        return ClientCertificatePin(name, tuple(
            c.public_bytes(serialization.Encoding.DER) for c in certs))


    # The whole document -----------------------------------------------------------------

    def model(self, data: dict[str, Any]) -> PolicyModel:
        self.schema_version(data)
        self.table(data, (), TOP_KEYS)
        self.directory = self.directory_settings(data)
        org = self.organisation(data)

        routes: list[InboundRoute] = []
        seen_routes: dict[tuple[str, int], int] = {}
        for i, t in enumerate(self.tables(data, "inbound_routes")):
            route = self.route(t, ("inbound_routes", i))
            key = (route.host, route.port)
            if key in seen_routes:
                self.fail(("inbound_routes", i, "host"),
                          f"route {route.host}:{route.port} is listed twice "
                          f"(also inbound_routes[{seen_routes[key]}])")
            seen_routes[key] = i
            routes.append(route)

        domains: list[ExternalDomain] = []
        seen_domains: dict[str, int] = {}
        internal = set(org.internal_domains)
        for i, t in enumerate(self.tables(data, "external_domains")):
            ext = self.external_domain(t, ("external_domains", i))
            if ext.domain in seen_domains:
                self.fail(("external_domains", i, "domain"),
                          f"{ext.domain!r} is listed twice "
                          f"(also external_domains[{seen_domains[ext.domain]}])")
            if ext.domain in internal:
                self.fail(("external_domains", i, "domain"),
                          f"{ext.domain!r} is also an internal domain "
                          f"(organisation.internal_domains)")
            seen_domains[ext.domain] = i
            domains.append(ext)

        definitions: dict[str, DeliveryDefinition] = {}
        for i, t in enumerate(self.tables(data, "delivery_definitions")):
            d = self.definition(t, ("delivery_definitions", i))
            if d.name in definitions:
                self.fail(("delivery_definitions", i, "name"),
                          f"definition name {d.name!r} is used twice")
            definitions[d.name] = d

        delivery = tuple(
            self.delivery_policy(t, ("delivery_policies", i), definitions)
            for i, t in enumerate(self.tables(data, "delivery_policies"))
        )
        receipt = tuple(
            self.receipt_policy(t, ("receipt_policies", i))
            for i, t in enumerate(self.tables(data, "receipt_policies"))
        )
        self.managed(domains, definitions, delivery, receipt)
        return PolicyModel(org, tuple(routes), tuple(domains), tuple(definitions.values()),
                           delivery, receipt, **self.secure(data), directory=self.directory)

    def schema_version(self, data: dict[str, Any]) -> None:
        if "schema_version" not in data:
            self.fail((), f"schema_version is missing; a v{SCHEMA_VERSION} bundle starts with "
                          f"'schema_version = {SCHEMA_VERSION}'")
        version = data["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int):
            self.fail(("schema_version",), f"must be an integer, not {kind_of(version)}")
        if version > LATEST_SCHEMA_VERSION:
            self.fail(("schema_version",),
                      f"version {version} was written by a newer connectwiz; this one reads "
                      f"versions {SCHEMA_VERSION} to {LATEST_SCHEMA_VERSION} (upgrade connectwiz)")
        if version < SCHEMA_VERSION:
            self.fail(("schema_version",), f"unknown version {version}; expected "
                                           f"{SCHEMA_VERSION} or {LATEST_SCHEMA_VERSION}")
        if version < SECURE_SCHEMA_VERSION:
            for key in SECURE_KEYS:
                if key in data:
                    self.fail((key,), f"Secure Messaging sections need schema_version = "
                                      f"{SECURE_SCHEMA_VERSION} (this bundle says {version})")

    def managed(
        self, domains: list[ExternalDomain], definitions: dict[str, DeliveryDefinition],
        delivery: tuple[DeliveryPolicy, ...], receipt: tuple[ReceiptPolicy, ...],
    ) -> None:
        """The managed policies list exactly the external domains (by encryption mode), so
        what the relay enforces is what ``domains list`` shows."""
        by_mode: dict[EncryptionMode, int] = {}
        for i, pol in enumerate(delivery):
            if not pol.managed:
                continue
            if pol.to.applies is not Applies.DOMAIN:
                self.fail(("delivery_policies", i, "to", "applies"),
                          "a managed policy (managed = true) must apply to 'domain'")
            mode = definitions[pol.definition].encryption_mode
            if mode in by_mode:
                self.fail(("delivery_policies", i, "managed"),
                          f"a second managed delivery policy with encryption_mode = '{mode}' "
                          f"(the first is delivery_policies[{by_mode[mode]}]); keep one")
            by_mode[mode] = i
        receipt_at = None
        for i, rpol in enumerate(receipt):
            if not rpol.managed:
                continue
            if rpol.from_.applies is not Applies.DOMAIN:
                self.fail(("receipt_policies", i, "from", "applies"),
                          "a managed policy (managed = true) must apply to 'domain'")
            if receipt_at is not None:
                self.fail(("receipt_policies", i, "managed"),
                          f"a second managed receipt policy (the first is "
                          f"receipt_policies[{receipt_at}]); keep one")
            receipt_at = i

        modes = {d.domain: d.encryption_mode for d in domains}
        for mode, i in by_mode.items():
            for k, name in enumerate(delivery[i].to.specifically):
                if modes.get(name) is not mode:
                    self.fail(("delivery_policies", i, "to", "specifically", k),
                              f"{name!r} is not an external domain with encryption_mode = "
                              f"'{mode}'; a managed policy lists only those (fix the "
                              f"[[external_domains]] entry or remove it here)", name)
        if receipt_at is not None:
            for k, name in enumerate(receipt[receipt_at].from_.specifically):
                if name not in modes:
                    self.fail(("receipt_policies", receipt_at, "from", "specifically", k),
                              f"{name!r} is not in [[external_domains]]; a managed policy lists "
                              f"only those (add the domain there or remove it here)", name)
        strict_sets = {mode: set(delivery[i].to.specifically) for mode, i in by_mode.items()}
        received = set(receipt[receipt_at].from_.specifically) if receipt_at is not None else set()
        for j, ext in enumerate(domains):
            where = ("external_domains", j, "domain")
            if ext.domain not in strict_sets.get(ext.encryption_mode, ()):
                self.fail(where, f"{ext.domain!r} is missing from the managed delivery policy "
                                 f"with encryption_mode = '{ext.encryption_mode}' "
                                 f"(managed = true); add it to that policy's 'specifically' list")
            if ext.domain not in received:
                self.fail(where, f"{ext.domain!r} is missing from the managed receipt policy "
                                 f"(managed = true); add it to that policy's 'from.specifically'")


def build_model(data: dict[str, Any], source: str, text: Callable[[], str]) -> PolicyModel:
    """Validate parsed TOML data. ``text`` gives the document text, only needed (and only
    called) to find the line of an error."""
    return _Validator(source, text).model(data)
