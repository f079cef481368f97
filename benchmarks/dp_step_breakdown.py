"""Where a DP-SGD step's extra time goes, layer by layer: the inline step against the plain one.

Both steps train build_model(64) (the default CNN) with Adam on the same batch (32 images
of 64 x 64 px), built by `dp_overhead.py`'s own step builder, one step of each in turn. Each
layer's backward is timed inside the step:
- plain: from the layer's autograd node starting to it finishing (a pre-hook and a hook
  on the node of the layer's output: the input's and the summed weight gradients);
- inline: the layer's autograd Function's backward (the input's gradient and the
  per-sample gradients, or a ghost's Gram matrices).
The DP optimizer's pre-step is split into clipping (each patient's norm, the clipped sums,
incl. the ghosts' matrix products) and noise (Opacus' draws, added and scaled). Medians of
`--steps` interleaved steps after a warm-up; hooks and timers add a few microseconds a
layer to both sides.

    .venv/bin/python benchmarks/dp_step_breakdown.py [--threads 1] [--steps 60] [--warmup 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections import defaultdict

import torch
from torch import nn

from _common import REPO, write_result

sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")

import dp_overhead  # noqa: E402
import client.inline_grad_samples as inline  # noqa: E402
from client.allocator import keep_freed_memory  # noqa: E402
from common.model import build_model  # noqa: E402

LAYERS = (nn.Conv2d, nn.GroupNorm, nn.Linear)


def timed_inline_backwards(times: dict[int, list[float]]) -> None:
    """Wrap the inline Functions' backward to add each call's seconds to times[id(layer)]."""
    for function in (inline._Conv, inline._GroupNorm, inline._Linear):
        backward = function.backward

        def timed(ctx, grad_output, backward=backward):
            started = time.perf_counter()
            result = backward(ctx, grad_output)
            times[id(ctx.layer)].append(time.perf_counter() - started)
            return result
        function.backward = staticmethod(timed)


def timed_plain_backwards(model: nn.Module, times: dict[int, list[float]]) -> None:
    """Time each layer's backward node (its output's grad_fn) into times[id(layer)]."""
    started: dict[int, float] = {}

    def on_forward(layer, _inputs, output):
        key = id(layer)
        output.grad_fn.register_prehook(lambda _grads: started.__setitem__(key, time.perf_counter()))
        output.grad_fn.register_hook(lambda _in, _out: times[key].append(time.perf_counter() - started[key]))
    for module in model.modules():
        if isinstance(module, LAYERS):
            module.register_forward_hook(on_forward)


def timed_optimizer(times: dict[str, list[float]]) -> None:
    """Wrap InlineDPOptimizer's clipping and noise to add each call's seconds to times."""
    for name, phase in (("clip_and_accumulate", "clip"), ("add_noise", "noise")):
        method = getattr(inline.InlineDPOptimizer, name)

        def timed(self, method=method, phase=phase):
            started = time.perf_counter()
            method(self)
            times[phase].append(time.perf_counter() - started)
        setattr(inline.InlineDPOptimizer, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a site's default)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each side, interleaved")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each side first")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    images, targets = dp_overhead.batch()
    plain_model, inline_model = build_model(64), build_model(64)
    names = {id(m): name for name, m in plain_model.named_modules() if isinstance(m, LAYERS)}
    names.update({id(m): name for name, m in inline_model.named_modules() if isinstance(m, LAYERS)})
    order = [name for name, m in plain_model.named_modules() if isinstance(m, LAYERS)]
    times = {"plain": defaultdict(list), "inline": defaultdict(list)}
    timed_plain_backwards(plain_model, times["plain"])
    timed_inline_backwards(times["inline"])
    optimizer_times: dict[str, list[float]] = defaultdict(list)
    timed_optimizer(optimizer_times)
    with inline.inline_grad_samples(inline_model):
        steps = {side: dp_overhead._training_step(side, model, images, targets, phases=False)
                 for side, model in (("plain", plain_model), ("inline", inline_model))}
        for iteration in range(args.warmup + args.steps):
            if iteration == args.warmup:
                for recorded in (*times.values(), optimizer_times):
                    recorded.clear()
            for side in (("plain", "inline") if iteration % 2 else ("inline", "plain")):
                steps[side]()

    def median_ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 3)
    table: dict[str, dict[str, float]] = {name: {} for name in order}
    for side, recorded in times.items():
        for key, values in recorded.items():
            table[names[key]][side] = median_ms(values)
    print(f"\nbackward per layer, build_model(64), batch 32, torch threads {args.threads}, "
          f"median of {args.steps} interleaved steps, ms")
    print(f"{'layer':28s} {'plain':>8s} {'inline':>8s} {'extra':>8s}")
    for name, cells in table.items():
        print(f"{name:28s} {cells['plain']:8.3f} {cells['inline']:8.3f} {cells['inline'] - cells['plain']:8.3f}")
    totals = {side: round(sum(cells[side] for cells in table.values()), 3) for side in ("plain", "inline")}
    print(f"{'all layers':28s} {totals['plain']:8.3f} {totals['inline']:8.3f} {totals['inline'] - totals['plain']:8.3f}")
    optimizer_ms = {phase: median_ms(values) for phase, values in optimizer_times.items()}
    print(f"DP optimizer: clipping {optimizer_ms['clip']:.3f} ms, noise {optimizer_ms['noise']:.3f} ms")
    write_result("dp_step_breakdown", {"threads": args.threads, "steps": args.steps, "warmup": args.warmup,
                                       "backward_ms": table, "backward_totals_ms": totals,
                                       "optimizer_ms": optimizer_ms})


if __name__ == "__main__":
    main()
