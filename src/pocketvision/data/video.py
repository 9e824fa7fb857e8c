"""Video in, video out, frame by frame: the loop every `pocketvision filter` shares (OpenCV, extra ``[video]``).

``filter_frames`` opens the input (one-line errors for a missing file, an unreadable video, an unwritable
output), hands each BGR frame to the task's ``process`` and writes what it returns to a temporary file that is
renamed into place only when the whole video is done. Stage timings (decode, encode, plus whatever ``process``
adds) come back per frame.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quiet import silence_fd2
from ..errors import PocketVisionError


def cv2_module():
    try:
        import cv2
    except ImportError:
        raise PocketVisionError("filter needs OpenCV: pip install 'pocketvision[video]'") from None
    return cv2


def filter_frames(video: str | os.PathLike, out: str | os.PathLike,
                  process: Callable[[np.ndarray, float, dict[str, float]], np.ndarray],
                  max_frames: int | None = None, stages: tuple[str, ...] = ()) -> dict[str, Any]:
    """``process(frame_bgr, fps, times) -> frame_bgr`` for every frame (it adds its own stages to ``times``).
    -> {output, frames, size, seconds, fps, ms_per_frame}."""
    cv2 = cv2_module()
    video, out = Path(video), Path(out)
    if not video.exists():
        raise PocketVisionError(f"{video}: video not found.")
    with silence_fd2():  # FFmpeg prints its own complaint to fd 2; the user gets our one line
        cap = cv2.VideoCapture(str(video))
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not cap.isOpened():
        raise PocketVisionError(f"{video}: cannot open this video (not a video file, or a codec OpenCV lacks).")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    fps = fps if 1 <= fps <= 240 else 30.0
    if not ok:
        cap.release()
        raise PocketVisionError(f"{video}: cannot decode any frame.")
    fh, fw = frame.shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix or '.mp4'}")
    writer = None
    times = {"decode": 0.0, **{s: 0.0 for s in stages}, "encode": 0.0}
    n, t_start = 0, time.perf_counter()
    try:
        while ok:
            result = process(frame, fps, times)
            if writer is None:  # the first processed frame fixes the output size
                oh, ow = result.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (ow, oh))
                if not writer.isOpened():
                    raise PocketVisionError(f"{out}: cannot write a video here (use an .mp4 name in a writable "
                                            "folder).")
            t0 = time.perf_counter()
            writer.write(np.ascontiguousarray(result))
            times["encode"] += time.perf_counter() - t0
            n += 1
            if max_frames and n >= max_frames:
                break
            t0 = time.perf_counter()
            ok, frame = cap.read()
            times["decode"] += time.perf_counter() - t0
        writer.release()
        cap.release()
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.release()
        cap.release()
        tmp.unlink(missing_ok=True)
        raise
    total = time.perf_counter() - t_start
    return {"output": str(out), "frames": n, "size": [fw, fh], "seconds": round(total, 3),
            "fps": round(n / total, 1) if total else None,
            "ms_per_frame": {k: round(1000 * v / max(n, 1), 3) for k, v in times.items()}}
