"""The OCR service's live settings (changeable through etcd without a restart) and how they apply."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from mesh.live_config import LOG_LEVELS, LiveSetting

if TYPE_CHECKING:
    from ocr_svc.server import OcrInstance

TABLE: dict[str, LiveSetting] = {
    s.name: s
    for s in (
        LiveSetting("queue_depth", int, "hard cap on waiting requests (-1: none)", minimum=-1),
        LiveSetting("max_queue_wait_s", float, "longest predicted wait admitted, in seconds", minimum=0.1),
        LiveSetting("max_queued_mb", int, "memory the waiting images may hold, in MiB", minimum=1),
        LiveSetting("max_image_bytes", int, "largest accepted upload in bytes", minimum=1),
        LiveSetting("max_image_pixels", int, "largest accepted image in pixels", minimum=1),
        LiveSetting("recycle_after_jobs", int, "replace a worker after this many jobs (0: never)", minimum=0),
        LiveSetting("max_worker_rss_mb", int, "replace a worker above this RSS (0: never)", minimum=0),
        LiveSetting("log_level", str, "log level", choices=LOG_LEVELS),
    )
}


def base_values(instance: OcrInstance) -> dict[str, Any]:
    """The instance's own values, in force when no override is set."""
    c = instance.config
    return {
        "queue_depth": c.queue_depth,
        "max_queue_wait_s": c.max_queue_wait_s,
        "max_queued_mb": c.max_queued_mb,
        "max_image_bytes": c.max_image_bytes,
        "max_image_pixels": c.max_image_pixels,
        "recycle_after_jobs": c.recycle_after_jobs,
        "max_worker_rss_mb": c.max_worker_rss_mb,
        "log_level": c.log_level,
    }


def apply(instance: OcrInstance, values: dict[str, Any]) -> None:
    """Put validated values into force on a running instance."""
    instance.queue.policy = dataclasses.replace(
        instance.queue.policy,
        max_queued=values["queue_depth"],
        max_queue_wait_s=float(values["max_queue_wait_s"]),
        max_queued_bytes=values["max_queued_mb"] * 2**20,
    )
    limits = dataclasses.replace(
        instance.recognizer.limits,
        max_bytes=values["max_image_bytes"],
        max_pixels=values["max_image_pixels"],
    )
    instance.recognizer.limits = limits
    instance.pool.limits = limits
    instance.publish_limits()
    instance.pool.settings.recycle_after_jobs = values["recycle_after_jobs"]
    instance.pool.settings.max_worker_rss_bytes = values["max_worker_rss_mb"] * 2**20
    logging.getLogger().setLevel(str(values["log_level"]).upper())
