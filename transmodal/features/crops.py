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
The square is then resized to the backbone's input size with the processor's own resampling (bilinear,
antialiased when shrinking, :func:`resize_squares`): this replaces the processor's resize + centre crop, which would cut the person out of a
non-square frame.

Keypoints are normalised to the same box: ``x' = (x - x1) / (x2 - x1)``, so a joint inside the crop lies in
[0, 1] whatever the crop size, matching what the backbone sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CROP_COLUMNS = ("crop_x1", "crop_y1", "crop_x2", "crop_y2")  # the clip's crop box in clips.parquet (pixels)


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
    boxes = np.asarray(boxes, dtype=np.float64).reshape(1, -1, 4)
    return tuple(int(v) for v in square_crop_boxes(boxes, [frame_width], [frame_height], margin)[0])


def square_crop_boxes(
    boxes: np.ndarray, frame_width: Sequence[int], frame_height: Sequence[int], margin: float
) -> np.ndarray:
    """:func:`square_crop_box` for N clips at once: boxes (N, T, 4), frame sizes (N,) -> (N, 4) int64.

    The same float64 operations element by element, so each row equals the one-clip result exactly.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    width = np.asarray(frame_width, dtype=np.int64)
    height = np.asarray(frame_height, dtype=np.int64)
    valid = np.isfinite(boxes).all(axis=-1)  # (N, T)
    found = valid.any(axis=1)  # (N,)
    # The union of the valid boxes; the whole frame where a clip has none.
    x1 = np.where(found, np.where(valid, boxes[..., 0], np.inf).min(axis=1, initial=np.inf), 0.0)
    y1 = np.where(found, np.where(valid, boxes[..., 1], np.inf).min(axis=1, initial=np.inf), 0.0)
    x2 = np.where(found, np.where(valid, boxes[..., 2], -np.inf).max(axis=1, initial=-np.inf), width)
    y2 = np.where(found, np.where(valid, boxes[..., 3], -np.inf).max(axis=1, initial=-np.inf), height)
    larger = np.maximum(x2 - x1, y2 - y1)
    side = np.minimum(larger * (1.0 + 2.0 * margin), np.maximum(width, height).astype(np.float64))
    side = np.maximum(np.floor(side + 0.5).astype(np.int64), 1)
    left = _place((x1 + x2) / 2 - side / 2, side, width)
    top = _place((y1 + y2) / 2 - side / 2, side, height)
    return np.stack([left, top, left + side, top + side], axis=1)


def _place(start: np.ndarray, side: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Whole-pixel start of a ``side`` window near ``start``: inside [0, extent] if it fits, else over it."""
    low, high = np.minimum(0, extent - side), np.maximum(0, extent - side)
    return np.clip(np.floor(start + 0.5), low, high).astype(np.int64)


