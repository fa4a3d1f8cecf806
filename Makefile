# The README's two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# apt-get needs root; on a developer's machine that is sudo, in CI it is root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := mosquitto mosquitto-clients openssl python3-venv systemd pkg-config gcc libc6-dev
UNITS := systemd/edison-agent.service

.PHONY: demo test check system-deps venv verify-unit clean bench bench-plot bench-peers test-brokers test-system test-i386 bench-edison

system-deps:
	@if ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null \
	    || ! command -v openssl >/dev/null || ! command -v systemd-analyze >/dev/null \
	    || ! command -v pkg-config >/dev/null || ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "installing $(APT_PACKAGES) with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	@# systemd-python builds against libsystemd-dev; pinned to the installed libsystemd0, or apt
	@# would upgrade the whole systemd stack to match it.
	@if ! dpkg -s libsystemd-dev >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    "libsystemd-dev=$$(dpkg-query -W -f='$${Version}' libsystemd0)"; \
	fi

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,pki,check,systemd]'
	touch $@

venv: $(VENV)/.installed

demo: system-deps venv
	$(PY) scripts/demo.py

test: system-deps venv
	$(PY) -m pytest -q

# ruff and mypy over the whole tree. mypy runs twice because each folder imports its siblings by
# bare name (`import rig`, `from conftest import`), so bench/run.py and tests/system/run.py are
# both the module `run` and one run cannot hold them; agent/ is checked in both (cached).
check: venv
	$(VENV)/bin/ruff check agent tests scripts bench setup.py
	$(VENV)/bin/mypy agent bench scripts setup.py
	$(VENV)/bin/mypy tests

# Issue 15: the service under a real systemd 252 as PID 1 (a Debian 12 container booted with
# systemd-nspawn): installed as docs/operations.md says, then start, watchdog, reload, stop, the
# journal, hardening and uninstall, one line per check. Needs root, systemd-nspawn (systemd-container)
# and debootstrap; prints SKIP and exits 0 without them. The root file system is built once (about a
# minute from a near mirror) and cached in /var/cache/edison-agent/; a run takes about 5 minutes.
test-system: venv
	$(PY) tests/system/run.py

clean:
	rm -rf $(VENV) demo build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Issue 7: the agent against bare paho, reconnect-per-reading and mosquitto_pub on a local
# mutual-TLS mosquitto (the bench starts and stops it). ~4 minutes on 2 vCPUs; writes
# bench/results.json. Needs mosquitto and mosquitto-clients (make system-deps).
bench:
	$(PY) bench/run.py

# docs/performance.png from bench/results.json (installs matplotlib into the venv if missing).
bench-plot:
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check matplotlib
	$(PY) bench/plot.py bench/results.json docs/performance.png

# Issue 7: the agent, flyte/mqtt-io 2.7 and collectd 5.12 through W1 (200 sensors at 1 s) and
# idle, interleaved, on the bench's mutual-TLS mosquitto. ~5 minutes on 2 vCPUs; writes
# bench/peers.json and the peers' configs to bench/peers-configs/. Not part of `make test`.
# mqtt-io gets a venv of its own (its dependencies are not the agent's); paho-mqtt is pinned
# to the agent's version so the two Python daemons differ in themselves, not in paho.
# collectd-core's mqtt plugin needs libmosquitto1, which the package only suggests; the
# package's collectd.service does not start without /etc/collectd/collectd.conf, which
# collectd-core does not install.
PEERS_VENV := bench/.peers-venv

$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --disable-pip-version-check 'mqtt-io==2.7.0' 'paho-mqtt==2.2.0'
	touch $@

bench-peers: system-deps venv $(PEERS_VENV)/.installed
	@if ! command -v collectd >/dev/null || [ ! -e /usr/lib/collectd/mqtt.so ] \
	    || ldd /usr/lib/collectd/mqtt.so | grep -q 'not found'; then \
	  echo "installing collectd-core libmosquitto1 with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends collectd-core libmosquitto1; \
	fi
	$(PY) bench/peers.py

# Issue 19: the agent against a two-node RabbitMQ 3.10 cluster (Debian's rabbitmq-server, on
# 127.0.0.1, its own epmd port and cookie; started and stopped here) through a SIGKILL of the node
# in use, every seq counted at a subscriber on the other node; doctor's diagnoses on a real node;
# then two mosquittos with the same checks. Not part of `make test` or CI: ~1.5 minutes, and it
# installs rabbitmq-server (Erlang, ~60 MB).
test-brokers: system-deps venv
	@if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then \
	  echo "installing rabbitmq-server with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends rabbitmq-server; \
	fi
	$(PY) scripts/test_brokers.py

# Issue 17: the test suite in a 32-bit i386 Debian bookworm user land (the Edison is 32-bit x86),
# so a 32-bit time_t, ctypes struct sizes and integer widths fail here and not on a board. Root
# and debootstrap needed (SKIP, exit 0, without them). The root is built once (~1 minute, ~360 MB)
# into /var/cache/edison-agent/ (EDISON_I386_CACHE), keyed by its package list; each run gets
# an overlay of it and a copy of this checkout. PYTEST_ARGS picks tests: PYTEST_ARGS=tests/test_tls.py
test-i386:
	tests/i386/run.sh $(PYTEST_ARGS)

# Issue 17: the agent installed as docs/operations.md says, in the i386 root of test-i386, under a
# cgroup v1 cpu cap of 1/29.5 of a core (the Edison estimate), on one core and on two; the broker
# and subscriber outside the cap. Root only; ~15 minutes with 60 s windows; writes
# bench/edison-cap.json. Not part of CI. BENCH_ARGS="--window 20 --cores 1" for a shorter run.
bench-edison: venv
	$(PY) bench/edison_cap.py $(BENCH_ARGS)
