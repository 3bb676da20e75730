"""RPN training targets (calc_rpn), augmentation and the training sample stream.

numpy only. Boxes are float ``[x1, y1, x2, y2]`` pixels, 0-based, x right, y down, width = x2 - x1.
Anchors and RPN targets live in the resized (network-input) image; augmentation works on the
original image before resizing. The anchors themselves live in :mod:`keras_frcnn_cryo.anchors`
(re-exported here under keras-frcnn's module name).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np

from .anchors import anchor_shapes, generate_anchors, get_feature_map_size, propose_anchor_scales
from .boxes import BoxCoder, as_boxes, iou_matrix
from .config import Config
from .errors import CryoError
from .preprocessing import resize_scale

__all__ = ["Prefetch", "anchor_shapes", "augment", "calc_rpn", "generate_anchors", "get_feature_map_size",
           "iter_training_samples", "jitter_appearance", "jittered_scale", "propose_anchor_scales",
           "record_boxes"]

AUG_SCALE_MULTIPLE = 32   # scale jitter snaps the shorter side to this many px: few distinct input shapes


def calc_rpn(
    gt_boxes: np.ndarray, img_width: int, img_height: int, cfg: Config, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """RPN targets for one image of ``img_width`` x ``img_height`` network-input pixels.

    gt_boxes: (N, 4) in network-input pixels (N may be 0). Anchor labels:
      * positive: max IoU over gt > ``cfg.rpn_max_overlap``, or the anchor is (one of, ties included)
        the best anchor of some gt box with that best IoU > 0;
      * negative: max IoU < ``cfg.rpn_min_overlap`` and not positive (every anchor when N == 0);
      * otherwise neutral (not trained on).
    With ``cfg.rpn_ignore_cross_boundary`` anchors crossing the image edge are neither positive nor
    negative and do not compete for a gt's best anchor. Exception: a gt box that overlaps no inside
    anchor at all (e.g. the image is smaller than the smallest anchor) gets its best anchor(s) over
    all anchors, crossing ones included, as positives, so no object is left without a target.
    Sampling: at most ``int(cfg.rpn_num_regions * cfg.rpn_max_positive_fraction)`` positives, then
    negatives up to ``cfg.rpn_num_regions`` in all, without replacement.

    Returns (keras-frcnn layout), with K = cfg.num_anchors and (feat_w, feat_h) from
    :func:`get_feature_map_size`:
      y_rpn_cls (feat_h, feat_w, 2K) float32: ``[..., :K]`` 1 where the anchor is sampled,
        ``[..., K:]`` 1 where it is positive;
      y_rpn_regr (feat_h, feat_w, 8K) float32: ``[..., :4K]`` 1 on the 4 slots ``4k..4k+3`` of
        sampled positives, ``[..., 4K:]`` ``BoxCoder.rpn(cfg).encode(anchor, best gt)`` in
        the slots of every positive (0 elsewhere).
    """
    gts = as_boxes(gt_boxes, "gt_boxes")
    feat_w, feat_h = get_feature_map_size(img_width, img_height, cfg.rpn_stride)
    num_k = cfg.num_anchors
    anchors = generate_anchors(feat_w, feat_h, cfg).reshape(-1, 4)
    num_anchors = anchors.shape[0]

    if cfg.rpn_ignore_cross_boundary:
        inside = (
            (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= img_width) & (anchors[:, 3] <= img_height)
        )
    else:
        inside = np.ones(num_anchors, dtype=bool)

    best_gt = np.zeros(num_anchors, dtype=np.int64)
    if gts.shape[0] == 0:
        positive = np.zeros(num_anchors, dtype=bool)
        negative = inside.copy()
    else:
        overlaps = iou_matrix(anchors, gts)                                   # (A, N)
        best_gt = np.argmax(overlaps, axis=1)
        max_iou = overlaps[np.arange(num_anchors), best_gt]
        # each gt's best anchor(s) among the inside anchors; -1 where none is inside
        inside_overlaps = np.where(inside[:, None], overlaps, -1.0)
        gt_best_inside = inside_overlaps.max(axis=0)
        forced = ((inside_overlaps == gt_best_inside[None, :]) & (gt_best_inside > 0)[None, :]).any(axis=1)
        # gts that overlap no inside anchor: their best anchor(s) over all anchors
        orphan = gt_best_inside <= 0
        if orphan.any():
            orphan_overlaps = overlaps[:, orphan]
            orphan_best = orphan_overlaps.max(axis=0)
            forced |= ((orphan_overlaps == orphan_best[None, :]) & (orphan_best > 0)[None, :]).any(axis=1)
        positive = (inside & (max_iou > cfg.rpn_max_overlap)) | forced
        negative = inside & (max_iou < cfg.rpn_min_overlap) & ~positive

    max_positive = int(cfg.rpn_num_regions * cfg.rpn_max_positive_fraction)
    pos_idx = np.flatnonzero(positive)
    neg_idx = np.flatnonzero(negative)
    chosen_pos = rng.choice(pos_idx, size=min(max_positive, pos_idx.size), replace=False)
    num_neg = max(0, min(int(cfg.rpn_num_regions) - chosen_pos.size, neg_idx.size))
    chosen_neg = rng.choice(neg_idx, size=num_neg, replace=False)

    sampled = np.zeros(num_anchors, dtype=bool)
    sampled[chosen_pos] = True
    sampled[chosen_neg] = True
    sampled_positive = np.zeros(num_anchors, dtype=bool)
    sampled_positive[chosen_pos] = True

    targets = np.zeros((num_anchors, 4), dtype=np.float64)
    if pos_idx.size:
        targets[pos_idx] = BoxCoder.rpn(cfg).encode(anchors[pos_idx], gts[best_gt[pos_idx]])

    y_rpn_cls = np.concatenate(
        [sampled.reshape(feat_h, feat_w, num_k), positive.reshape(feat_h, feat_w, num_k)], axis=-1
    ).astype(np.float32)
    regr_mask = np.repeat(sampled_positive[:, None], 4, axis=1)
    y_rpn_regr = np.concatenate(
        [regr_mask.reshape(feat_h, feat_w, 4 * num_k), targets.reshape(feat_h, feat_w, 4 * num_k)], axis=-1
    ).astype(np.float32)
    return y_rpn_cls, y_rpn_regr


def _rot90_ccw(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.rot90(image)`` (a quarter turn as displayed, x right / y down) and the boxes with it."""
    width = image.shape[1]
    turned = np.stack([boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], axis=1)
    return np.rot90(image), turned


