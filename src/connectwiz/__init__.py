"""connectwiz: validate, record and enforce TLS between your mail servers and your partners."""

__version__ = "0.1.0"
