"""A process whose OpenSSL speaks no TLS 1.3, as the Edison's stock OpenSSL 1.0.2: started with
OPENSSL_CONF naming a file that caps the system default at TLS 1.2 (OpenSSL's MaxProtocol), which
every SSLContext of that process honours. `edison-agent doctor` runs in one, as on such a board."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from agent.tools.doctor import checkup as doctor
from conftest import ROOT

CAP = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
"""


def tls12_only_environment(workdir: Path) -> Dict[str, str]:
    conf = workdir / "openssl-tls12-only.cnf"
    conf.write_text(CAP)
    return dict(os.environ, OPENSSL_CONF=str(conf))


def doctor_without_tls13(config: Path, workdir: Path) -> List[doctor.Check]:
    """`edison-agent doctor -c CONFIG --json` in a process without TLS 1.3, its checks read back."""
    env = tls12_only_environment(workdir)
    asked = "import ssl; print(int(ssl.create_default_context().maximum_version))"
    probe = subprocess.run([sys.executable, "-c", asked], env=env, capture_output=True, text=True, timeout=60)
    # The cap must hold, or a test passing through it proves nothing.
    assert probe.stdout.strip() == str(int(ssl.TLSVersion.TLSv1_2)), probe.stdout + probe.stderr
    done = subprocess.run([sys.executable, "-m", "agent", "doctor", "-c", str(config), "--json"], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return [doctor.Check(**c) for c in json.loads(done.stdout)]
