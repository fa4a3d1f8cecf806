"""Faults that prove the system test's checks can fail.

`EDISON_SYSTEM_BREAK=name[,name...] make test-system` applies them after the install; the check
named beside each must then FAIL (the others may fail too, from the state a fault leaves).
"""

from __future__ import annotations

UNIT = "edison-agent"
CONFIG = "/etc/edison-agent/config.yaml"


def _dropin(name: str, lines: str) -> str:
    directory = "/etc/systemd/system/%s.service.d" % UNIT
    return "mkdir -p %s && cat > %s/zz-%s.conf <<'EOF'\n[Service]\n%s\nEOF\nsystemctl daemon-reload" % (
        directory, directory, name, lines)


BREAKS = {
    "type-simple": (_dropin("type-simple", "Type=simple"), "start"),
    "no-hardening": ("rm /etc/systemd/system/%s.service.d/hardening.conf && systemctl daemon-reload" % UNIT,
                     "hardening"),
    "no-binding": ("rm -r /usr/lib/python3/dist-packages/systemd", "journal: SENSOR"),
    "kill-reload": (_dropin("kill-reload", "ExecReload=\nExecReload=/bin/kill -HUP $MAINPID"),
                    "reload x50, reload of an invalid config"),
    "no-watchdog": (_dropin("no-watchdog", "WatchdogSec=0"), "watchdog"),
    "slow-commit": ("echo 'spool: {commit_interval: 3600}' >> %s" % CONFIG, "kill -9"),
    "stop-sigkill": (_dropin("stop-sigkill", "KillSignal=SIGKILL"), "stop"),
    "restart-always": (_dropin("restart-always", "RestartPreventExitStatus="), "bad config at start"),
    "no-prefix": (_dropin("no-prefix", "SyslogLevelPrefix=no"), "bad config at start"),
    # An override from `systemctl edit`: uninstall removes only its own drop-in, so one stays.
    "user-dropin": (_dropin("user-dropin", "Environment=EDISON_NOTE=1"), "uninstall"),
    "broker-down": ("systemctl stop mosquitto", "status line, telemetry"),
}
