"""Train the demo brain-tumour model on synthetic phantoms and export it to ONNX.

A DEMO model trained on synthetic data, not for clinical use. It exists so that the reference
pipeline has a real network behind a real Triton server; its weights say nothing about patients.

    .venv/bin/python -m pip install -e '.[train]'    # torch: a training-only dependency
    .venv/bin/python models/train_brain_tumor.py      # ~3-5 min on 2 CPU cores

Data: ``radflow.demo.phantom.brain_phantom`` T1c volumes, seeds ``0 .. N_TRAIN-1`` (every fifth
tumour-free), half generated at the model size and half at random sizes and resized to it with
the operator's own preprocessing (``radflow.functions.triton_infer.preprocess``), so the network
sees exactly what the operator feeds it. Validation uses seeds from ``HELD_OUT_SEED`` upwards,
never seen in training, through the full serve path (ONNX Runtime on the exported file,
preprocess -> infer -> postprocess back to the source grid), and reports Dice.

Writes ``models/triton/brain_tumor_seg/1/model.onnx`` and ``models/brain_tumor_seg.metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, where the model repository's ``triton/``
# folder would shadow the ``triton`` compiler package that torch probes for: drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from radflow.demo.phantom import brain_phantom  # noqa: E402
from radflow.functions.triton_infer.preprocess import postprocess, preprocess, resize_nearest  # noqa: E402

MODEL_SIZE = (32, 64, 64)
HELD_OUT_SEED = 1_000_000
ROOT = Path(__file__).resolve().parent
ONNX_PATH = ROOT / "triton" / "brain_tumor_seg" / "1" / "model.onnx"
METRICS_PATH = ROOT / "brain_tumor_seg.metrics.json"


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class TinyUNet3D(nn.Module):
    """A three-level 3D U-Net (6-12-24 channels, ~48k parameters) ending in a 2-class softmax.

    BatchNorm, not InstanceNorm: training runs on crops and serving on the whole volume, and
    frozen batch statistics make the two agree (InstanceNorm would normalise each differently).
    """

    def __init__(self, ch: tuple[int, int, int] = (6, 12, 24)) -> None:
        super().__init__()
        a, b, c = ch
        self.enc1, self.enc2, self.bottom = block(1, a), block(a, b), block(b, c)
        self.up2 = nn.ConvTranspose3d(c, b, 2, stride=2)
        self.dec2 = block(2 * b, b)
        self.up1 = nn.ConvTranspose3d(b, a, 2, stride=2)
        self.dec1 = block(2 * a, a)
        self.head = nn.Conv3d(a, 2, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2))
        bt = self.bottom(F.max_pool3d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(bt), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def sample(seed: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """One training pair at the model size: (1, z, y, x) float32 image, (z, y, x) int64 label."""
    tumor = seed % 5 != 0
    if rng.random() < 0.5:
        shape = MODEL_SIZE
    else:
        shape = (rng.randint(20, 56), rng.randint(40, 112), rng.randint(40, 112))
    p = brain_phantom(shape, seed=seed, tumor=tumor)
    x = preprocess(p.t1c, MODEL_SIZE)[0]
    y = resize_nearest(p.label, MODEL_SIZE).astype(np.int64)
    return x, y


CROP = (24, 48, 48)


def crops(
    xs: torch.Tensor, ys: torch.Tensor, n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random crops of ``CROP`` (the net is fully convolutional; crops make steps cheap),
    half of them placed around a tumour voxel when the case has one."""
    bx, by = [], []
    for i in torch.randint(0, len(xs), (n,), generator=g).tolist():
        fg = torch.nonzero(ys[i])
        if len(fg) and torch.rand(1, generator=g).item() < 0.5:
            centre = fg[torch.randint(0, len(fg), (1,), generator=g).item()]
            lo = [
                int(c) - s // 2 + int(torch.randint(-s // 4, s // 4 + 1, (1,), generator=g))
                for c, s in zip(centre, CROP, strict=False)
            ]
        else:
            lo = [
                int(torch.randint(0, m - s + 1, (1,), generator=g))
                for m, s in zip(MODEL_SIZE, CROP, strict=False)
            ]
        lo = [min(max(v, 0), m - s) for v, m, s in zip(lo, MODEL_SIZE, CROP, strict=False)]
        sl = tuple(slice(v, v + s) for v, s in zip(lo, CROP, strict=False))
        bx.append(xs[i][(slice(None), *sl)])
        by.append(ys[i][sl])
    return torch.stack(bx), torch.stack(by)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def evaluate(onnx_path: Path, n: int, shapes: list[tuple[int, int, int]]) -> dict[str, object]:
    """Dice on held-out phantoms through the serve path (ONNX Runtime, resize back to source)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results: dict[str, object] = {}
    for shape in shapes:
        dices, empty_fp = [], []
        for i in range(n):
            seed = HELD_OUT_SEED + i
            tumor = i % 5 != 0
            p = brain_phantom(shape, seed=seed, tumor=tumor)
            out = sess.run(None, {"INPUT__0": preprocess(p.t1c, MODEL_SIZE)})[0]
            mask = postprocess(out, shape)
            if tumor:
                dices.append(dice(mask.astype(bool), p.label.astype(bool)))
            else:
                empty_fp.append(int(mask.sum()))
        results["x".join(map(str, shape))] = {
            "tumour_cases": len(dices),
            "dice_mean": round(float(np.mean(dices)), 4),
            "dice_min": round(float(np.min(dices)), 4),
            "tumour_free_cases": len(empty_fp),
            "tumour_free_max_voxels": max(empty_fp),
        }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n-train", type=int, default=320)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=50)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    t0 = time.time()
    data = [sample(s, rng) for s in range(args.n_train)]
    xs = torch.from_numpy(np.stack([d[0] for d in data]))
    ys = torch.from_numpy(np.stack([d[1] for d in data]))
    t_data = time.time() - t0
    print(f"{len(data)} training phantoms in {t_data:.0f} s", flush=True)

    model = TinyUNet3D()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=args.steps, pct_start=0.1
    )
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.steps):
        x, y = crops(xs, ys, args.batch, g)
        for axis in (2, 3, 4):  # random flips: the head is roughly symmetric, tumours are not
            if torch.rand(1, generator=g).item() < 0.5:
                x, y = x.flip(axis), y.flip(axis - 1)
        logits = model.logits(x)
        prob = torch.softmax(logits, 1)[:, 1]
        fg = (y == 1).float()
        inter = (prob * fg).sum()
        soft_dice = 1 - (2 * inter + 1) / (prob.sum() + fg.sum() + 1)
        loss = F.cross_entropy(logits, y) + soft_dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    t_train = time.time() - t0

    model.eval()
    ONNX_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros((1, 1, *MODEL_SIZE)),),
        str(ONNX_PATH),
        input_names=["INPUT__0"],
        output_names=["OUTPUT__0"],
        opset_version=17,
        dynamo=False,
    )
    metrics = {
        "model": "brain_tumor_seg",
        "note": "demo model trained on synthetic data, not for clinical use",
        "command": "models/train_brain_tumor.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "seed": args.seed,
        "parameters": n_params,
        "input": {"name": "INPUT__0", "shape": [1, 1, *MODEL_SIZE], "normalisation": "zscore"},
        "output": {
            "name": "OUTPUT__0",
            "shape": [1, 2, *MODEL_SIZE],
            "kind": "softmax, class 1 = tumour",
        },
        "training_seeds": [0, args.n_train - 1],
        "held_out_seeds_from": HELD_OUT_SEED,
        "train_seconds": round(t_train, 1),
        "threads": args.threads,
        "onnx_bytes": ONNX_PATH.stat().st_size,
        "validation": evaluate(ONNX_PATH, args.eval_n, [MODEL_SIZE, (48, 96, 96)]),
    }
    METRICS_PATH.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
