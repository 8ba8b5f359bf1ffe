"""The pure core: room versions, canonical JSON, events, auth rules and state resolution.

Nothing here performs I/O, touches asyncio or logs; lookups are passed in (STYLE R1).
"""
