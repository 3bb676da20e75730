"""Peer for benchmarks/speed_predict.py: torchvision's Faster R-CNN latency on one grey image (CPU).

Runs in its own virtual environment (torch + torchvision + numpy, never a dependency of the
package; see benchmarks/README.md), launched by speed_predict.py, which parses the RESULT lines:

    benchmarks/.venv-peer/bin/python benchmarks/speed_predict_peer.py --image slice.npy --size 600

The model is ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` in eval mode (random
weights: the latency does not depend on them), with its transform's ``min_size`` set to ``--size``
(and ``max_size`` to ``--max-size``) so it sees the same input size as our detector. The (H, W) float image is scaled to [0, 1] by its
0.5/99.5 percentiles and repeated on 3 channels; torchvision normalises it itself. For each value
of ``--proposals`` (``rpn_post_nms_top_n_test``; torchvision's default is 1000) one line

    RESULT proposals=<n> median_s=<seconds> cpu_s=<seconds> runs=<n>

is printed: the medians of the wall time and of the process CPU time (all threads) of
``--repeats`` forward passes after ``--warmup``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn

TORCHVISION_DEFAULT_PROPOSALS = 1000


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) real image -> (3, H, W) float32 in [0, 1] (robust 0.5/99.5 % range, grey repeated)."""
    low, high = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((image.astype(np.float32) - low) / max(high - low, 1e-12), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(np.repeat(scaled[None], 3, axis=0), dtype=np.float32))


def latencies(model: torch.nn.Module, batch: list[torch.Tensor], repeats: int,
              warmup: int) -> tuple[list[float], list[float]]:
    """(wall times, process CPU times) in s of ``repeats`` forward passes after ``warmup`` untimed ones."""
    walls, cpus = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            model(batch)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help=".npy file holding one (H, W) image")
    parser.add_argument("--size", type=int, default=600, help="transform min_size (shorter side)")
    parser.add_argument("--max-size", type=int, default=1000, help="transform max_size (our Config.im_max_size)")
    parser.add_argument("--proposals", type=int, nargs="+", default=[TORCHVISION_DEFAULT_PROPOSALS],
                        help="rpn_post_nms_top_n_test values to time")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    image = np.load(args.image)
    batch = [to_tensor(image)]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"input {image.shape[1]}x{image.shape[0]}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    for proposals in args.proposals:
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=args.size,
                                        max_size=args.max_size,
                                        rpn_post_nms_top_n_test=proposals).eval()
        walls, cpus = latencies(model, batch, args.repeats, args.warmup)
        print(f"RESULT proposals={proposals} median_s={float(np.median(walls)):.4f} "
              f"cpu_s={float(np.median(cpus)):.4f} runs={len(walls)}", flush=True)


if __name__ == "__main__":
    main()
