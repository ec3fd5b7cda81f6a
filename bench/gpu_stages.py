"""Each stage of the GPU path alone, on the same images (``bench/gpu_check.sh`` runs it)::

    python -m bench.gpu_stages --device cuda --model resnet18 --images 12000 --bases 256

Prints one JSON object: the device decode alone, the Pillow path alone on every core, the model
alone; ``bench.run --device cuda`` measures the ceiling and the pipeline on the same images.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from bench.ceiling import make_classifier
from bench.gpu import decode_alone, model_alone, pillow_alone
from bench.images import generate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_stages")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--bases", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sample", type=int, default=3000, help="images per stage (at most)")
    args = parser.parse_args()
    files = generate(args.images, bases=args.bases).files[: args.sample]
    classifier = make_classifier(args.model, args.device)
    prep = classifier.loaded.preprocessing
    device = torch.device(args.device)
    out = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "model": args.model,
        "precision": str(classifier.autocast or "fp32"),
        "decode_alone": decode_alone(files, prep, device, args.batch_size),
        "pillow_alone": pillow_alone(files, prep, os.cpu_count() or 1),
        "model_alone": model_alone(
            classifier, args.batch_size, batches=20 if device.type == "cuda" else 4
        ),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
