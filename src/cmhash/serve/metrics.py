"""Request counters and a latency histogram for ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counts per (method, route, status) and one latency histogram over all requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.buckets[bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def render(self, index_sizes: dict[str, int]) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
            buckets, total_s = list(self.buckets), self.latency_sum
        lines = ["# HELP cmhash_requests_total Requests answered, by method, route and status.",
                 "# TYPE cmhash_requests_total counter"]
        lines += [f'cmhash_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}' for (m, r, s), n in requests]
        lines += ["# HELP cmhash_errors_total Requests answered with a status >= 400.",
                  "# TYPE cmhash_errors_total counter",
                  f"cmhash_errors_total {sum(n for (_, _, s), n in requests if s >= 400)}",
                  "# HELP cmhash_request_seconds Whole-request latency.",
                  "# TYPE cmhash_request_seconds histogram"]
        cumulative = 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), buckets):
            cumulative += count
            lines.append(f'cmhash_request_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"cmhash_request_seconds_sum {total_s:.6f}", f"cmhash_request_seconds_count {cumulative}",
                  "# HELP cmhash_index_items Items in each modality's index.", "# TYPE cmhash_index_items gauge"]
        lines += [f'cmhash_index_items{{modality="{m}"}} {n}' for m, n in sorted(index_sizes.items())]
        return "\n".join(lines) + "\n"
