"""The aggregate report format of RFC 8460 §4.3-4.4 as a JSON Schema, for checking the
reports the relay sends (the RFC describes the fields in prose; this is that prose)."""

from __future__ import annotations

from typing import Any

RESULT_TYPES = [
    # §4.3.1 negotiation failures
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure",
    # §4.3.2 DANE
    "tlsa-invalid", "dnssec-invalid", "dane-required",
    # §4.3.2 MTA-STS
    "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
]

_COUNT = {"type": "integer", "minimum": 0}
_DATETIME = {"type": "string", "format": "date-time",
             "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"}

TLSRPT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object", "required": ["start-datetime", "end-datetime"],
            "properties": {"start-datetime": _DATETIME, "end-datetime": _DATETIME},
            "additionalProperties": False,
        },
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ["policy", "summary"],
                "properties": {
                    "policy": {
                        "type": "object", "required": ["policy-type", "policy-domain"],
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": {"type": "array", "items": {"type": "string"}},
                            "policy-domain": {"type": "string", "minLength": 1},
                            "mx-host": {"type": "array", "items": {"type": "string"}},
                        },
                        "additionalProperties": False,
                        # The applied policy is given whole (§4.4, as in the RFC's example):
                        # an MTA-STS policy's lines and mx patterns, the TLSA records; a
                        # domain that published nothing has no policy to give.
                        "allOf": [
                            {"if": {"properties": {"policy-type": {"const": "sts"}}},
                             "then": {"required": ["policy-string", "mx-host"]}},
                            {"if": {"properties": {"policy-type": {"const": "tlsa"}}},
                             "then": {"required": ["policy-string"],
                                      "not": {"required": ["mx-host"]}}},
                            {"if": {"properties": {"policy-type": {"const": "no-policy-found"}}},
                             "then": {"not": {"anyOf": [{"required": ["policy-string"]},
                                                        {"required": ["mx-host"]}]}}},
                        ],
                    },
                    "summary": {
                        "type": "object",
                        "required": ["total-successful-session-count",
                                     "total-failure-session-count"],
                        "properties": {"total-successful-session-count": _COUNT,
                                       "total-failure-session-count": _COUNT},
                        "additionalProperties": False,
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "sending-mta-ip", "receiving-ip",
                                         "failed-session-count"],
                            "properties": {
                                "result-type": {"enum": RESULT_TYPES},
                                "sending-mta-ip": {"type": "string",
                                                   "anyOf": [{"format": "ipv4"},
                                                             {"format": "ipv6"}]},
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": {"type": "string",
                                                 "anyOf": [{"format": "ipv4"},
                                                           {"format": "ipv6"}]},
                                "failed-session-count": _COUNT,
                                # a URI (§4.4); the error text goes in failure-reason-code
                                "additional-information": {
                                    "type": "string", "pattern": "^[A-Za-z][A-Za-z0-9+.-]*:"},
                                "failure-reason-code": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
