"""Person-centric square crops of a clip, their pixel normalisation, and the pose aligned to the crop.

Crop geometry (one box per clip, so the person moves inside a fixed window and the motion stays visible):
1. the union of the primary track's boxes over the clip's frames;
2. enlarged by ``clips.crop_margin`` times the union's larger side on each side;
3. made square around the union's centre (side = larger side * (1 + 2 * margin)), capped at the frame's
   larger side (a bigger square would only add black), rounded to whole pixels (half up);
4. shifted to stay inside the frame; on an axis where the square is larger than the frame (a tall person in a
   160 x 120 KTH frame) it covers the whole frame on that axis, as near the person's centre as it can, and
   the part outside the frame is black (zero) pixels.
The box is in whole pixels, ``x2 - x1 == y2 - y1 == side``; only in step 4's case does it leave the frame.
The square is then resized to the backbone's input size (cv2 INTER_AREA when shrinking, INTER_LINEAR when
enlarging): this replaces the processor's resize + centre crop, which would cut the person out of a
non-square frame.

Keypoints are normalised to the same box: ``x' = (x - x1) / (x2 - x1)``, so a joint inside the crop lies in
[0, 1] whatever the crop size, matching what the backbone sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
import torch


def square_crop_box(
    boxes: np.ndarray, frame_width: int, frame_height: int, margin: float
) -> tuple[int, int, int, int]:
    """The square crop ``(x1, y1, x2, y2)`` in whole pixels for a clip's person boxes.

    Args:
        boxes: (T, 4) x1, y1, x2, y2 in pixels; rows with NaN (frames without a box) are ignored.
        frame_width, frame_height: the frame size in pixels.
        margin: ``clips.crop_margin``, a fraction of the union's larger side added on each side.

    Without any box the crop is the whole frame (as a square, padded on the short axis).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[np.isfinite(boxes).all(axis=1)]
    if len(boxes):
        x1, y1 = boxes[:, 0].min(), boxes[:, 1].min()
        x2, y2 = boxes[:, 2].max(), boxes[:, 3].max()
    else:
        x1, y1, x2, y2 = 0.0, 0.0, float(frame_width), float(frame_height)
    larger = max(x2 - x1, y2 - y1)
    side = min(larger * (1.0 + 2.0 * margin), float(max(frame_width, frame_height)))
    side = max(int(np.floor(side + 0.5)), 1)
    left = _place((x1 + x2) / 2 - side / 2, side, frame_width)
    top = _place((y1 + y2) / 2 - side / 2, side, frame_height)
    return left, top, left + side, top + side


def _place(start: float, side: int, extent: int) -> int:
    """Whole-pixel start of a ``side`` window near ``start``: inside [0, extent] if it fits, else over it."""
    low, high = min(0, extent - side), max(0, extent - side)
    return int(np.clip(np.floor(start + 0.5), low, high))


