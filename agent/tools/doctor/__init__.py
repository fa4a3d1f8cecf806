"""`edison-agent doctor`: offline checks of the files, then live checks against the broker."""
