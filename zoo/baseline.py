"""Train the built-in ``resnet_small`` baseline on Fashion-MNIST and report what it costs.

``python -m zoo.baseline [--out model.pt] [--epochs N]`` prints parameters, MACs,
training time and held-out accuracy (plain torch), so the numbers quoted in the
docs can be re-measured on any machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from zoo.data import DEFAULT_ROOT, idx_splits
from zoo.models import resnet_small
from zoo.train import RESNET_SMALL_RECIPE, accuracy, train_classifier


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train with :data:`zoo.train.RESNET_SMALL_RECIPE` (overridable) and print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help="folder with MNIST-format IDX files")
    parser.add_argument("--epochs", type=float, default=float(RESNET_SMALL_RECIPE["epochs"]))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="save the trained state_dict here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    splits = idx_splits(root=args.root, seed=args.seed)
    model = resnet_small(num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    params = sum(p.numel() for p in model.parameters())
    macs = _count_macs(model, splits.input_shape)

    def log(step: int, loss: float, acc: float) -> None:
        print(f"step {step:5d}  loss {loss:.3f}  train acc {acc:.3f}  {time.perf_counter() - start:6.1f}s", flush=True)

    start = time.perf_counter()
    cpu_start = time.process_time()
    train_classifier(model, splits.train, epochs=args.epochs, batch_size=int(RESNET_SMALL_RECIPE["batch_size"]),
                     lr=float(RESNET_SMALL_RECIPE["lr"]), optimizer=str(RESNET_SMALL_RECIPE["optimizer"]),
                     seed=args.seed, log=log, log_every=200)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    test_acc = accuracy(model, splits.eval.inputs, splits.eval.labels)
    result = {"params": params, "macs": macs, "train_s": wall, "train_cpu_s": cpu, "test_accuracy": test_acc}
    print(f"params {params}  MACs {macs:.0f}  train {wall:.1f}s wall ({cpu:.1f}s CPU)  "
          f"test accuracy {test_acc:.4f} on {len(splits.eval.labels)} images")
    if args.out is not None:
        torch.save(model.state_dict(), args.out)
        print(f"saved {args.out}")
    return result


def _count_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """MACs of one forward pass, counted by torch-pruning's op counter."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, torch.randn(1, *input_shape))
    model.train()
    return float(macs)


if __name__ == "__main__":
    main()
