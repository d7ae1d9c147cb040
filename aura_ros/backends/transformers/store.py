"""The model store: where built and copied models live, and how a build lands there atomically."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_ENV = "AURA_ROS_CACHE"
# A build directory left by a crashed process is removed after this long (a live build takes seconds).
_STALE_BUILD_S = 3600.0


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars inside (loading/saving a tiny model would print two per call
    into a node's log); the previous setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def default_model_dir() -> Path:
    """Where built models live: $AURA_ROS_CACHE, else ~/.cache/aura_ros."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aura_ros"


def build_atomically(target: Path, build: Callable[[Path], Any]) -> Path:
    """Run ``build(tmp_dir)`` and move the result to ``target`` in one rename.

    A reader therefore sees either no folder or a complete one, never a half-written model, even
    if the build crashes or two processes build at once (the second rename loses and its copy is
    discarded). Returns ``target``.
    """
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            log.info("%s was built by another process meanwhile; using that one", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_builds(target: Path) -> None:
    now = time.time()
    for d in target.parent.glob(f".{target.name}.build-*"):
        try:
            if now - d.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile
