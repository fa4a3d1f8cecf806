"""What `make test-system` does inside the container: the install as the docs say, then the checks.

Each check prints one line, PASS or FAIL with its name and what it saw. They run in order on one
service (a later check starts from the state an earlier one left), and a check that fails does not
stop the others: each first brings the service back to running if it needs it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import board_steps
import faults
from container import Container, ContainerError, kill_group

UNIT = "edison-agent"
CONFIG = "/etc/edison-agent/config.yaml"
HEALTH = "/run/edison-agent/health.json"
PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
BROKER_DIR = "/etc/mosquitto/certs"
# The independent subscriber: a client certificate of its own, from the same pki.
SUB = ("mosquitto_sub -h iotgateway1 -p 8883 --cafile /root/pki/ca.crt --cert /root/pki/monitor.crt "
       "--key /root/pki/monitor.key")
RELOADS = 50

# The workstation's steps (README "Quick start"), in a venv as Debian 12 requires; the board's are
# docs/operations.md's, run as written (board_steps.py).
WORKSTATION = """
set -e
cd /root
python3 -m venv workstation && workstation/bin/pip install -q '/root/edison-agent[pki]'
workstation/bin/edison-agent pki init-ca pki/
workstation/bin/edison-agent pki issue-device pki/ thunder10
workstation/bin/edison-agent pki issue-device pki/ monitor
"""


class Failed(Exception):
    pass


def run_all(box: Container, work: Path) -> int:
    """The install, then every check; the number that failed."""
    steps = Steps(box, work)
    steps.install()
    failed = 0
    for name, check in steps.checks():
        try:
            detail = check()
        except (Failed, ContainerError, AssertionError) as exc:
            print("FAIL %s: %s" % (name, str(exc).strip().replace("\n", " | ")[:600]), flush=True)
            failed += 1
        else:
            print("PASS %s: %s" % (name, detail), flush=True)
    return failed


class Steps:
    def __init__(self, box: Container, work: Path) -> None:
        self.box, self.work = box, work

    def checks(self) -> List[Tuple[str, Callable[[], str]]]:
        return [
            ("start: activating until READY, then active", self.start),
            ("status line", self.status_line),
            ("telemetry at an independent subscriber", self.telemetry),
            ("hardening drop-in in force", self.hardening),
            ("journal: SENSOR=<name>", self.journal),
            ("reload x%d: applied when systemctl returns, no reading lost" % RELOADS, self.reloads),
            ("reload of an invalid config: refused, still active", self.refused_reload),
            ("watchdog: SIGSTOP -> killed, restarted, delivering", self.watchdog),
            ("kill -9 with the broker down: restarted, spool delivered", self.kill_with_broker_down),
            ("stop: retained offline, exit 0", self.stop),
            ("bad config at start: exit 2, not restarted, reason at -p err", self.bad_config_at_start),
            ("uninstall leaves no unit", self.uninstall),
        ]

    # -- helpers -------------------------------------------------------------------------------

    def sh(self, script: str, check: bool = True, timeout: float = 120.0) -> str:
        return self.box.sh(script, check=check, timeout=timeout).stdout

    def show(self) -> Dict[str, str]:
        text = self.sh("systemctl show %s -p ActiveState,SubState,MainPID,StatusText,NRestarts,ExecMainStatus,"
                       "Result" % UNIT)
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def wait(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise Failed("%s: not within %g s (unit: %s)" % (what, timeout, self.show()))
            time.sleep(0.5)

    def health(self) -> Any:
        return json.loads(self.sh("cat %s" % HEALTH))

    def seqs(self, lines: str) -> List[int]:
        out = []
        for line in lines.splitlines():
            _, _, payload = line.partition(" ")
            try:
                out += [r["seq"] for r in json.loads(payload)["readings"]]
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def ensure_running(self) -> None:
        state = self.show()
        if state.get("ActiveState") != "active":
            self.sh("systemctl reset-failed %s; systemctl start %s" % (UNIT, UNIT))

    def journal_since(self, mark: str, *args: str) -> str:
        return self.sh("journalctl --no-pager -q -u %s --since @%s %s" % (UNIT, mark, " ".join(args)))

    def mark(self) -> str:
        """A point in the journal: the next whole second, once it has begun. (Not a mark: systemd
        252's journalctl -p err --after-mark=... missed entries that -p err alone shows.)"""
        mark = int(self.sh("date +%s")) + 1
        self.sh("sleep 1.1")
        return str(mark)

    # -- the install ---------------------------------------------------------------------------

    def install(self) -> None:
        self.box.sh(WORKSTATION, env=PIP_ENV, timeout=600)
        self.broker_listener()
        self.box.sh(board_steps.script(self.work / "edison-agent" / "docs" / "operations.md"), env=PIP_ENV,
                    timeout=600)
        for name in filter(None, os.environ.get("EDISON_SYSTEM_BREAK", "").split(",")):
            script, breaks = faults.BREAKS[name]
            print("BREAK %s: %s (must fail: %s)" % (name, script, breaks), flush=True)
            self.box.sh(script)

    def broker_listener(self) -> None:
        """issue-broker as the README says; its listener block into mosquitto's conf.d, as printed."""
        helps = self.sh("/root/workstation/bin/edison-agent pki issue-broker --help")
        if "--install-dir" in helps:
            printed = self.sh("cd /root && workstation/bin/edison-agent pki issue-broker pki/ iotgateway1 "
                              "--ip 127.0.0.1 --install-dir %s" % BROKER_DIR)
        else:
            # Not yet on this branch (issue 19): the files copied by hand where mosquitto can read them.
            printed = self.sh("cd /root && workstation/bin/edison-agent pki issue-broker pki/ iotgateway1 "
                              "--ip 127.0.0.1")
            self.sh("install -d -m 0755 %s && cd /root/pki && cp ca.crt iotgateway1.crt iotgateway1.key %s/"
                    % (BROKER_DIR, BROKER_DIR))
            self.sh("chgrp mosquitto %s/iotgateway1.key && chmod 0640 %s/iotgateway1.key" % (BROKER_DIR, BROKER_DIR))
            printed = printed.replace("/root/pki/", BROKER_DIR + "/")
        block = printed[printed.index("listener "):] if "listener " in printed else ""
        if not block:
            raise ContainerError("pki issue-broker printed no listener block:\n%s" % printed)
        self.box.sh("cat > /etc/mosquitto/conf.d/edison.conf && systemctl start mosquitto && "
                    "systemctl is-active mosquitto", input=block)

    # -- the checks ----------------------------------------------------------------------------

    def start(self) -> str:
        mark = self.mark()
        self.sh("systemctl start %s" % UNIT)
        # `systemctl start` of a Type=notify unit returns at READY=1: active, with a status line.
        state = self.show()
        if state["ActiveState"] != "active" or not state["StatusText"]:
            raise Failed("right after `systemctl start`: %s" % state)
        entries = [json.loads(line) for line in self.journal_since(mark, "-o json").splitlines()]
        messages = [str(e.get("MESSAGE", "")) for e in entries]
        # ("agent.service.daemon: device ..." without systemd-python: the logger's name leads on stderr.)
        agent = next((i for i, m in enumerate(messages) if "device thunder10 on " in m), None)
        started = next((i for i, m in enumerate(messages) if m.startswith("Started ")), None)
        # systemd says "Started" at READY=1, so after the agent's own start-up lines; with Type=simple
        # it would say it before the agent has even logged.
        if agent is None or started is None or started < agent:
            raise Failed("journal order: agent start-up line #%s, systemd's Started #%s: %s"
                         % (agent, started, messages[:12]))
        return "activating until READY (\"Started\" after the agent's start-up), then %s; status %r" % (
            state["SubState"], state["StatusText"])

    def status_line(self) -> str:
        pattern = re.compile(r"^connected since \d\d:\d\d:\d\d; [1-9]\d* sent; spool \d+")
        self.wait("STATUS= 'connected since ...; N sent; spool N'",
                  lambda: bool(pattern.match(self.show().get("StatusText", ""))), 30)
        return self.show()["StatusText"]

    def telemetry(self) -> str:
        out = self.sh("%s -t edison/thunder10/telemetry -v -C 3 -W 20" % SUB, timeout=40)
        seqs = self.seqs(out)
        if len(seqs) < 3:
            raise Failed("subscriber got %r" % out[-500:])
        return "3 messages, seq %d..%d" % (min(seqs), max(seqs))

    def hardening(self) -> str:
        pid = self.show()["MainPID"]
        status = self.sh("cat /proc/%s/status" % pid)
        fields = dict(re.findall(r"^(\w+):\s*(\S+)", status, re.M))
        root = [line.split() for line in self.sh("cat /proc/%s/mountinfo" % pid).splitlines()
                if line.split()[4] == "/"]
        problems = []
        if int(fields.get("CapEff", "1"), 16) or int(fields.get("CapBnd", "1"), 16):
            problems.append("capabilities: CapEff %s CapBnd %s" % (fields.get("CapEff"), fields.get("CapBnd")))
        if fields.get("NoNewPrivs") != "1":
            problems.append("NoNewPrivs %s" % fields.get("NoNewPrivs"))
        if not root or "ro" not in root[-1][5].split(","):
            problems.append("/ mounted %s" % (root[-1][5] if root else "nowhere"))
        score = re.search(r"Overall exposure level for %s\.service: (\d+\.\d) (\w+)" % UNIT,
                          self.sh("systemd-analyze security --no-pager %s" % UNIT))
        dropin = (self.work / "edison-agent/systemd/edison-agent.service.d/hardening.conf").read_text()
        said = re.search(r"\((\d+\.\d \w+) with systemd 252\)", dropin)
        if not score or not said or said.group(1) != "%s %s" % score.groups():
            problems.append("systemd-analyze security: %s; the drop-in's comment says %s" % (
                score.groups() if score else "no score", said.group(1) if said else "nothing for systemd 252"))
        if problems or not score:
            raise Failed("; ".join(problems))
        return "CapEff 0, CapBnd 0, NoNewPrivs 1, / read-only; exposure %s %s as the drop-in says" % score.groups()

    def journal(self) -> str:
        # The rssi sensor (board_steps.VI) fails in the container: its warnings carry SENSOR=rssi.
        query = "journalctl -q -u %s SENSOR=%%s -o cat" % UNIT
        self.wait("an entry with SENSOR=rssi", lambda: bool(self.sh(query % "rssi").strip()), 40)
        by_sensor = self.sh(query % "rssi").strip().splitlines()
        if not all(line.startswith("sensor rssi: ") for line in by_sensor):
            raise Failed("SENSOR=rssi returned entries about something else: %s" % by_sensor[:5])
        if "sensor rssi: " in self.sh(query % "temperature"):
            raise Failed("SENSOR=temperature returned rssi's entries")
        return "%d entries for SENSOR=rssi, e.g. %r; none of them under SENSOR=temperature" % (
            len(by_sensor), by_sensor[0][:100])

    def reloads(self) -> str:
        self.ensure_running()
        listener = self.box.spawn("%s -q 1 -t edison/thunder10/telemetry -v" % SUB, self.work / "reload-sub.txt")
        try:
            time.sleep(3)
            # Each reload changes the interval (sensors rebuilt) and the keepalive (a new MQTT session:
            # the slow kind of reload); the health file names the config the agent runs.
            script = r"""
            late=0
            for i in $(seq 1 %d); do
                if [ $((i %% 2)) = 1 ]; then iv=0.5; ka=61; else iv=1; ka=60; fi
                sed -i -E "s/(name: temperature, type: analog, pin: 0, interval: )[0-9.]+,/\1$iv,/" %s
                sed -i -E "s/^(  keepalive: )[0-9]+/\1$ka/" %s
                systemctl reload %s || { echo "reload $i failed"; exit 1; }
                want=$(sha256sum %s | cut -c1-12)
                got=$(sed -E 's/.*"config_hash": *"([0-9a-f]+)".*/\1/' %s)
                [ "$want" = "$got" ] || { late=$((late + 1)); echo "reload $i returned before it applied"; }
            done
            echo "late=$late"
            """ % (RELOADS, CONFIG, CONFIG, UNIT, CONFIG, HEALTH)
            out = self.sh(script, check=False, timeout=900)
            time.sleep(5)
        finally:
            kill_group(listener)
        if "late=0" not in out:
            raise Failed(out.strip()[-800:])
        seqs = sorted(set(self.seqs((self.work / "reload-sub.txt").read_text())))
        if not seqs:
            raise Failed("the subscriber received no readings during the reloads")
        missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
        if missing:
            raise Failed("readings lost across the reloads: seq %s" % missing[:20])
        return "%d reloads, each applied when systemctl returned; seq %d..%d all delivered" % (
            RELOADS, seqs[0], seqs[-1])

    def refused_reload(self) -> str:
        self.ensure_running()
        pid, mark = self.show()["MainPID"], self.mark()
        self.sh("cp %s /root/config.good && sed -i 's/^  port: 8883/  port: yes/' %s" % (CONFIG, CONFIG))
        try:
            result = self.box.sh("systemctl reload %s" % UNIT, check=False)
            state = self.show()
            errors = self.journal_since(mark, "-p err -o cat")
        finally:
            self.sh("cp /root/config.good %s" % CONFIG)
        if result.returncode == 0:
            raise Failed("systemctl reload of an invalid config exited 0")
        if state["ActiveState"] != "active" or state["MainPID"] != pid:
            raise Failed("after the refused reload: %s (PID was %s)" % (state, pid))
        if "mqtt.port" not in errors:
            raise Failed("journalctl -p err shows no mqtt.port problem: %r" % errors[-500:])
        self.sh("systemctl reload %s" % UNIT)
        return "systemctl reload exit %d; still active, same PID; -p err: %r" % (
            result.returncode, [line for line in errors.splitlines() if "mqtt.port" in line][0][:120])

    def watchdog(self) -> str:
        self.ensure_running()
        pid, mark = self.show()["MainPID"], self.mark()
        self.sh("kill -STOP %s" % pid)
        self.wait("a new main PID after the watchdog", lambda: self.show()["MainPID"] not in (pid, "0")
                  and self.show()["ActiveState"] == "active", 90)
        log = self.journal_since(mark, "-o cat")
        if "Watchdog timeout" not in log:
            raise Failed("no watchdog timeout in the journal: %r" % log[-600:])
        self.telemetry()
        return "watchdog timeout, restarted as PID %s, delivering again" % self.show()["MainPID"]

    def kill_with_broker_down(self) -> str:
        self.ensure_running()
        # A persistent session (-c, QoS 1): the broker keeps what arrives for it while it is away.
        first, second = self.work / "spool-sub.txt", self.work / "spool-sub-2.txt"
        sub = "%s -c -i spool-monitor -q 1 -t edison/thunder10/telemetry -v" % SUB
        listener = self.box.spawn(sub, first)
        try:
            self.wait("the subscriber's first reading", lambda: bool(self.seqs(first.read_text())), 30)
            self.sh("systemctl stop mosquitto")
            before = max(self.seqs(first.read_text()))
            time.sleep(6)  # readings go to the spool: two sensors, one reading a second each
            pid = self.show()["MainPID"]
            self.sh("kill -9 %s" % pid)
            self.wait("restarted after kill -9", lambda: self.show()["MainPID"] not in (pid, "0")
                      and self.show()["ActiveState"] == "active", 30)
            self.sh("systemctl start mosquitto")
            kill_group(listener)
            listener = self.box.spawn(sub, second)
            # The backlog goes first, in seq order: once the new process's own readings arrive
            # (a second run of seq), the spool has been sent.
            self.wait("the new process's readings after the backlog",
                      lambda: len(_runs(self.seqs(first.read_text()) + self.seqs(second.read_text()))[-1]) >= 3
                      and len(_runs(self.seqs(first.read_text()) + self.seqs(second.read_text()))) >= 2, 150)
            time.sleep(2)
        finally:
            kill_group(listener)
        runs = _runs(self.seqs(first.read_text()) + self.seqs(second.read_text()))
        spooled = [seq for seq in runs[0] if seq > before]
        # After kill -9 seq jumps (docs/delivery.md): one run per process. A reading lost from the
        # spool would split the first; kill -9 may lose only the last commit_interval's (1 s).
        if len(runs) != 2 or len(spooled) < 6:
            raise Failed("broker stopped after seq %d; delivered runs %s" % (
                before, ["%d..%d" % (r[0], r[-1]) for r in runs]))
        return "%d readings spooled while the broker was down, all delivered after kill -9 and restart " \
               "(seq %d..%d), then the new process's from %d" % (len(spooled), spooled[0], spooled[-1], runs[1][0])

    def stop(self) -> str:
        self.ensure_running()
        self.sh("systemctl stop %s" % UNIT)
        state = self.show()
        status = self.sh("%s -t edison/thunder10/status -C 1 -W 5" % SUB, check=False).strip()
        if status != "offline" or state["ExecMainStatus"] != "0" or state["Result"] != "success":
            raise Failed("retained status %r, %s" % (status, state))
        return "retained %r, ExecMainStatus 0, Result success" % status

    def bad_config_at_start(self) -> str:
        self.sh("systemctl stop %s; systemctl reset-failed %s" % (UNIT, UNIT), check=False)
        mark = self.mark()
        restarts = self.show()["NRestarts"]
        self.sh("cp %s /root/config.good && sed -i 's/^  port: 8883/  port: yes/' %s" % (CONFIG, CONFIG))
        try:
            result = self.box.sh("systemctl start %s" % UNIT, check=False)
            time.sleep(8)  # past RestartSec=5: a restart would have happened by now
            state = self.show()
            errors = self.journal_since(mark, "-p err -o cat")
        finally:
            self.sh("cp /root/config.good %s && systemctl reset-failed %s" % (CONFIG, UNIT), check=False)
        if result.returncode == 0 or state["ExecMainStatus"] != "2" or state["NRestarts"] != restarts \
                or state["ActiveState"] != "failed":
            raise Failed("systemctl start exit %d; %s (NRestarts was %s)" % (result.returncode, state, restarts))
        reason = [line for line in errors.splitlines() if "mqtt.port" in line]
        if not reason:
            raise Failed("journalctl -u %s -p err does not say why: %r" % (UNIT, errors[-600:]))
        return "exit 2, not restarted; -p err: %r" % reason[0][:140]

    def uninstall(self) -> str:
        self.sh("edison-agent uninstall")
        left = self.sh("systemctl list-unit-files --no-legend '%s*'; ls -d /etc/systemd/system/%s.service* "
                       "2>/dev/null" % (UNIT, UNIT), check=False).strip()
        if left:
            raise Failed("left behind: %s" % left)
        return "no unit file, no drop-in"


def _runs(seqs: List[int]) -> List[List[int]]:
    """Runs of consecutive seq numbers, duplicates ignored."""
    runs: List[List[int]] = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][-1] + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return runs or [[]]
