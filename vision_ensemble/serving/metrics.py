"""The server's Prometheus metrics (`GET /metrics`): requests by route and status, their latency (and, for those
answered, its part after the upload arrived), the admission queue's depth and each member's inference time.

Each server gets its own CollectorRegistry, not prometheus_client's global one, so several apps in one process (the
tests) keep separate counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..evaluation.ensemble import Ensemble
from .admission import Admission

# A refusal should take milliseconds and an admitted request up to the 10 s budget (config.ADMISSION_QUEUE).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MEMBER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self, admission: Admission, ensemble: Ensemble | None):
        self.registry = CollectorRegistry()
        self.requests = Counter("vision_ensemble_requests", "Classification requests answered, by route ('api': "
                                "POST /api/predict, 'classify': the Space's tab, 'upload': the Space's uploads) and "
                                "HTTP status (the tab's too)",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("vision_ensemble_request_seconds", "Time from a classification request's start to "
                                 "its answer (the upload's arrival included)", ["route", "status"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.after_upload = Histogram("vision_ensemble_answer_after_upload_seconds", "Time from an answered (200) "
                                      "classification's upload having arrived to its answer: waiting for decoding "
                                      "and a slot, decoding and the ensemble; the part of the latency the admission "
                                      "bounds (config.ADMISSION_QUEUE), without the client's network",
                                      ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        queue = Gauge("vision_ensemble_queue_requests", "Classification requests taken on: 'running' the ensemble, "
                      "'waiting' (receiving, decoding or waiting for a slot)", ["state"], registry=self.registry)
        queue.labels("running").set_function(lambda: admission.running)
        queue.labels("waiting").set_function(lambda: admission.waiting)
        Gauge("vision_ensemble_queue_capacity", "Requests taken on at once, running and waiting; more are refused "
              "with 503", registry=self.registry).set(admission.capacity)
        member_seconds = Histogram("vision_ensemble_member_inference_seconds", "One member's part of a prediction "
                                   "(its preprocessing and network, flip TTA included)", ["member"],
                                   buckets=MEMBER_BUCKETS, registry=self.registry)
        if ensemble is not None:
            ensemble.member_timer = lambda source, seconds: member_seconds.labels(source).observe(seconds)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_after_upload(self, route: str, seconds: float) -> None:
        self.after_upload.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
