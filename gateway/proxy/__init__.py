"""The aiohttp edge: listener apps, handlers and the upstream client."""
