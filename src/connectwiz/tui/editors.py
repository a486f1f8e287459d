"""Text boxes whose editing keys keep their place in a burst of keys (a fast typist, a
paste over SSH): every Input and TextArea of the wizard is one of these."""

from __future__ import annotations

from textual import events, widgets


async def _own_binding(widget: widgets.Input | widgets.TextArea, event: events.Key) -> bool:
    """Run ``widget``'s own binding for ``event`` now, as the App would once the key had
    bubbled up to it. Textual inserts a typed character at once but runs bound keys
    (Backspace, Ctrl+U, arrows) only after the bubbling, so in a burst of keys (a fast
    typist, a paste over SSH) the letters that follow land first and the edit hits the wrong
    text (Textual issues #6605 and #6631, open for 8.2.8)."""
    for binding in widget._bindings.key_to_bindings.get(event.key, ()):
        if not binding.priority and await widget.app.run_action(binding.action, widget):
            event.stop()
            event.prevent_default()  # the base class's _on_key must not see it
            return True
    return False


class Input(widgets.Input):
    """An Input whose editing keys keep their place in a burst of keys."""

    async def _on_key(self, event: events.Key) -> None:
        await _own_binding(self, event)  # else Textual calls the base class's _on_key next


class TextArea(widgets.TextArea):
    """A TextArea whose editing keys keep their place in a burst of keys."""

    async def _on_key(self, event: events.Key) -> None:
        await _own_binding(self, event)  # else Textual calls the base class's _on_key next
