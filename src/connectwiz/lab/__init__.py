"""The lab: a local CA, a DNS server and SMTP servers with known TLS behaviour, on loopback.

Used by ``connectwiz lab``, ``connectwiz demo`` and the test suite; nothing here talks to
anything but 127.0.0.0/8. See docs/lab.md for what each lab domain demonstrates.
"""

from connectwiz.lab.ca import LabCA
from connectwiz.lab.runner import Lab, LabHandle, ipv6_loopback_available, run_in_thread
from connectwiz.lab.smtp import LabMessage, LabSession
from connectwiz.lab.zones import CORPUS, CORPUS_ROUTES, DOMAINS, ROUTES, LabDomain, LabHost

__all__ = [
    "CORPUS", "CORPUS_ROUTES", "DOMAINS", "ROUTES", "Lab", "LabCA", "LabDomain", "LabHandle",
    "LabHost", "LabMessage", "LabSession", "ipv6_loopback_available", "run_in_thread",
]
