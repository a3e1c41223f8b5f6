"""Read a service's own word, in its Prometheus metrics, that a reload took.

keel_reload_seen: true when the metrics text read after a SIGHUP says the last
reload succeeded (a sample of the `success` metric is 1) and a sample of one of
the `state` metrics (a config hash, the last successful reload's time) differs
from the metrics text read before the SIGHUP. Prometheus, Alertmanager and
blackbox_exporter all publish such metrics; their reload handlers share this
one reading of them.

    until: >-
      after.content | keel_reload_seen(before.content,
                                       success='alertmanager_config_last_reload_successful',
                                       state=['alertmanager_config_hash'])
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def keel_metric_samples(text: str, names) -> list[str]:
    """The sample lines (name, labels, value) of the metrics called `names`, in their order in `text`."""
    wanted = set(names)
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(None, 1)[0]
        if name in wanted:
            samples.append(line)
    return samples


def _value(sample: str) -> float | None:
    # "name{labels} value [timestamp]" or "name value [timestamp]"
    rest = sample.rsplit("}", 1)[-1] if "{" in sample else sample.split(None, 1)[-1]
    try:
        return float(rest.split()[0])
    except (IndexError, ValueError):
        return None


def keel_reload_seen(after, before, success: str, state) -> bool:
    for name, text in (("after", after), ("before", before)):
        if not isinstance(text, str):
            raise AnsibleFilterError(f"keel_reload_seen: the metrics text {name} the reload must be a string, "
                                     f"got {type(text).__name__}")
    if isinstance(state, str) or not state:
        raise AnsibleFilterError("keel_reload_seen: state must be a non-empty list of metric names")
    succeeded = any(_value(s) == 1 for s in keel_metric_samples(after, [success]))
    return succeeded and keel_metric_samples(after, state) != keel_metric_samples(before, state)


class FilterModule:
    def filters(self):
        return {"keel_reload_seen": keel_reload_seen, "keel_metric_samples": keel_metric_samples}
