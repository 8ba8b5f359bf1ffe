"""Events this process built itself, handed to its own pipeline without a second validation.

The Perform API builds an event (`worker.core.builder`), which parses and validates it, and
puts it on the input stream like any producer's input (DESIGN §4). Most of the time the
worker consuming the room's shard is the same process, and step 2 (`validate`) would decode
those bytes again and check, hash and identify the very PDU the builder just checked.

The submitter registers the built event under the exact bytes it publishes as the input's
`event`; when the pipeline of this process validates an input whose `event` bytes are
exactly those, it takes the event from here instead of decoding and validating again.
The key is the input's content itself, not a mark carried in the message: an input anyone
else published either has different bytes (and is validated as usual) or the same bytes,
which validate to the same event. Whatever the message does not carry (the room it names,
its version, its kind) is still checked as for every input.

The submitter forgets an entry once the input's verdict is in (or never came), so the
registry holds at most the inputs in flight; `take` removes what it hands over.
"""

from __future__ import annotations

from worker.core.events import Event

# Entries beyond this are not registered (each is forgotten after its verdict; the bound only
# keeps a flood of unanswered inputs from growing the registry).
MAX_HELD = 100_000


class BuiltEvents:
    """Built events by the bytes of the input that carries them."""

    def __init__(self) -> None:
        self._held: dict[bytes, Event] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hand(self, data: bytes, event: Event) -> None:
        """`event` is what the builder made of the PDU published as `data` (its validated
        view, with its event ID and canonical form)."""
        if len(self._held) < MAX_HELD:
            self._held[data] = event

    def forget(self, data: bytes) -> None:
        self._held.pop(data, None)

    def take(self, data: bytes) -> Event | None:
        """The event built for exactly these input bytes, handed over once; None when this
        process did not build it (or handed it over already)."""
        return self._held.pop(data, None)


__all__ = ["MAX_HELD", "BuiltEvents"]
