"""The bundle's vocabulary: the schema versions and the keys each table may hold (what
``bundle.schema`` accepts and ``bundle.data`` writes)."""

from __future__ import annotations

from connectwiz.policy.model import DirectorySettings

SCHEMA_VERSION = 1  # what a bundle without Secure Messaging is written as
SECURE_SCHEMA_VERSION = 2  # the Secure Messaging sections need this
LATEST_SCHEMA_VERSION = SECURE_SCHEMA_VERSION
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")

TOP_KEYS = (
    "schema_version", "organisation", "directory", "inbound_routes", "external_domains",
    "delivery_definitions", "delivery_policies", "receipt_policies",
    "secure_messaging", "secure_definitions", "secure_policies", "secure_triggers",
    "secure_bypass",
)
SECURE_KEYS = TOP_KEYS[-5:]
DIRECTORY_KEYS = ("url", "base_dn", "bind_dn", "password_env", "user_filter", "mail_attribute",
                  "group_filter", "group_name_attribute", "attributes", "refresh_seconds",
                  "timeout_seconds")
DIRECTORY_DEFAULTS = DirectorySettings("", "")
ORGANISATION_KEYS = ("internal_domains", "authorized_outbound", "address_groups", "name",
                     "logo")
ROUTE_KEYS = ("host", "port", "encryption_mode", "last_validation")
DOMAIN_KEYS = ("domain", "added", "encryption_mode", "last_validation")
VALIDATION_KEYS = ("status", "at", "reason")
DEFINITION_KEYS = ("name", "option", "encryption_mode", "min_tls", "managed", "ssl_mode")
VALIDITY_KEYS = ("enabled", "start", "end", "override", "bidirectional", "source_ips")
DELIVERY_KEYS = ("narrative", "definition", "from", "to", *VALIDITY_KEYS, "managed")
RECEIPT_KEYS = ("narrative", "option", "from", "to", *VALIDITY_KEYS, "managed",
                "client_certificate")
FROM_KEYS = ("based_on", "applies", "specifically")
TO_KEYS = ("applies", "specifically")
WORDING_TEXT_KEYS = ("notification_subject", "notification_text", "code_subject", "code_text",
                     "default_banner")
WORDING_COLOUR_KEYS = ("accent_colour", "bar_colour")
SECURE_SETTINGS_KEYS = ("max_retention_days", "subject_tag", "tag_definition",
                        *WORDING_COLOUR_KEYS, *WORDING_TEXT_KEYS)
SECURE_DEFINITION_KEYS = ("name", "description", "allow_print", "allow_reply", "allow_reply_all",
                          "expiry_days", "max_extension_days", "read_receipt", "banner",
                          "may_request", "routing")
REQUESTER_KEYS = ("groups", "domains", "addresses")
SECURE_POLICY_KEYS = ("narrative", "definition", "take_no_action", "from", "to", *VALIDITY_KEYS)
SECURE_TRIGGER_KEYS = ("narrative", "definition", "match", "conditions", "from", "to",
                       *VALIDITY_KEYS)
SECURE_BYPASS_KEYS = ("narrative", "option", "from", "to", *VALIDITY_KEYS)
# A condition's main key (exactly one) and its modifiers.
CONDITION_MAIN_KEYS = ("subject_contains", "body_contains", "subject_matches", "body_matches",
                   "header", "attachment_name", "attachment_type", "dictionary")
CONDITION_KEYS = (*CONDITION_MAIN_KEYS, "equals", "whole_word", "case_sensitive", "in", "threshold")
