"""TLS client contexts and reading what the server presented; shared by the probe and the relay."""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path

from cryptography import x509

MODERN_VERSIONS = ("TLSv1.2", "TLSv1.3")
_ENCODING_DER = 2  # _ssl.ENCODING_DER: the private Certificate.public_bytes format flag


def client_context(
    *,
    verify: bool = True,
    ca_file: Path | None = None,
    check_hostname: bool | None = None,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    legacy: bool = False,
) -> ssl.SSLContext:
    """A client context.

    ``verify``: require a certificate chaining to the system store plus ``ca_file``
    (``check_hostname`` defaults to ``verify``). ``verify=False`` accepts any certificate so the
    caller can inspect it. ``legacy``: also allow TLS 1.0/1.1 and weak ciphers (``@SECLEVEL=0``),
    only to learn what an old server offers; never for delivering mail that must be protected.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_default_certs()
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        ctx.check_hostname = verify if check_hostname is None else check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if legacy:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    # TLSv1/1.1 are deprecated: detecting them, or a policy's min_tls, may still ask for them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1 if legacy else minimum
    return ctx


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[x509.Certificate]:
    """The certificates the server sent, leaf first, as presented (not verified).

    Python 3.13 has ``get_unverified_chain()``; 3.10-3.12 have it only on the private ``_sslobj``.
    Without either, only the leaf is available (then intermediates must be in the trust store).
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        chain = getter() or []
        ders = [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]
    else:
        leaf = ssl_object.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return [x509.load_der_x509_certificate(der) for der in ders]
