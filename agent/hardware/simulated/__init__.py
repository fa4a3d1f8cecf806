"""The simulated board: the same Board interface as mraa, with plausible signals, for
running the agent (and `make demo`) anywhere."""

from __future__ import annotations

import importlib
import math
import time
from typing import Callable, Dict, Optional, Tuple

from agent.hardware.board import AnalogIn, Board, BoardError, DigitalIn, I2CDevice, PulseCounter
from agent.hardware.simulated.i2c import MraaI2c, RegisterChip, SimulatedChip
from agent.hardware.simulated.signals import Rate, Signal, room_temperature


def _imported(module: str, name: str) -> Callable[[int], SimulatedChip]:
    """A chip's simulation, its module imported when one is first made: a config uses a few parts
    (W1's 200 analog sensors none), and each module is code held in memory for the whole run."""
    def make(seed: int) -> SimulatedChip:
        factory: Callable[[int], SimulatedChip] = getattr(importlib.import_module(module), name)
        return factory(seed)
    return make


# The part a driver asks for (Board.i2c's `chip`) -> its simulation, made from a seed.
CHIPS: Dict[str, Callable[[int], SimulatedChip]] = {
    "bh1750": _imported("agent.hardware.simulated.bh1750", "SimulatedBh1750"),
    "bme280": _imported("agent.hardware.simulated.bme280", "SimulatedBME280"),
    "htu21d": _imported("agent.hardware.simulated.htu21d", "SimulatedHtu21d"),
    "sht31": _imported("agent.hardware.simulated.sht31", "SimulatedSht31"),
    "tmp102": _imported("agent.hardware.simulated.tmp102", "SimulatedTmp102"),
}


def make_chip(chip: str, seed: int) -> SimulatedChip:
    try:
        factory = CHIPS[chip]
    except KeyError:
        raise BoardError("the simulated board has no %r part (it has: %s)"
                         % (chip, ", ".join(sorted(CHIPS)) or "none")) from None
    return factory(seed)


def _linear_temperature(seed: int) -> Callable[[], float]:
    # About 15% of full scale: with the shipped example's scale 0.4883 and offset -50 (a
    # TMP36-style sensor) that reads as a room at about 20 degC, warmest in the afternoon.
    return Signal(seed=seed, mean=0.145, swing=0.01, noise=0.001, spike_chance=0.002, spike=0.02)


def _grove_thermistor(seed: int) -> Callable[[], float]:
    # The Grove divider gives raw/full = 1 / (1 + R/R0), with R/R0 = exp(B (1/T - 1/T25)).
    room = room_temperature(seed)
    return lambda: 1.0 / (1.0 + math.exp(4275.0 * (1.0 / (room() + 273.15) - 1.0 / 298.15)))


# What may be wired to an analog pin (Board.analog_in's `part`) -> its signal, as a fraction of full scale.
ANALOG_PARTS: Dict[str, Callable[[int], Callable[[], float]]] = {
    "": _linear_temperature,
    "grove_temperature": _grove_thermistor,
    # Daylight through a window: brightest at noon, dark at night.
    "grove_light": lambda seed: Signal(seed=seed, mean=0.4, swing=0.3, noise=0.01, peak_hour=12.0),
    # A knob left where someone set it, with a little ADC noise.
    "grove_rotary": lambda seed: Signal(seed=seed, mean=0.5, noise=0.002),
}


class _Aio:
    def __init__(self, pin: int, bits: int, part: str) -> None:
        self._full = (1 << bits) - 1
        self._signal = ANALOG_PARTS.get(part, _linear_temperature)(pin)

    def read(self) -> int:
        return max(0, min(self._full, int(round(self._signal() * self._full))))


class _Gpio:
    """Changes level every few seconds, like a door that is opened now and then."""

    def __init__(self, pin: int) -> None:
        self._pin = pin

    def read(self) -> int:
        return int(time.time() // (5 + self._pin)) % 2


class _Counter(PulseCounter):
    """About two pulses a second, like an anemometer in a light breeze."""

    def __init__(self, pin: int) -> None:
        super().__init__(None, pin)
        self._rate = Rate(seed=pin, per_second=2.0)

    def take(self) -> int:
        return self._rate() + super().take()


class _GenericChip(RegisterChip):
    """What the generic `i2c` driver finds at an address no named part was asked for:
    registers that drift slowly, so the reading changes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._signal = Signal(seed=seed, mean=128, swing=40, noise=2)

    def refresh(self) -> None:
        value = max(0, min(0xFFFF, int(self._signal() * 256)))
        for reg in range(0, 256, 2):
            self.registers[reg], self.registers[reg + 1] = value >> 8, value & 0xFF


class SimulatedBoard(Board):
    name = "simulated board"
    simulated = True

    def __init__(self) -> None:
        # One chip per address, kept across re-opens, as a real bus keeps its devices.
        self._chips: Dict[Tuple[int, int], SimulatedChip] = {}

    def analog_in(self, pin: int, bits: int = 10, part: Optional[str] = None) -> AnalogIn:
        return AnalogIn(_Aio(pin, bits, part or ""), pin, bits)

    def digital_in(self, pin: int, pull: str = "none") -> DigitalIn:
        return DigitalIn(_Gpio(pin), pin)

    def i2c(self, bus: int, address: int, chip: Optional[str] = None) -> I2CDevice:
        key = (bus, address)
        if key not in self._chips:
            self._chips[key] = make_chip(chip, seed=address) if chip else _GenericChip(seed=address)
        return I2CDevice(MraaI2c(self._chips[key]), bus, address)

    def pulse_counter(self, pin: int, edge: str = "rising") -> PulseCounter:
        return _Counter(pin)
