"""The `wifi` driver against /proc/net/wireless as kernels and drivers print it.

Every row below is in the kernel's own format, "%6s: %04x  %3d%c  %3d%c  %3d%c  %6d %6d %6d %6d
%6d   %6d" (net/wireless/wext-proc.c), with the values each driver family puts there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.hardware.sensors import wifi
from agent.hardware.sensors.base import SensorError
from agent.hardware.sensors.system import SystemOptions, SystemSensor
from agent.hardware.sensors.wifi import WifiOptions, WifiSensor
from agent.hardware.simulated import SimulatedBoard

HEADER = (
    "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
    " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
)

# A cfg80211 driver on a current kernel (a Raspberry Pi's brcmfmac): the kernel takes 0x100 off
# the level because the driver flags dBm; quality is the signal + 110, capped at 70; no noise.
CFG80211 = HEADER + " wlan0: 0000   49.  -61.  -256        0      0      0     12      0        0\n"

# The Edison's Broadcom bcm4334x (bcmdhd) through its own wireless-extensions handler
# (wl_iw.c, wl_iw_get_wireless_stats): level = 0x100 + RSSI flagged dBm, noise from the PHY,
# and a link quality of 0-5 from RSSI thresholds. Constructed from that code: no capture from
# an Edison was available.
EDISON_BCM4334X = HEADER + " wlan0: 0000    4.  -52.  -91.       0      0      0      3      0        0\n"

# The same driver before it associates: RSSI 0 makes the level byte wrap to 0, printed -256.
EDISON_NOT_ASSOCIATED = HEADER + " wlan0: 0000    0.  -256.  -91.       0      0      0      0      0        0\n"

# An older kernel printed the level's raw byte: -48 dBm arrives as 208 (and with no dots on a
# read that follows another, since reading cleared the updated flags).
RAW_BYTE = HEADER + " wlan0: 0000    0   208     0        0      0      0      0      0        0\n"

# An interface the kernel has no statistics for (cfg80211, not associated), next to p2p0.
NO_STATISTICS = HEADER + (
    " wlan0: 0000    0     0     0        0      0      0      0      0        0\n"
    "  p2p0: 0000    0     0     0        0      0      0      0      0        0\n"
)

# A driver that reports the level as a relative value (0-100), not dBm (e.g. rtl8712).
RELATIVE_HIGH = HEADER + " wlan0: 0000   80.   75.    0.       0      0      0      0      0        0\n"
RELATIVE_LOW = HEADER + " wlan0: 0000   40.   35.    0.       0      0      0      0      0        0\n"

TWO_RADIOS = HEADER + (
    "wlan01: 0000   70.  -30.  -256        0      0      0      0      0        0\n"
    " wlan0: 0000   40.  -70.  -256        0      0      0      0      0        0\n"
)


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "wireless"
    monkeypatch.setattr(wifi, "PROC_NET_WIRELESS", path)

    def write(content: str) -> Path:
        path.write_text(content)
        return path

    return write


def read(metric: str = "signal_dbm", interface: str = "wlan0", board: object = None) -> float:
    sensor = WifiSensor("wifi", WifiOptions(interface=interface, metric=metric), board)  # type: ignore[arg-type]
    sensor.setup()
    return sensor.read()


@pytest.mark.parametrize("content, dbm, link", [
    (CFG80211, -61, 49),
    (EDISON_BCM4334X, -52, 4),
    (RAW_BYTE, -48, 0),
])
def test_signal_and_link_quality(proc, content, dbm, link):
    proc(content)
    assert read() == dbm
    assert read("link_quality") == link


@pytest.mark.parametrize("level, dbm", [(255, -1), (200, -56), (146, -110)])
def test_raw_bytes_wrap_as_wireless_tools_reads_them(proc, level, dbm):
    proc(HEADER + " wlan0: 0000    0   %3d     0        0      0      0      0      0        0\n" % level)
    assert read() == dbm


def test_the_whole_name_must_match(proc):
    proc(TWO_RADIOS)
    assert read() == -70
    assert read(interface="wlan01") == -30


@pytest.mark.parametrize("content", [NO_STATISTICS, EDISON_NOT_ASSOCIATED])
def test_an_interface_with_no_signal_is_an_error_not_zero(proc, content):
    proc(content)
    with pytest.raises(SensorError, match=r"wlan0 .*no signal level \(.*not associated"):
        read()


def test_link_quality_of_an_unassociated_interface_is_zero(proc):
    proc(NO_STATISTICS)
    assert read("link_quality") == 0


@pytest.mark.parametrize("content, level", [(RELATIVE_HIGH, 75), (RELATIVE_LOW, 35)])
def test_a_relative_level_is_not_passed_off_as_dbm(proc, content, level):
    proc(content)
    with pytest.raises(SensorError, match=r"wlan0's level %d .*not .*dBm.*use metric: link_quality" % level):
        read()
    assert read("link_quality") in (80, 40)


def test_an_absent_interface_names_it_and_lists_those_present(proc):
    proc(NO_STATISTICS)
    with pytest.raises(SensorError, match=r"wlan1 is not a wireless interface in .* \(present: p2p0, wlan0\)"):
        read(interface="wlan1")


def test_no_wireless_interfaces_at_all(proc):
    proc(HEADER)
    with pytest.raises(SensorError, match=r"wlan0 is not a wireless interface in .* \(present: none\)"):
        read()


def test_a_missing_file_names_the_interface_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(wifi, "PROC_NET_WIRELESS", tmp_path / "absent")
    with pytest.raises(SensorError, match=r"wlan0: .*absent does not exist .*no wireless interfaces"):
        read()


def test_a_truncated_line_is_an_error(proc):
    proc(HEADER + " wlan0: 0000\n")
    with pytest.raises(SensorError, match="wlan0: cannot read the line"):
        read()


@pytest.mark.parametrize("options, key", [
    (WifiOptions(metric="noise"), "metric"),
    (WifiOptions(interface=""), "interface"),
    (WifiOptions(interface="wlan0:"), "interface"),
    (WifiOptions(interface="wlan 0"), "interface"),
])
def test_options_the_driver_refuses(options, key):
    assert [k for k, _ in WifiSensor.check_options(options)] == [key]


def test_defaults_and_units():
    assert WifiSensor.check_options(WifiOptions()) == []
    assert WifiSensor.default_unit(WifiOptions()) == "dBm"
    assert WifiSensor.default_unit(WifiOptions(metric="link_quality")) is None


def test_it_needs_nothing_from_the_board(proc):
    # The simulated board has no Wi-Fi; the driver reads the kernel's file on any board.
    proc(EDISON_BCM4334X)
    assert read(board=SimulatedBoard()) == -52


def test_system_wifi_signal_reads_the_first_wireless_interface(tmp_path, monkeypatch):
    proc = tmp_path / "wireless"
    proc.write_text("Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
                    " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
                    " wlan0: 0000   54.  -56.  -256        0      0      0      0      0        0\n")
    monkeypatch.setattr(wifi, "PROC_NET_WIRELESS", proc)
    # No board at all: a system metric never touches it.
    assert SystemSensor("s", SystemOptions(metric="wifi_signal"), None).read() == -56  # type: ignore[arg-type]


def test_system_wifi_signal_without_wireless_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(wifi, "PROC_NET_WIRELESS", tmp_path / "absent")
    with pytest.raises(SensorError, match="no wireless interfaces"):
        SystemSensor("s", SystemOptions(metric="wifi_signal"), None).read()  # type: ignore[arg-type]
