from setuptools import find_packages, setup

setup(
    name="edison-agent",
    version="0.1.0",
    description="Telemetry agent for the Intel Edison: sensors over one persistent mutual-TLS MQTT session",
    packages=find_packages(include=["agent", "agent.*"]),
    python_requires=">=3.9",
    install_requires=[
        "paho-mqtt>=2,<3",
        "PyYAML>=5.1",
    ],
    extras_require={
        # The journal handler; the agent runs without it and logs to stderr.
        "systemd": ["systemd-python>=234"],
        # Only the certificate tool needs it, and it runs off the board.
        "pki": ["cryptography>=3.4"],
        "test": ["pytest>=7", "cryptography>=3.4"],
        "check": ["ruff>=0.4", "mypy>=1.8", "types-PyYAML"],
    },
    entry_points={"console_scripts": ["edison-agent = agent.cli:main"]},
)
