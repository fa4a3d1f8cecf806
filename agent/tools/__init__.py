"""Operator and off-board tools; `edison-agent run` never imports them."""
