"""SSL Mode: the named strength levels of a delivery definition, and what each means.

One table drives the relay's delivery TLS context, the Postfix export and ``validate``, so
they cannot disagree. Each level is Postfix's cipher grade (``smtp_tls_mandatory_ciphers``:
low, medium, high) with that grade's default OpenSSL cipher list, optional exclusions (the
``exclude=`` attribute of a Postfix TLS policy entry) and the oldest TLS version allowed.
The cipher list governs TLS 1.2 and older; every TLS 1.3 suite is strong and always allowed.
Like Postfix's mandatory ciphers, a level applies under Enforced TLS only: opportunistic TLS
takes whatever the server has, since any encryption beats plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectwiz.policy.model import DeliveryDefinition, SslMode

# Postfix's defaults for tls_low_cipherlist, tls_medium_cipherlist, tls_high_cipherlist.
POSTFIX_CIPHERLISTS = {
    "low": "aNULL:-aNULL:ALL:!EXPORT:+RC4:@STRENGTH",
    "medium": "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
    "high": "aNULL:-aNULL:HIGH:@STRENGTH",
}
TLS_ORDER = ("1.0", "1.1", "1.2", "1.3")


@dataclass(frozen=True, slots=True)
class Level:
    mode: SslMode
    grade: str  # Postfix's cipher grade
    exclude: tuple[str, ...]  # OpenSSL cipher names or attributes removed from the grade
    min_tls: str  # the oldest TLS version the level allows
    summary: str

    @property
    def ciphers(self) -> str:
        """The OpenSSL cipher string the relay sets (``SSLContext.set_ciphers``)."""
        text = POSTFIX_CIPHERLISTS[self.grade] + "".join(f":!{x}" for x in self.exclude)
        # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) at its default security level.
        return text + ":@SECLEVEL=0" if self.min_tls < "1.2" else text

    @property
    def postfix(self) -> str:
        """The attributes of a Postfix TLS policy entry (encrypt/secure levels)."""
        attrs = f"ciphers={self.grade}"
        return attrs + (f" exclude={':'.join(self.exclude)}" if self.exclude else "")


LEVELS: dict[SslMode, Level] = {level.mode: level for level in (
    Level(SslMode.LEGACY, "low", (), "1.0",
          "TLS 1.0 or newer, any cipher but export-grade: only for servers that can do no "
          "better"),
    Level(SslMode.MEDIUM, "medium", (), "1.2", "TLS 1.2 or newer, medium or high ciphers"),
    Level(SslMode.STRONG, "high", (), "1.2", "TLS 1.2 or newer, high ciphers only"),
    Level(SslMode.VERY_STRONG, "high", ("kRSA", "SHA1", "SHA256", "SHA384"), "1.2",
          "TLS 1.2 or newer, forward secrecy and AEAD ciphers only (GCM, ChaCha20-Poly1305, "
          "CCM)"),
)}


def default_mode(min_tls: str) -> SslMode:
    """A definition without ``ssl_mode``: Strong, unless its ``min_tls`` asks for TLS older
    than Strong allows (bundles written before SSL Mode existed keep working)."""
    return SslMode.LEGACY if min_tls < "1.2" else SslMode.STRONG


def level_of(definition: DeliveryDefinition) -> Level:
    return LEVELS[definition.ssl_mode or default_mode(definition.min_tls)]


def effective_min_tls(definition: DeliveryDefinition) -> str:
    """The oldest TLS version delivery accepts: the newer of the level's and ``min_tls``."""
    return max(level_of(definition).min_tls, definition.min_tls, key=TLS_ORDER.index)
