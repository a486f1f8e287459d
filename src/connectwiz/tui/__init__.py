"""The terminal wizard (Textual): the Connect TLS flow over one policy bundle."""

from connectwiz.tui.app import WizardApp, make_app, make_state

__all__ = ["WizardApp", "make_app", "make_state"]
