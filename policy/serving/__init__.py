"""The policy server and client (openpi wire format): server.py (PolicyServer, PolicyClient, ActionChunker), wire.py (msgpack frames to observations)."""
