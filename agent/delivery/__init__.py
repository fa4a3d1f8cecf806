"""Readings between sampling and the broker's acknowledgement: the spool (the outbox and its
committer) over its queue in memory and its SQLite store, and the uplink that feeds the session."""
