"""Provisioning many boards: one certificate and one ready-to-copy config bundle per CSV row.

`pki issue-devices OUTDIR --from devices.csv` reads and checks the whole CSV first (and the CA,
and the template), then for each device writes

    OUTDIR/<name>/            0700
        config.yaml           0640, the template with device.id, mqtt.host/port and tls paths set
        certs/ca.crt          0644
        certs/client.crt      0644, CN = device id = MQTT client id
        certs/client.key      0600

assembled in a hidden staging directory and renamed into place, so a bundle is whole or
absent. The certificate (not the key) is also recorded as DIR/<name>.crt in the CA's
directory, where `pki list`, `pki renew` and `pki revoke` find it.
"""

from __future__ import annotations

import csv
import difflib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from agent.config import schema as config_module
from agent.config.reader import UniqueKeyLoader
from agent.tools.pki.authority import issue_device
from agent.tools.pki.files import Issued, load_ca, load_certificate_info, private_directory, write_file
from agent.tools.pki.keys import CA_CERT, DEFAULT_KEY_TYPE, KEY_TYPES, PkiError, check_name

COLUMNS = ("name", "host", "port", "key_type", "days")
# agent/tools/pki/provision.py -> agent/data/config.yaml, the config `edison-agent install` ships.
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "data" / "config.yaml"
BOARD_DIR = "/etc/edison-agent"
_HOST_RE = re.compile(r"^[A-Za-z0-9._:-]+$")


