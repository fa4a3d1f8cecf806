"""Readings: when each sensor is read, and what happens to a value before it is published."""
