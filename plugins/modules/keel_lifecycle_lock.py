#!/usr/bin/python
# keel_lifecycle_lock: the one lock that site.yml, deploy.yml, rollback.yml,
# add-node.yml, remove-node.yml and the autoscaler take before they change hosts
# (issue 23). The record is a JSON file on the lock host; an flock on a side file
# makes read-decide-write one step, so two runs that start together cannot both
# win. The state is also exported through node_exporter's textfile collector
# for the autoscaler (keel_lifecycle_lock_held).
from __future__ import annotations

DOCUMENTATION = r"""
module: keel_lifecycle_lock
short_description: Take or release keel's lifecycle lock on the lock host
description:
  - One record, C({"owner", "purpose", "acquired", "expires"}), in a JSON file; the file is absent
    while the lock is free.
  - C(acquired) takes the lock when it is free, expired or held by the same owner (re-entrant, the
    expiry is pushed out, C(acquired) kept). Held by another owner and not expired, the module fails with
    a message naming the owner, the purpose, the age and the expiry, unless O(break) is set.
  - C(released) frees a lock held by O(owner) (or an expired one); a free lock is fine, a lock
    held by another owner is refused unless O(break) is set.
  - Read, decision and write happen under an exclusive flock on C(<path>.flock); the record is written
    to a temporary file and renamed over the old one.
  - When O(textfile_dir) exists, C(keel_lifecycle_lock.prom) there is rewritten (temporary file and rename)
    with C(keel_lifecycle_lock_held{owner,purpose}) (1 held, 0 free) and the acquired and expiry timestamps.
  - In check mode the lock is read and a conflict fails as it would for real; nothing is written.
options:
  path:
    description: The lock record. Its directory is created (0755) when missing.
    type: path
    default: /var/lib/keel/lifecycle-lock.json
  state:
    description: Take or release the lock.
    type: str
    choices: [acquired, released]
    default: acquired
  owner:
    description: Who holds it (C(alice@controller), C(keel-autoscaler), ...). Equal owners share the lock.
    type: str
    required: true
  purpose:
    description: What for (the playbook, the scaling action); shown to whoever finds the lock held.
    type: str
    default: ""
  ttl:
    description: Seconds until the lock expires and anyone may take it.
    type: int
    default: 7200
  break:
    description: Take (or release) the lock even when another owner holds it.
    type: bool
    default: false
  textfile_dir:
    description: node_exporter's textfile collector directory; nothing is exported when it does not exist.
    type: path
    default: /var/lib/node_exporter/textfile
"""

EXAMPLES = r"""
- name: Take the lifecycle lock
  keel_lifecycle_lock:
    owner: alice@controller
    purpose: deploy.yml
    ttl: 7200
"""

RETURN = r"""
lock:
  description: The record after the run (empty when the lock is free).
  returned: always
  type: dict
previous:
  description: The record found before the run (empty when there was none).
  returned: always
  type: dict
held:
  description: Whether the lock is held after the run.
  returned: always
  type: bool
broken:
  description: The record of another owner's unexpired lock that O(break) took over or released.
  returned: when a lock was broken
  type: dict
"""

import fcntl  # noqa: E402  (after the documentation, as Ansible modules are laid out)
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

TEXTFILE_NAME = "keel_lifecycle_lock.prom"
BREAK_HINT = "-e keel_lifecycle_lock_break=true"


class LockError(Exception):
    """The lock cannot be taken or released; the message says why and what to do."""

    def __init__(self, msg, record=None):
        super().__init__(msg)
        self.record = record or {}


def _between_read_and_write():
    """A hook for the tests: widens the window a run without the flock would race in."""


def duration(seconds):
    """'1h02m03s' for 3723."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _utc(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def read_record(path):
    """The record in path, {} when there is none. A file that is not a lock record raises LockError."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("owner"), str)
            and isinstance(record.get("expires"), (int, float))):
        raise LockError(
            f"{path} is not a lifecycle lock record ({text[:200]!r}): look at it, then take the lock over with "
            f"{BREAK_HINT} or remove the file.")
    return record


def _atomic_write(path, text, mode=0o644):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def textfile(record):
    """The textfile collector's lines for a record ({} = free)."""
    held = 1 if record else 0
    owner = _label(record.get("owner", ""))
    purpose = _label(record.get("purpose", ""))
    return (
        "# HELP keel_lifecycle_lock_held 1 while the keel lifecycle lock is held (by owner, for purpose), "
        "0 when it is free; a held lock is void after keel_lifecycle_lock_expires_timestamp_seconds.\n"
        "# TYPE keel_lifecycle_lock_held gauge\n"
        f'keel_lifecycle_lock_held{{owner="{owner}",purpose="{purpose}"}} {held}\n'
        "# HELP keel_lifecycle_lock_acquired_timestamp_seconds When the lock was taken (0 when free).\n"
        "# TYPE keel_lifecycle_lock_acquired_timestamp_seconds gauge\n"
        f"keel_lifecycle_lock_acquired_timestamp_seconds {int(record.get('acquired', 0))}\n"
        "# HELP keel_lifecycle_lock_expires_timestamp_seconds When the lock expires (0 when free).\n"
        "# TYPE keel_lifecycle_lock_expires_timestamp_seconds gauge\n"
        f"keel_lifecycle_lock_expires_timestamp_seconds {int(record.get('expires', 0))}\n"
    )