class ProvisionError(PkiError):
    """Problems found before anything was written, one line each."""

    def __init__(self, problems: List[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class DeviceRow:
    line: int
    name: str
    host: Optional[str] = None
    port: Optional[int] = None
    key_type: Optional[str] = None
    days: Optional[int] = None


@dataclass(frozen=True)
class Bundle:
    name: str
    directory: Path
    status: str  # "issued", "replaced" or "skipped"
    detail: str


def read_devices(path: Path) -> List[DeviceRow]:
    """Every row of the CSV, checked; a ProvisionError lists every problem in the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's BOM
            rows = [(reader.line_num, row) for reader in [csv.reader(f)] for row in reader]
    except OSError as exc:
        raise ProvisionError(["%s: cannot read: %s" % (path, exc.strerror)]) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProvisionError(["%s: not a UTF-8 CSV file (%s)" % (path, exc)]) from None
    rows = [(n, row) for n, row in rows if row]  # csv gives [] for a blank line
    if not rows:
        raise ProvisionError(["%s: empty; the first line must be a header naming the columns, e.g. "
                              "name,host,port" % path])
    header_line, header = rows[0]
    problems: List[str] = []
    columns = [c.strip() for c in header]
    for column in columns:
        if column not in COLUMNS:
            close = difflib.get_close_matches(column, COLUMNS, n=1)
            hint = " (did you mean '%s'?)" % close[0] if close else ""
            problems.append("%s: line %s: unknown column '%s'%s; the columns are %s (only name is required)"
                            % (path, header_line, column, hint, ", ".join(COLUMNS)))
    for column in sorted({c for c in columns if columns.count(c) > 1 and c in COLUMNS}):
        problems.append("%s: line %s: column '%s' appears twice" % (path, header_line, column))
    if "name" not in columns:
        problems.append("%s: line %s: no 'name' column; the first line must be a header, "
                        "e.g. name,host,port" % (path, header_line))
    if problems:
        raise ProvisionError(problems)
    devices: List[DeviceRow] = []
    seen: Dict[str, int] = {}
    for line, row in rows[1:]:
        values = [v.strip() for v in row]
        if len(values) > len(columns):
            problems.append("%s: line %s: %s values but the header names %s columns (a comma inside a value "
                            "needs \"quotes\")" % (path, line, len(values), len(columns)))
            continue
        cells = dict(zip(columns, values + [""] * (len(columns) - len(values))))
        if not any(cells.values()):
            problems.append("%s: line %s: empty row; remove it" % (path, line))
            continue
        device = _device(path, line, cells, problems)
        if device is None:
            continue
        folded = device.name.lower()
        if folded in seen:
            problems.append("%s: line %s: name '%s' is already on line %s (names must differ, also in more "
                            "than upper/lower case)" % (path, line, device.name, seen[folded]))
            continue
        seen[folded] = line
        devices.append(device)
    if not devices and not problems:
        problems.append("%s: no devices: add one row per device under the header" % path)
    if problems:
        raise ProvisionError(problems)
    return devices


def _device(path: Path, line: int, cells: Dict[str, str], problems: List[str]) -> Optional[DeviceRow]:
    where = "%s: line %s" % (path, line)
    before = len(problems)
    name = cells["name"]
    if not name:
        problems.append("%s: name is empty; every row needs the device's name" % where)
    else:
        try:
            check_name(name, "name")
            if name.lower() == "ca":
                raise PkiError("name 'ca' is the CA's file name; pick another")
        except PkiError as exc:
            problems.append("%s: %s" % (where, exc))
    host = cells.get("host") or None
    if host is not None and not _HOST_RE.match(host):
        problems.append("%s: host %r: not a host name or IP address" % (where, host))
    port = _number(cells.get("port", ""), "port", 1, 65535, where, problems)
    days = _number(cells.get("days", ""), "days", 1, 36500, where, problems)
    key_type = cells.get("key_type") or None
    if key_type is not None and key_type not in KEY_TYPES:
        problems.append("%s: key_type %r: use one of %s" % (where, key_type, ", ".join(KEY_TYPES)))
    if len(problems) > before:
        return None
    return DeviceRow(line, name, host, port, key_type, days)


def _number(text: str, column: str, low: int, high: int, where: str, problems: List[str]) -> Optional[int]:
    if not text:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        problems.append("%s: %s %r: must be a whole number from %s to %s" % (where, column, text, low, high))
        return None
    return int(text)


def read_template(path: Optional[Path]) -> Dict[str, Any]:
    template = Path(path) if path is not None else DEFAULT_TEMPLATE
    try:
        tree = yaml.load(template.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506
    except OSError as exc:
        raise ProvisionError(["%s: cannot read the template: %s" % (template, exc.strerror)]) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProvisionError(["%s: not a YAML config (%s)" % (template, str(exc).splitlines()[0])]) from None
    if not isinstance(tree, dict) or not isinstance(tree.get("mqtt", {}), dict):
        raise ProvisionError(["%s: not an agent config (a YAML mapping with device:, mqtt:, sensors:)" % template])
    return tree


def device_config(template: Dict[str, Any], device: DeviceRow, host: Optional[str],
                  port: Optional[int]) -> Dict[str, Any]:
    """The template with this device's identity, broker and certificate paths."""
    cfg = dict(template)
    cfg["device"] = dict(cfg.get("device") or {}, id=device.name)
    mqtt = dict(cfg.get("mqtt") or {})
    mqtt["host"] = device.host or host or mqtt.get("host")
    mqtt["port"] = device.port or port or mqtt.get("port") or 8883
    # The certificate's CN: with use_identity_as_username the broker knows the device by it.
    mqtt["client_id"] = device.name
    tls = dict(mqtt.get("tls") or {})
    tls.update(ca_file="certs/ca.crt", cert_file="certs/client.crt", key_file="certs/client.key")
    tls.pop("key_password_file", None)  # the bundle's keys are not encrypted
    mqtt["tls"] = tls
    cfg["mqtt"] = mqtt
    return cfg


def issue_devices(pki_dir: Path, outdir: Path, csv_path: Path, template: Optional[Path] = None,
                  host: Optional[str] = None, port: Optional[int] = None, days: int = 730,
                  key_type: str = DEFAULT_KEY_TYPE, force: bool = False, ca_passphrase: Optional[bytes] = None,
                  out: Callable[[str], None] = print) -> List[Bundle]:
    """One bundle per CSV row; existing ones are skipped (replaced with `force`)."""
    pki_dir, outdir = Path(pki_dir), Path(outdir)
    devices = read_devices(csv_path)
    tree = read_template(template)
    problems = []
    if host is not None and not _HOST_RE.match(host):
        problems.append("--host %r: not a host name or IP address" % host)
    if not any(d.host for d in devices) and host is None and not (tree.get("mqtt") or {}).get("host"):
        problems.append("%s: no mqtt.host: give --host or a host column" % (template or DEFAULT_TEMPLATE))
    if problems:
        raise ProvisionError(problems)
    load_ca(pki_dir, ca_passphrase)  # a missing CA or a wrong passphrase stops us before any write
    private_directory(outdir, "the bundles hold private keys")
    bundles = []
    for device in devices:
        bundle = _issue_one(pki_dir, outdir, device, tree, host, port, days, key_type, force, ca_passphrase)
        out("%s %s: %s" % (bundle.status, bundle.name, bundle.detail))
        bundles.append(bundle)
    return bundles


def _issue_one(pki_dir: Path, outdir: Path, device: DeviceRow, tree: Dict[str, Any], host: Optional[str],
               port: Optional[int], days: int, key_type: str, force: bool, ca_passphrase: Optional[bytes]) -> Bundle:
    name = device.name
    target = outdir / name
    record = pki_dir / ("%s.crt" % name)
    exists = [str(p) for p in (target, record) if os.path.lexists(p)]
    if exists and not force:
        return Bundle(name, target, "skipped", "%s already exist%s; --force issues a new certificate and bundle "
                      "(the old certificate stays valid: 'pki revoke %s %s' first if it must stop working)"
                      % (" and ".join(exists), "s" if len(exists) == 1 else "", pki_dir, name))
    staging = Path(tempfile.mkdtemp(prefix=".%s." % name, dir=outdir))  # 0700
    try:
        certs = staging / "certs"
        certs.mkdir(mode=0o700)
        files = Issued(certs / "client.crt", certs / "client.key")
        issue_device(pki_dir, name, days=device.days or days, key_type=device.key_type or key_type,
                     ca_passphrase=ca_passphrase, files=files)
        write_file(certs / "ca.crt", (pki_dir / CA_CERT).read_bytes(), 0o644, force=False)
        cfg = device_config(tree, device, host, port)
        config_file = staging / "config.yaml"
        header = ("# edison-agent config for %s, made by 'edison-agent pki issue-devices'.\n"
                  "# Every key is described in docs/configuration.md.\n" % name)
        write_file(config_file, (header + yaml.safe_dump(cfg, sort_keys=False)).encode("utf-8"), 0o640, False)
        _check_config(config_file, target / "config.yaml")
        # Recorded last: a failed bundle leaves no certificate behind in the CA's directory.
        write_file(record, files.cert_file.read_bytes(), 0o644, force=True)
        stale_key = pki_dir / ("%s.key" % name)
        if os.path.lexists(stale_key):
            # From an earlier 'pki issue-device': it belongs to the certificate just replaced.
            stale_key.unlink()
        if os.path.lexists(target):
            old = Path(tempfile.mkdtemp(prefix=".%s.old." % name, dir=outdir))
            os.replace(target, old / name)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    info = load_certificate_info(target / "certs" / "client.crt")
    mqtt = cfg["mqtt"]
    return Bundle(name, target, "replaced" if exists else "issued",
                  "%s/ (config.yaml, certs/ca.crt, certs/client.crt, certs/client.key 0600); "
                  "CN=%s, expires %s, broker %s:%s"
                  % (target, name, info.not_after.strftime("%Y-%m-%d"), mqtt["host"], mqtt["port"]))


def _check_config(staged: Path, final: Path) -> None:
    try:
        config_module.load(staged)
    except config_module.ConfigError as exc:
        # state_dir is the board's (/var/lib/edison-agent), not this machine's to judge.
        problems = [p.replace(str(staged), str(final)) for p in exc.problems if ": state_dir: " not in p]
        if problems:
            raise ProvisionError([*problems, "(the template made an invalid config for %s: fix the template; "
                                  "nothing was written for this device)" % final.parent.name]) from None


def copy_hint(bundle: Bundle) -> str:
    src = bundle.directory
    return "\n".join([
        # Naming the two entries (not "{src}/") leaves /etc/edison-agent's own mode (0750) alone.
        "copy a bundle to its board (as root there; the modes are kept), e.g. for %s:" % bundle.name,
        "  rsync -a %s/config.yaml %s/certs root@%s:%s/" % (src, src, bundle.name, BOARD_DIR),
        "  # or: scp -rp %s/config.yaml %s/certs root@%s:%s/" % (src, src, bundle.name, BOARD_DIR),
        "then on the board: edison-agent check-config -c %s/config.yaml && systemctl restart edison-agent"
        % BOARD_DIR,
    ])