def augment(
    image: np.ndarray, boxes: np.ndarray, cfg: Config, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and quarter turns of an image (H, W) and its boxes (N, 4), in that order.

    Horizontal flip (``cfg.use_horizontal_flips``, probability 0.5): ``x1' = W - x2, x2' = W - x1``;
    vertical flip (``cfg.use_vertical_flips``, probability 0.5) likewise in y; rotation
    (``cfg.rot_90``) by k quarter turns, k uniform in {0, 1, 2, 3} (the image may change from
    H x W to W x H). A disabled option draws no random number. Returns a new contiguous image and
    new float64 boxes; the inputs are not modified.
    """
    img = np.asarray(image)
    bxs = as_boxes(boxes, "boxes").copy()
    if cfg.use_horizontal_flips and rng.random() < 0.5:
        width = img.shape[1]
        img = img[:, ::-1]
        bxs[:, [0, 2]] = width - bxs[:, [2, 0]]
    if cfg.use_vertical_flips and rng.random() < 0.5:
        height = img.shape[0]
        img = img[::-1, :]
        bxs[:, [1, 3]] = height - bxs[:, [3, 1]]
    if cfg.rot_90:
        for _ in range(int(rng.integers(4))):
            img, bxs = _rot90_ccw(img, bxs)
    return np.ascontiguousarray(img), bxs


def jittered_scale(height: int, width: int, cfg: Config, rng: np.random.Generator) -> float | None:
    """Resize factor for one training image of ``height`` x ``width`` px under scale jitter, or None
    when ``cfg.aug_scale_range`` is 0 (the im_size rule applies; no random number is drawn).

    The im_size rule's factor (:func:`preprocessing.resize_scale`) times f, log-uniform in
    [1 / (1 + r), 1 + r]; the shorter side is then snapped to a multiple of AUG_SCALE_MULTIPLE px
    (at least one multiple), so the compiled step sees a handful of input shapes, not one per image.
    """
    r = float(cfg.aug_scale_range)
    if r <= 0:
        return None
    shorter = float(min(height, width))
    factor = float(np.exp(rng.uniform(-np.log1p(r), np.log1p(r))))
    side = resize_scale(float(height), float(width), cfg) * shorter * factor
    snapped = max(AUG_SCALE_MULTIPLE, AUG_SCALE_MULTIPLE * round(side / AUG_SCALE_MULTIPLE))
    return snapped / shorter


def jitter_appearance(image: np.ndarray, cfg: Config, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Blur, then noise, on a raw training image (H, W) or (H, W, C) before preprocessing.

    ``scale``: the factor the image will be resized by (network-input px per image px), so that the
    blur's sigma, drawn uniform in [0, ``cfg.aug_blur_max_sigma``], is in network-input pixels. Noise:
    Gaussian, std drawn uniform in [0, ``cfg.aug_noise_max``] times the image's own std (every channel
    gets its own noise, at the same std). Returns float32 (the input when both are off: no random
    number is drawn then). Models volumes of lower SNR and resolution than the training ones.
    """
    blur_max, noise_max = float(cfg.aug_blur_max_sigma), float(cfg.aug_noise_max)
    if blur_max <= 0 and noise_max <= 0:
        return image
    out = np.asarray(image, dtype=np.float32)
    if blur_max > 0:
        sigma = rng.uniform(0.0, blur_max) / max(float(scale), 1e-6)
        if sigma > 0.05:
            out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), sigmaX=sigma, sigmaY=sigma,
                                   borderType=cv2.BORDER_REFLECT)
            out = out.reshape(np.shape(image))   # cv2 drops a single channel axis
    if noise_max > 0:
        std = rng.uniform(0.0, noise_max) * float(out.std())
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(std)
    return out


