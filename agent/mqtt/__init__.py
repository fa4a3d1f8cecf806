"""The one MQTT session, its TLS, which broker it talks to, and what the broker refused."""
