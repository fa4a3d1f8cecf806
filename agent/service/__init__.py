"""`edison-agent run` as a service: wiring, signals, reload, health, systemd, commands."""