def crop_frames(
    frames: np.ndarray,
    box: tuple[int, int, int, int],
    size: int,
    positions: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    reuse: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Cut ``box`` out of frames (black outside the frame) and resize it to ``size`` x ``size``.

    Args:
        frames: (N, H, W, 3) uint8, e.g. all kept frames of a video.
        box: square ``(x1, y1, x2, y2)`` from :func:`square_crop_box`.
        size: output side in pixels (the backbone's ``image_size``).
        positions: which frames, in order (repeats allowed); all of them when None. Only the box of the
            chosen frames is copied, never whole frames.
        out: (T, size, size, 3) uint8 to write into; a new array when None.
        reuse: ``{position: (size, size, 3) uint8}`` crops of the SAME box and frames made earlier (the
            previous clip of the video); those positions are copied, not resized again.

    Returns:
        (T, size, size, 3) uint8, T = len(positions). A repeated position (a padded clip) is resized once.
    """
    positions = range(len(frames)) if positions is None else positions
    _, h, w, c = frames.shape
    x1, y1, x2, y2 = box
    side = x2 - x1
    if out is None:
        out = np.empty((len(positions), size, size, c), dtype=frames.dtype)
    first: dict[int, int] = {}  # position -> its first index in out
    for i, position in enumerate(positions):
        first.setdefault(int(position), i)
    fresh = [position for position in first if reuse is None or position not in reuse]
    if fresh:
        if x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h:
            squares = frames[:, y1:y2, x1:x2][fresh]  # (F, side, side, 3): copies only the boxes
        else:  # black where the square leaves the frame
            squares = np.zeros((len(fresh), side, side, c), dtype=frames.dtype)
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            squares[:, sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frames[:, sy1:sy2, sx1:sx2][fresh]
        for crop, position in zip(resize_squares(squares, size), fresh, strict=True):
            out[first[position]] = crop
    for i, position in enumerate(positions):
        position = int(position)
        if first[position] != i:  # a repeat: the same frame and box give the same pixels
            out[i] = out[first[position]]
        elif reuse is not None and position in reuse:
            out[i] = reuse[position]
    return out


def resize_squares(squares: np.ndarray, size: int) -> np.ndarray:
    """(F, side, side, 3) uint8 -> (F, size, size, 3) uint8: bilinear with antialiasing when shrinking.

    The resampling of the checkpoint's own image processor (PIL's bilinear filter, whose support widens with
    the scale factor when shrinking; equal to it within one level, tested), run as one call for all the
    frames on torch's uint8 kernel: ~0.3 ms for 16 frames of 110 px to 64 px, against ~1.4 ms for 16
    ``cv2.resize(INTER_AREA)`` calls (measured on the 2-core CPU). Integer arithmetic: the same pixels on
    every run.
    """
    if squares.shape[1] == size:
        return squares
    planes = torch.from_numpy(np.ascontiguousarray(squares)).permute(0, 3, 1, 2)  # channels-last view
    resized = F.interpolate(planes, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())  # (F, size, size, 3)


@dataclass(frozen=True)
class PixelNormalizer:
    """``(pixel * rescale_factor - mean) / std`` per channel, as the checkpoint's own image processor does it.

    Applied through a (3, 256) float32 look-up table: a uint8 pixel has 256 values, so the table holds
    exactly the float32 results of the formula, and ``cv2.LUT`` per channel replaces the arithmetic. At
    224 px this is ~1.3 ms per 16-frame clip against 7-10 ms for a numpy gather and more for torch
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
        """Write one clip (T, S, S, 3) uint8 RGB into ``out`` (T, 3, S, S) float32, channel planes first.

        One ``cv2.split`` of the whole clip (seen as a (T*S, S) 3-channel image) gives each channel of every
        frame; one ``cv2.LUT`` per channel then fills ``out[:, c]``, which seen as T rows of S*S values is a
        plain strided 2-D array. 1 + 3 calls a clip rather than 4 per frame: at 64 px the per-call cost was
        most of the work (0.15 against 0.25 ms a clip; 1.3 against 1.4 ms at 224 px).
        """
        t, h, w, c = clip.shape
        if out.shape != (t, c, h, w) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous ({t}, {c}, {h}, {w}) array, got {out.shape}")
        planes = cv2.split(np.ascontiguousarray(clip).reshape(t * h, w, c))  # c x (T*S, S) uint8
        rows = out.reshape(t, c * h * w)  # a view: out is contiguous
        for channel, plane in enumerate(planes):
            span = slice(channel * h * w, (channel + 1) * h * w)
            cv2.LUT(plane.reshape(t, h * w), self.table[channel], dst=rows[:, span])  # in place

    def on_device(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, T, S, S, 3) uint8 RGB on any device -> (B, T, 3, S, S) float32 there: the same table, looked
        up where the crops are, so the values are those of :meth:`normalize_into` bit for bit. The features
        stage uses it on an accelerator, which then receives a quarter of the bytes (uint8, not float32) and
        no host thread normalises."""
        table = torch.from_numpy(self.table.reshape(-1)).to(crops.device)  # (3 * 256,) channel-major
        offsets = torch.arange(0, 3 * 256, 256, device=crops.device, dtype=torch.int32).view(1, 1, 3, 1, 1)
        index = crops.permute(0, 1, 4, 2, 3).int() + offsets  # int32 indices: half of int64's bytes
        return table[index].contiguous()  # the host path's layout (the lookup keeps the permuted strides)

    def __call__(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, T, S, S, 3) uint8 RGB -> (B, T, 3, S, S) float32 pixel_values for VideoMAE."""
        crops = np.asarray(crops, dtype=np.uint8)
        b, t, h, w, c = crops.shape
        pixels = np.empty((b, t, c, h, w), dtype=np.float32)
        for clip, out in zip(crops, pixels, strict=True):
            self.normalize_into(clip, out)
        return torch.from_numpy(pixels)


def align_pose(
    xy: np.ndarray, score: np.ndarray, box: Sequence[float]
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
    boxes = np.asarray(box, dtype=np.float64).reshape(1, 4)
    xy, score, mask = align_poses(np.asarray(xy)[None], np.asarray(score)[None], boxes)
    return xy[0], score[0], mask[0]


def align_poses(
    xy: np.ndarray, score: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`align_pose` for N clips at once: xy (N, T, J, 2), score (N, T, J), boxes (N, 4)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    origin = boxes[:, None, None, :2]  # (N, 1, 1, 2)
    extent = boxes[:, None, None, 2:] - origin
    score = np.asarray(score, dtype=np.float64)
    mask = np.isfinite(xy).all(axis=-1) & np.isfinite(score) & (score > 0)  # (N, T, J)
    unit = (np.asarray(xy, dtype=np.float64) - origin) / extent  # (N, T, J, 2)
    unit = np.where(mask[..., None], unit, 0.0)
    return unit.astype(np.float32), np.where(mask, score, 0.0).astype(np.float32), mask
