"""The OpenAI-compatible HTTP server (``ferrum serve``): aiohttp routes over the engine traits."""
