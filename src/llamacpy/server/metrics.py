"""/metrics in Prometheus' text format, with llama-server's metric names (`llamacpp:prompt_tokens_total`, ...).

Owns: a prometheus-client collector that reads the engine's counters at scrape time and names them as
llama-server's handle_metrics does.
Must not: keep counters of its own (the engine counts) or touch the model.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _get(m: dict, *keys, default=0.0) -> float:
    for k in keys:
        if k in m and m[k] is not None:
            return float(m[k])
    return float(default)


class EngineCollector:
    def __init__(self, state):
        self.state = state

    def collect(self):
        engine = self.state.engine
        m = engine.metrics() if engine is not None else {}
        n_prompt, t_prompt = _get(m, "prompt_tokens_total"), _get(m, "prompt_seconds_total")
        n_pred, t_pred = _get(m, "tokens_predicted_total"), _get(m, "tokens_predicted_seconds_total")
        n_decode, n_busy = _get(m, "n_decode_total"), _get(m, "n_busy_slots_total")
        counters = [
            ("prompt_tokens", "Number of prompt tokens processed.", n_prompt),
            ("prompt_seconds", "Prompt process time", t_prompt),
            ("tokens_predicted", "Number of generation tokens processed.", n_pred),
            ("tokens_predicted_seconds", "Predict process time", t_pred),
            ("n_decode", "Total number of llama_decode() calls", n_decode),
        ]
        for name, doc, value in counters:
            c = CounterMetricFamily(f"llamacpp:{name}", doc)
            c.add_metric([], value)
            yield c
        # llama-server declares this average a counter; prometheus-client would rename a counter to *_total
        gauges = [
            ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             n_busy / max(n_decode, 1.0)),
            # llama-server averages these since the previous scrape; ours are averages since the start
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s.", n_prompt / t_prompt if t_prompt else 0.0),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s.", n_pred / t_pred if t_pred else 0.0),
            ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", _get(m, "kv_cache_usage_ratio")),
            ("kv_cache_tokens", "KV-cache tokens.", _get(m, "kv_cache_tokens")),
            ("requests_processing", "Number of requests processing.", _get(m, "requests_processing")),
            ("requests_deferred", "Number of requests deferred.", _get(m, "requests_deferred")),
        ]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(f"llamacpp:{name}", doc)
            g.add_metric([], value)
            yield g


def make_registry(state) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(state))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
