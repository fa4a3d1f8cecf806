"""The hardware edge: the board (the only mraa import), the drivers, the simulated parts."""
