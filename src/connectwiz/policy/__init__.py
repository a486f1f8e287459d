"""The pure policy model: domain-name rules, dataclasses and policy selection. No I/O here."""