def crop_frames(
    frames: np.ndarray, box: tuple[int, int, int, int], size: int, positions: Sequence[int] | None = None
) -> np.ndarray:
    """Cut ``box`` out of frames (black outside the frame) and resize it to ``size`` x ``size``.

    Args:
        frames: (N, H, W, 3) uint8, e.g. all kept frames of a video.
        box: square ``(x1, y1, x2, y2)`` from :func:`square_crop_box`.
        size: output side in pixels (the backbone's ``image_size``).
        positions: which frames, in order (repeats allowed); all of them when None. Cropping views of the
            chosen frames avoids copying whole frames first.

    Returns:
        (T, size, size, 3) uint8, T = len(positions).
    """
    positions = range(len(frames)) if positions is None else positions
    _, h, w, c = frames.shape
    x1, y1, x2, y2 = box
    side = x2 - x1
    out = np.empty((len(positions), size, size, c), dtype=frames.dtype)
    inside = x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h
    if not inside:
        canvas = np.zeros((side, side, c), dtype=frames.dtype)  # black where the square leaves the frame
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    for i, position in enumerate(positions):
        if inside:
            square = frames[position, y1:y2, x1:x2]  # (side, side, 3), a view
        else:
            canvas[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frames[position, sy1:sy2, sx1:sx2]
            square = canvas  # the pasted region is rewritten every frame, the black border never
        if side == size:
            out[i] = square
        else:
            cv2.resize(square, (size, size), dst=out[i], interpolation=interpolation)
    return out


@dataclass(frozen=True)
class PixelNormalizer:
    """``(pixel * rescale_factor - mean) / std`` per channel, as the checkpoint's own image processor does it.

    Applied through a (3, 256) float32 look-up table: a uint8 pixel has 256 values, so the table holds
    exactly the float32 results of the formula, and ``cv2.LUT`` per channel plane replaces the arithmetic.
    At 224 px this is 2.4 ms per 16-frame clip against 7-10 ms for a numpy gather and more for torch
    arithmetic on the permuted batch (measured on the 2-core CPU), with bit-identical results.
    """

    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float

    @classmethod
    def from_processor(cls, processor) -> PixelNormalizer:
        """Take mean/std/rescale from a loaded VideoMAE image processor, honouring its do_* switches."""
        mean = processor.image_mean if processor.do_normalize else (0.0, 0.0, 0.0)
        std = processor.image_std if processor.do_normalize else (1.0, 1.0, 1.0)
        factor = processor.rescale_factor if processor.do_rescale else 1.0
        if isinstance(mean, int | float):
            mean = (mean,) * 3
        if isinstance(std, int | float):
            std = (std,) * 3
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std), float(factor))

    @cached_property
    def table(self) -> np.ndarray:
        """(3, 1, 256) float32: the normalised value of every uint8 level, one (1, 256) cv2.LUT row per channel."""
        levels = torch.arange(256, dtype=torch.float32)[None]  # (1, 256)
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None]  # (3, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None]
        return ((levels * self.rescale_factor - mean) / std).numpy()[:, None]  # (3, 1, 256)

    def normalize_into(self, clip: np.ndarray, out: np.ndarray) -> None:
        """Write one clip (T, S, S, 3) uint8 RGB into ``out`` (T, 3, S, S) float32, channel planes first."""
        for t, frame in enumerate(clip):
            for channel, plane in enumerate(cv2.split(frame)):  # (S, S) uint8 each
                cv2.LUT(plane, self.table[channel], dst=out[t, channel])  # (S, S) float32, in place

    def __call__(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, T, S, S, 3) uint8 RGB -> (B, T, 3, S, S) float32 pixel_values for VideoMAE."""
        crops = np.asarray(crops, dtype=np.uint8)
        b, t, h, w, c = crops.shape
        pixels = np.empty((b, t, c, h, w), dtype=np.float32)
        for clip, out in zip(crops, pixels, strict=True):
            self.normalize_into(clip, out)
        return torch.from_numpy(pixels)


def align_pose(
    xy: np.ndarray, score: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints in the crop's unit square, with a presence mask.

    Args:
        xy: (T, J, 2) pixels, NaN when missing.
        score: (T, J) confidence, 0 when missing.
        box: the clip's crop ``(x1, y1, x2, y2)`` in pixels.

    Returns:
        xy (T, J, 2) float32 with ``x' = (x - x1) / (x2 - x1)`` (likewise y), score (T, J) float32,
        mask (T, J) bool, True where the joint is present (finite xy and score > 0). Masked joints have
        xy = 0 and score = 0.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    origin = np.array([x1, y1], dtype=np.float64)
    extent = np.array([x2 - x1, y2 - y1], dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    mask = np.isfinite(xy).all(axis=-1) & np.isfinite(score) & (score > 0)  # (T, J)
    unit = (np.asarray(xy, dtype=np.float64) - origin) / extent  # (T, J, 2)
    unit = np.where(mask[..., None], unit, 0.0)
    return unit.astype(np.float32), np.where(mask, score, 0.0).astype(np.float32), mask
