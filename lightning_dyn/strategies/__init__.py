"""Lightning strategies, only for methods that themselves span devices."""

__all__: list[str] = []
