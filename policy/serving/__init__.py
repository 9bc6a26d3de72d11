"""The policy server and its thin client (openpi wire format): server.py (PolicyServer: batching, bounds, warm-up), client.py (PolicyClient, ActionChunker; needs only numpy, msgpack and websockets), wire.py (msgpack frames <-> observations).

The map of the packages and their seams: docs/architecture.md.
"""
