"""Pure torch maths: no Lightning, no logging, no state."""

__all__: list[str] = []
