"""The policy model: what a bundle holds, as plain immutable data. No I/O.

Terms follow the Secure Delivery / Secure Receipt model: a delivery *definition* says how
to deliver (option, encryption mode, minimum TLS); a delivery *policy* says when a
definition applies (Emails From / Emails To scopes and validity). Receipt policies carry
their option directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from connectwiz.policy.wording import Wording

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DeliveryOption(StrEnum):
    OPPORTUNISTIC = "opportunistic"
    ENFORCED = "enforced"
    NONE = "none"


class EncryptionMode(StrEnum):
    STRICT = "strict"
    RELAXED = "relaxed"


class SslMode(StrEnum):
    """How strong a TLS session Enforced TLS delivery accepts; ``policy.sslmode`` maps each
    level to TLS versions and an OpenSSL cipher list (Postfix's low/medium/high)."""

    LEGACY = "legacy"
    MEDIUM = "medium"
    STRONG = "strong"
    VERY_STRONG = "very_strong"


class ReceiptOption(StrEnum):
    OPPORTUNISTIC = "opportunistic"
    ENFORCED = "enforced"
    TLS12_NCSC = "tls12_ncsc"


class BasedOn(StrEnum):
    """Which sender address an Emails From scope looks at."""

    ENVELOPE = "envelope"  # the return address (MAIL FROM)
    HEADER = "header"  # the message From: header
    BOTH = "both"  # either; the header address wins when both match


class Applies(StrEnum):
    EVERYONE = "everyone"
    INTERNAL = "internal"
    EXTERNAL = "external"
    DOMAIN = "domain"
    ADDRESS_GROUP = "address_group"
    ADDRESS_ATTRIBUTE = "address_attribute"  # specifically: "attribute=value" (directory)
    INDIVIDUAL = "individual"


class ValidationStatus(StrEnum):
    STRICT = "strict"
    RELAXED = "relaxed"
    UNSUPPORTED = "unsupported"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Scope:
    """Emails From or Emails To. ``specifically`` holds domains, group names or addresses,
    normalised (lower case, A-label domains) according to ``applies``."""

    applies: Applies = Applies.EVERYONE
    specifically: tuple[str, ...] = ()
    based_on: BasedOn = BasedOn.ENVELOPE  # only meaningful on the From side


@dataclass(frozen=True, slots=True)
class Validity:
    enabled: bool = True
    start: datetime | None = None  # timezone-aware, inclusive
    end: datetime | None = None  # timezone-aware, exclusive
    override: bool = False
    bidirectional: bool = False
    source_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryDefinition:
    name: str
    option: DeliveryOption = DeliveryOption.OPPORTUNISTIC
    encryption_mode: EncryptionMode = EncryptionMode.STRICT
    min_tls: str = "1.2"  # "1.0" | "1.1" | "1.2" | "1.3"
    managed: bool = False  # created by connectwiz for its managed policies; removed when unused
    # Enforced TLS only, as in Postfix. None: not set, Strong (Legacy when min_tls < 1.2).
    ssl_mode: SslMode | None = None


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    narrative: str
    definition: str  # name of a DeliveryDefinition
    from_: Scope = Scope()
    to: Scope = Scope()
    validity: Validity = Validity()
    managed: bool = False  # created by connectwiz for external domains; edited by it


@dataclass(frozen=True, slots=True)
class ClientCertificatePin:
    """The sending server must present a certificate that is one of ``certificates`` (its
    own, often self-signed) or directly issued by one of them (a CA). DER, as loaded from
    ``file`` (relative to the bundle's folder)."""

    file: str
    certificates: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReceiptPolicy:
    narrative: str
    option: ReceiptOption = ReceiptOption.OPPORTUNISTIC
    from_: Scope = Scope()
    to: Scope = Scope()
    validity: Validity = Validity()
    managed: bool = False
    client_certificate: ClientCertificatePin | None = None


@dataclass(frozen=True, slots=True)
class LastValidation:
    status: ValidationStatus
    at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InboundRoute:
    """An internal server that inbound mail is delivered to."""

    host: str
    port: int = 25
    encryption_mode: EncryptionMode | None = None  # learned by validation; None = not yet
    last_validation: LastValidation | None = None


@dataclass(frozen=True, slots=True)
class ExternalDomain:
    domain: str
    added: datetime | None = None
    encryption_mode: EncryptionMode = EncryptionMode.STRICT  # what enforcement verifies
    last_validation: LastValidation | None = None


@dataclass(frozen=True, slots=True)
class Organisation:
    internal_domains: tuple[str, ...] = ()
    authorized_outbound: tuple[IPNetwork, ...] = ()
    address_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    name: str = ""  # shown on every Secure Messaging portal page ("" = none)
    logo: str = ""  # portal logo, PNG or JPEG, relative to the bundle's folder ("" = none)


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """An LDAP directory that address groups and address attributes are read from
    (directory/ldap.py). The bind password comes from the environment, never the bundle."""

    url: str  # ldap://host[:port] or ldaps://host[:port]
    base_dn: str
    bind_dn: str = ""  # "" = anonymous bind
    password_env: str = ""  # the environment variable holding the bind password
    user_filter: str = "(mail=*)"
    mail_attribute: str = "mail"
    group_filter: str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
    group_name_attribute: str = "cn"
    attributes: tuple[str, ...] = ()  # user attributes address_attribute scopes may name
    refresh_seconds: int = 300
    timeout_seconds: int = 10


class SecureRouting(StrEnum):
    """Who reads a secure message in the portal instead of their mailbox."""

    EXTERNAL = "external"  # external recipients only; internal ones get it with a banner
    ALL = "all"  # internal recipients too (unless the sender's client asked, see secure.py)


@dataclass(frozen=True, slots=True)
class Requesters:
    """Who may ask for a definition by header or subject tag; nobody listed: everyone."""

    groups: tuple[str, ...] = ()  # address group names
    domains: tuple[str, ...] = ()  # the domain or any of its subdomains
    addresses: tuple[str, ...] = ()

    @property
    def everyone(self) -> bool:
        return not (self.groups or self.domains or self.addresses)


@dataclass(frozen=True, slots=True)
class SecureDefinition:
    """How a secure message is held and what its external recipients may do with it."""

    name: str
    description: str = ""
    allow_print: bool = True
    allow_reply: bool = True
    allow_reply_all: bool = False
    expiry_days: int | None = 30  # None: never (capped by SecureSettings.max_retention_days)
    max_extension_days: int = 0  # how far the sender may extend the expiry
    read_receipt: bool = False
    banner: str | None = None  # for internal recipients; None: the default, "": no banner
    routing: SecureRouting = SecureRouting.EXTERNAL  # only the built-in All Recipients: ALL
    builtin: bool = False
    requesters: Requesters = Requesters()


@dataclass(frozen=True, slots=True)
class SecurePolicy:
    """A Secure Messaging policy; ``definition`` None means Take No Action."""

    narrative: str
    definition: str | None
    from_: Scope = Scope()
    to: Scope = Scope()
    validity: Validity = Validity()


class ConditionField(StrEnum):
    SUBJECT = "subject"
    BODY = "body"
    HEADER = "header"  # the named header equals the value, case-insensitive
    ATTACHMENT_NAME = "attachment_name"  # a glob on an attachment's file name
    ATTACHMENT_TYPE = "attachment_type"  # a glob on an attachment's MIME type


class ConditionKind(StrEnum):
    """How a subject/body condition looks at the text (policy/content.py evaluates them)."""

    CONTAINS = "contains"  # the value as a phrase
    MATCHES = "matches"  # a regular expression (RE2 syntax: linear time on any input)
    DICTIONARY = "dictionary"  # ``terms``: at least ``threshold`` occurrences in all


@dataclass(frozen=True, slots=True)
class SecureCondition:
    field: ConditionField
    value: str  # the phrase, pattern or glob; "" for a dictionary
    header: str = ""  # the header's name, for ConditionField.HEADER
    kind: ConditionKind = ConditionKind.CONTAINS
    whole_word: bool = False  # a phrase or term only between non-word characters
    case_sensitive: bool = False
    terms: tuple[str, ...] = ()  # for ConditionKind.DICTIONARY
    threshold: int = 1  # for ConditionKind.DICTIONARY


class TriggerMatch(StrEnum):
    ANY = "any"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class SecureTrigger:
    """A content examination definition with its policy: when its conditions match, Secure
    Messaging applies with ``definition``. Triggers are cumulative."""

    narrative: str
    definition: str
    conditions: tuple[SecureCondition, ...]
    match: TriggerMatch = TriggerMatch.ANY
    from_: Scope = Scope()
    to: Scope = Scope()
    validity: Validity = Validity()


class BypassOption(StrEnum):
    TAKE_NO_ACTION = "take_no_action"
    DISABLE = "disable"


@dataclass(frozen=True, slots=True)
class SecureBypass:
    narrative: str
    option: BypassOption = BypassOption.DISABLE
    from_: Scope = Scope()
    to: Scope = Scope()
    validity: Validity = Validity()


DEFAULT_RETENTION_DAYS = 365
DEFAULT_SUBJECT_TAG = "secure"
DEFAULT_TAG_DEFINITION = "External Recipients"  # the built-in (policy/secure.py)


@dataclass(frozen=True, slots=True)
class SecureSettings:
    max_retention_days: int = DEFAULT_RETENTION_DAYS  # caps "never expire" and extensions
    subject_tag: str = DEFAULT_SUBJECT_TAG  # senders write [secure] or [secure:...]; "": off
    tag_definition: str = DEFAULT_TAG_DEFINITION  # what a tag without a name asks for
    wording: Wording = field(default_factory=Wording)  # texts and portal colours


@dataclass(frozen=True, slots=True)
class PolicyModel:
    """Everything a bundle holds, validated."""

    organisation: Organisation = field(default_factory=Organisation)
    inbound_routes: tuple[InboundRoute, ...] = ()
    external_domains: tuple[ExternalDomain, ...] = ()
    delivery_definitions: tuple[DeliveryDefinition, ...] = ()
    delivery_policies: tuple[DeliveryPolicy, ...] = ()
    receipt_policies: tuple[ReceiptPolicy, ...] = ()
    secure_settings: SecureSettings = SecureSettings()
    secure_definitions: tuple[SecureDefinition, ...] = ()  # the built-ins are not listed
    secure_policies: tuple[SecurePolicy, ...] = ()
    secure_triggers: tuple[SecureTrigger, ...] = ()
    secure_bypass: tuple[SecureBypass, ...] = ()
    directory: DirectorySettings | None = None

    @property
    def uses_secure_messaging(self) -> bool:
        return bool(self.secure_definitions or self.secure_policies or self.secure_triggers
                    or self.secure_bypass or self.secure_settings != SecureSettings())
