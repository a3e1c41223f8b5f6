#!/usr/bin/python
# keel_wait_http: wait until every URL of a list answers an expected status, all of them
# polled together and the whole wait bounded by one deadline in seconds. The app role's
# readiness gate used ansible.builtin.uri with until/retries per instance: the instances
# were waited for one after another, each retry cost a module run, and a release that never
# became ready held a host for (instances x retries x the module's own time) instead of
# app_ready_timeout seconds.
from __future__ import annotations

DOCUMENTATION = r"""
module: keel_wait_http
short_description: Wait until every URL answers an expected HTTP status, within one deadline
description:
  - Polls every URL of O(urls) every O(interval) seconds, all in the same round, until each has
    answered one of O(status_code) once. A URL that has answered is not asked again.
  - Fails when O(timeout) seconds have passed and some URL has not answered, naming each with the
    last answer or error it gave.
  - Runs in check mode too (it only reads).
options:
  urls:
    description: The URLs (http or https) to wait for.
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds the whole wait may take, whatever the number of URLs.
    type: int
    required: true
  interval:
    description: Seconds between two rounds.
    type: float
    default: 1.0
  request_timeout:
    description: Seconds one request may take.
    type: float
    default: 2.0
  status_code:
    description: The statuses that count as ready.
    type: list
    elements: int
    default: [200]
"""

EXAMPLES = r"""
- name: Wait until every instance answers /readyz
  keel_wait_http:
    urls: ["http://10.0.0.21:8001/readyz", "http://10.0.0.21:8002/readyz"]
    timeout: 60
"""

RETURN = r"""
ready:
  description: For each URL that answered, the seconds it took from the start of the wait.
  type: dict
  returned: always
waiting:
  description: For each URL that did not answer in time, its last answer or error.
  type: dict
  returned: always
elapsed:
  description: Seconds the wait took.
  type: float
  returned: always
"""

import concurrent.futures  # noqa: E402  (after the documentation, as Ansible modules are laid out)
import functools  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def probe(url: str, request_timeout: float) -> tuple[int | None, str]:
    """(status, what) for one request: (None, the error) when no HTTP answer came."""
    try:
        with urllib.request.urlopen(url, timeout=request_timeout) as answer:  # noqa: S310 (scheme checked)
            return answer.status, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"


def wait(urls: list[str], timeout: float, interval: float, request_timeout: float,
         expected: set[int], clock=time.monotonic, sleep=time.sleep) -> tuple[dict, dict, float]:
    """Poll until every URL answered an expected status or the deadline passed."""
    start = clock()
    deadline = start + timeout
    ready: dict[str, float] = {}
    last: dict[str, str] = {url: "not asked yet" for url in urls}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(1, len(urls)))) as pool:
        while True:
            pending = [url for url in urls if url not in ready]
            if not pending:
                break
            per_request = max(0.1, min(request_timeout, deadline - clock()))
            answers = pool.map(functools.partial(probe, request_timeout=per_request), pending)
            for url, (status, what) in zip(pending, answers, strict=True):
                last[url] = what
                if status in expected:
                    ready[url] = round(clock() - start, 2)
            remaining = deadline - clock()
            if len(ready) == len(urls) or remaining <= 0:
                break
            sleep(min(interval, remaining))  # the last round is at the deadline
    waiting = {url: last[url] for url in urls if url not in ready}
    return ready, waiting, round(clock() - start, 2)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "urls": {"type": "list", "elements": "str", "required": True},
            "timeout": {"type": "int", "required": True},
            "interval": {"type": "float", "default": 1.0},
            "request_timeout": {"type": "float", "default": 2.0},
            "status_code": {"type": "list", "elements": "int", "default": [200]},
        },
        supports_check_mode=True,
    )
    params = module.params
    bad = [url for url in params["urls"] if not url.startswith(("http://", "https://"))]
    if bad:
        module.fail_json(msg=f"urls must be http:// or https:// URLs (got {bad})")
    if params["timeout"] < 1 or params["interval"] <= 0 or params["request_timeout"] <= 0:
        module.fail_json(msg="timeout must be at least 1 s, interval and request_timeout above 0 "
                             f"(got {params['timeout']}, {params['interval']}, {params['request_timeout']})")
    ready, waiting, elapsed = wait(params["urls"], params["timeout"], params["interval"],
                                   params["request_timeout"], set(params["status_code"]))
    result = {"changed": False, "ready": ready, "waiting": waiting, "elapsed": elapsed}
    if waiting:
        detail = "; ".join(f"{url}: {what}" for url, what in waiting.items())
        module.fail_json(msg=f"{len(waiting)} of {len(params['urls'])} URL(s) did not answer "
                             f"{sorted(params['status_code'])} within {params['timeout']} s: {detail}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