def record_boxes(record: dict[str, Any], cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float64 boxes and (N,) int64 class indices (``cfg.class_mapping``) of one record.

    Raises CryoError naming the record's file for a class that ``cfg.class_mapping`` lacks.
    """
    bboxes = record.get("bboxes", [])
    boxes = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in bboxes], dtype=np.float64).reshape(-1, 4)
    unknown = sorted({b["class"] for b in bboxes} - set(cfg.class_mapping))
    if unknown:
        raise CryoError(f"class(es) {', '.join(map(repr, unknown))} not in the class mapping", record.get("filepath"))
    labels = np.array([cfg.class_mapping[b["class"]] for b in bboxes], dtype=np.int64)
    return boxes, labels


def iter_training_samples(
    records: list[dict[str, Any]],
    cfg: Config,
    rng: np.random.Generator,
    load_image: Callable[[str], np.ndarray],
    prepare_image: Callable[[np.ndarray, Config, float | None], tuple[np.ndarray, tuple[float, float]]],
    augment_images: bool = True,
) -> Iterator[dict[str, Any]]:
    """Endless stream of RPN training samples, one image at a time.

    Each pass visits every record once in a fresh random order. Per record: ``image =
    load_image(record['filepath'])`` (2D, or (H, W, 3) slabs); if ``augment_images``: :func:`augment`
    with its boxes, then :func:`jittered_scale` and :func:`jitter_appearance` (each a no-op when its
    Config field is 0); ``x_img, (sx, sy) = prepare_image(image, cfg, scale)`` (scale None: the
    im_size rule) with x_img (H', W', 3) float32, boxes scaled by ``[sx, sy, sx, sy]``, then
    :func:`calc_rpn` on the resized image. Yields dicts:
      'x_img' (1, H', W', 3); 'y_rpn_cls' (1, fh, fw, 2K); 'y_rpn_regr' (1, fh, fw, 8K);
      'boxes' (N, 4) float64 in network-input pixels; 'labels' (N,) int64; 'record' the record.
    """
    if not records:
        raise CryoError("no training images: the annotation list is empty")
    while True:
        for position in rng.permutation(len(records)):
            record = records[int(position)]
            boxes, labels = record_boxes(record, cfg)
            image = load_image(record["filepath"])
            scale = None
            if augment_images:
                image, boxes = augment(image, boxes, cfg, rng)
                scale = jittered_scale(image.shape[0], image.shape[1], cfg, rng)
                net_scale = resize_scale(image.shape[0], image.shape[1], cfg, scale)
                image = jitter_appearance(image, cfg, rng, net_scale)
            x_img, (scale_x, scale_y) = prepare_image(image, cfg, scale)
            resized = boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float64)
            height, width = x_img.shape[:2]
            y_rpn_cls, y_rpn_regr = calc_rpn(resized, width, height, cfg, rng)
            yield {
                "x_img": x_img[None],
                "y_rpn_cls": y_rpn_cls[None],
                "y_rpn_regr": y_rpn_regr[None],
                "boxes": resized,
                "labels": labels,
                "record": record,
            }


class Prefetch:
    """Runs a sample stream ``depth`` items ahead in a background thread, so that reading,
    augmenting and preprocessing the next images overlaps the training step.

    ``samples`` must be the only user of ``rng`` (the stream's own generator): the items and their
    order are then exactly those of the stream read directly, and :attr:`rng_state` (the state of
    ``rng`` right after the item last returned was made) restarts the stream there on resume.
    An exception raised by the stream is raised again by ``next`` in the caller's thread. ``depth``
    0 reads the stream directly (no thread). :meth:`close` stops the thread (call it before closing
    files the stream reads).
    """

    _END = object()

    def __init__(self, samples: Iterator[dict[str, Any]], rng: np.random.Generator, depth: int):
        self._samples, self._rng, self.depth = samples, rng, int(depth)
        self.rng_state: dict[str, Any] = rng.bit_generator.state
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(self.depth, 1))
        self._thread = None
        self._finished = False
        if self.depth > 0:
            self._thread = threading.Thread(target=self._produce, name="training-samples", daemon=True)
            self._thread.start()

    def _produce(self) -> None:
        def put(item: tuple) -> bool:
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for sample in self._samples:
                if not put((sample, self._rng.bit_generator.state, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
            put((None, None, exc))
            return
        put((self._END, None, None))

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._thread is None:
            sample = next(self._samples)
            self.rng_state = self._rng.bit_generator.state
            return sample
        if self._finished:
            raise StopIteration
        sample, state, error = self._queue.get()
        if error is not None or sample is self._END:
            self._finished = True
            self._thread.join()
            if error is not None:
                raise error
            raise StopIteration
        self.rng_state = state
        return sample

    def close(self) -> None:
        """Stop the background thread (waits for the image it is preparing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
