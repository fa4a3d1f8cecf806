"""Certificates: a private CA, broker and device certificates, provisioning, revocation."""
