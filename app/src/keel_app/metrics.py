"""Prometheus metrics of one application, in a registry of its own.

Request metrics are labelled by the route *template* (unknown paths are
"other"), never by the raw path, so a scan of random URLs cannot blow up
the number of series.

The per-request series are plain counters updated on the event loop thread
and turned into Prometheus metric families only when scraped: that keeps the
cost per request well under a microsecond (prometheus_client's own metric
objects take a lock per update). The scrape runs on the same thread, so no
lock is needed.

Every route served so far has an error series, at 0 until its first server error
(as Prometheus' instrumentation guide asks): an error ratio is then 0, not "no
data", on a healthy service, and rules and dashboards need no "or vector(0)".
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKET_LABELS = [*(f"{b:g}" if b < 1 else f"{b:.1f}" for b in BUCKETS), "+Inf"]
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


class _Series:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # not cumulative; the last one is +Inf


class RequestCollector(Collector):
    """keel_app_requests_total, keel_app_request_errors_total and keel_app_request_duration_seconds."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, int], _Series] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        series = self._series.get((route, status))
        if series is None:
            series = self._series[(route, status)] = _Series()
        series.count += 1
        series.sum += seconds
        series.buckets[bisect_left(BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "keel_app_requests",
            "HTTP requests handled, by route template and status code.",
            labels=["route", "status"],
        )
        errors = CounterMetricFamily(
            "keel_app_request_errors",
            "HTTP requests that ended in a server error (status >= 500), by route template and status code.",
            labels=["route", "status"],
        )
        duration = HistogramMetricFamily(
            "keel_app_request_duration_seconds",
            "Time from receiving a request to sending its response, by route template and status code.",
            labels=["route", "status"],
        )
        routes_with_errors = {route for route, status in self._series if status >= 500}
        for route in sorted({route for route, _ in self._series} - routes_with_errors):
            errors.add_metric([route, "500"], 0)
        for (route, status), series in sorted(self._series.items()):
            labels = [route, str(status)]
            requests.add_metric(labels, series.count)
            if status >= 500:
                errors.add_metric(labels, series.count)
            cumulative, running = [], 0
            for label, count in zip(_BUCKET_LABELS, series.buckets, strict=True):
                running += count
                cumulative.append((label, running))
            duration.add_metric(labels, cumulative, series.sum)
        yield requests
        yield errors
        yield duration


class ProcessMetrics(Collector):
    """process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds and
    process_start_time_seconds, read at scrape time from this process only.

    Not prometheus_client's ProcessCollector: it needs /proc/stat (the boot time),
    which the unit's ProcSubset=pid hides, and then silently exports nothing.
    """

    def __init__(self) -> None:
        self._started = time.time()  # set up when the app starts
        self._page_size = os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Iterator[Metric]:
        times = os.times()
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                  value=times.user + times.system)
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                resident_pages = int(statm.read().split()[1])
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                                    value=resident_pages * self._page_size)
            yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                    value=len(os.listdir("/proc/self/fd")))
        except OSError:  # no /proc (not Linux)
            pass
        yield GaugeMetricFamily("process_start_time_seconds",
                                "Start time of the process since unix epoch in seconds.", value=self._started)


class Metrics:
    def __init__(
        self,
        service: str,
        version: str,
        in_flight: Callable[[], float],
        ready: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestCollector()
        self.registry.register(self.requests)
        self.observe = self.requests.observe
        # the capacity dashboard's requests per CPU second
        self.registry.register(ProcessMetrics())
        in_flight_gauge = Gauge(
            "keel_app_requests_in_flight", "HTTP requests being handled right now.", registry=self.registry
        )
        in_flight_gauge.set_function(in_flight)
        ready_gauge = Gauge(
            "keel_app_ready", "1 while the instance reports ready on /readyz, else 0.", registry=self.registry
        )
        ready_gauge.set_function(ready)
        build_info = Gauge(
            "keel_app_build_info",
            "Always 1; the labels say which release and service this is.",
            ["version", "service"],
            registry=self.registry,
        )
        build_info.labels(version=version, service=service).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
