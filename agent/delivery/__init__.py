"""Readings between sampling and the broker's acknowledgement: the spool, its store, the uplink."""
