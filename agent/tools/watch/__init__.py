"""`edison-agent watch`: the fleet's health, one row per board."""