def export(textfile_dir, record):
    """Rewrite the .prom file when the collector's directory exists."""
    if textfile_dir and os.path.isdir(textfile_dir):
        _atomic_write(os.path.join(textfile_dir, TEXTFILE_NAME), textfile(record))


def held_message(path, record, now, verb="take"):
    """What the operator reads when another owner holds the lock."""
    age = now - record.get("acquired", now)
    return (
        f"cannot {verb} the keel lifecycle lock ({path}): {record['owner']} holds it"
        f" for {record.get('purpose') or 'an unnamed purpose'} since {_utc(record.get('acquired', now))}"
        f" ({duration(age)} ago), until {_utc(record['expires'])} (expires in {duration(record['expires'] - now)})."
        " A deploy, rollback, converge, add-node, remove-node or scaling action is running: wait until it ends"
        " (the lock is released at its end) or expires. If you are sure it is dead, take the lock over with"
        f" {BREAK_HINT}."
    )


def run(path, state, owner, purpose="", ttl=7200, brk=False, textfile_dir=None, check=False, now=None):
    """Take or release the lock. Returns the module result; raises LockError on a conflict."""
    if not owner:
        raise LockError("owner is empty: name who takes the lock (keel_lifecycle_lock_owner)")
    if state == "acquired" and ttl <= 0:
        raise LockError(f"ttl must be a positive number of seconds, not {ttl}")
    now = int(time.time() if now is None else now)
    directory = os.path.dirname(path) or "."
    if not check and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755, exist_ok=True)
        os.chmod(directory, 0o755)  # noqa: S103  the record is world-readable by design (whatever the umask)
    side = None
    if os.path.isdir(directory) and not check:
        side = os.open(f"{path}.flock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(side, fcntl.LOCK_EX)
    try:
        try:
            previous = read_record(path)
        except LockError:
            if not brk:
                raise
            previous = {"owner": "?", "expires": 0, "corrupt": True}
        live = bool(previous) and previous["expires"] > now and not previous.get("corrupt")
        mine = live and previous["owner"] == owner
        result = {"changed": False, "previous": previous, "path": path}
        if live and not mine:
            if not brk:
                raise LockError(held_message(path, previous, now, "take" if state == "acquired" else "release"),
                                previous)
            result["broken"] = previous
        if state == "acquired":
            record = {
                "owner": owner,
                "purpose": purpose,
                "acquired": previous.get("acquired", now) if mine else now,
                "expires": now + ttl,
            }
            # A re-entry by the same owner only pushes the expiry out: not a change of who holds it.
            result["changed"] = not mine
            _between_read_and_write()
            if not check:
                _atomic_write(path, json.dumps(record, sort_keys=True) + "\n")
        else:
            record = {}
            result["changed"] = bool(previous)
            if not check and previous:
                _between_read_and_write()
                os.unlink(path)
        if not check:
            export(textfile_dir, record)
        result.update(lock=record, held=bool(record))
        return result
    finally:
        if side is not None:
            fcntl.flock(side, fcntl.LOCK_UN)
            os.close(side)


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/var/lib/keel/lifecycle-lock.json"},
            "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
            "owner": {"type": "str", "required": True},
            "purpose": {"type": "str", "default": ""},
            "ttl": {"type": "int", "default": 7200},
            "break": {"type": "bool", "default": False},
            "textfile_dir": {"type": "path", "default": "/var/lib/node_exporter/textfile"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = run(p["path"], p["state"], p["owner"], p["purpose"], p["ttl"], p["break"], p["textfile_dir"],
                     check=module.check_mode)
    except LockError as exc:
        module.fail_json(msg=str(exc), lock=exc.record, held=bool(exc.record))
    except OSError as exc:
        module.fail_json(msg=f"lifecycle lock {p['path']}: {exc}")
    if "broken" in result:
        verb = "took over" if p["state"] == "acquired" else "released"
        module.warn(f"{verb} the lifecycle lock of {result['broken'].get('owner')} "
                    f"({result['broken'].get('purpose') or 'no purpose'}): keel_lifecycle_lock_break")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
