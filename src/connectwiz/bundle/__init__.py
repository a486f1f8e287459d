"""The policy bundle: one hand-editable TOML file (schema v1), loaded fast with tomllib and
edited in place with tomlkit so comments and layout survive."""

from connectwiz.bundle.errors import BundleError
from connectwiz.bundle.paths import resolve_bundle_path
from connectwiz.bundle.store import Bundle, route_key, route_label

__all__ = ["Bundle", "BundleError", "resolve_bundle_path", "route_key", "route_label"]
