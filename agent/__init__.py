"""edison-agent: sensor telemetry over one persistent mutual-TLS MQTT session."""

__version__ = "0.1.0"
