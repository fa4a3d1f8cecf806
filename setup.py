import re
from pathlib import Path

from setuptools import find_packages, setup

# One version, in agent/__init__.py: the running agent reports it without importlib.metadata,
# which costs more memory than the health document it would go into.
_VERSION_LINE = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "agent" / "__init__.py").read_text(),
                          re.M)
if _VERSION_LINE is None:
    raise SystemExit("setup.py: agent/__init__.py has no __version__ line")
VERSION = _VERSION_LINE.group(1)

setup(
    name="edison-agent",
    version=VERSION,
    description="Telemetry agent for the Intel Edison: sensors over one persistent mutual-TLS MQTT session",
    packages=find_packages(include=["agent", "agent.*"]),
    # The example config and unit files that `edison-agent install` puts in place.
    package_data={"agent": ["data/*"]},
    python_requires=">=3.9",
    install_requires=[
        # Only the release tested: agent/mqtt/paho_shim.py reads paho internals (tests/test_paho_shim.py).
        "paho-mqtt>=2.2,<2.3",
        "PyYAML>=5.1",
    ],
    extras_require={
        # The journal handler; the agent runs without it and logs to stderr.
        "systemd": ["systemd-python>=234"],
        # Only the certificate tool needs it, and it runs off the board.
        "pki": ["cryptography>=3.4"],
        # The tests check chains with verify_directly_issued_by (cryptography 40+).
        # jinja2: the Home Assistant discovery templates are rendered as Home Assistant renders them.
        "test": ["pytest>=7", "cryptography>=40", "hypothesis>=6", "jinja2>=3"],
        # Pinned: a new linter release must not fail CI on code nobody changed.
        "check": ["ruff==0.17.6", "mypy==2.4.1", "types-PyYAML"],
    },
    entry_points={"console_scripts": ["edison-agent = agent.cli:main"]},
)
