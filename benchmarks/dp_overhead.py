"""DP-SGD overhead: patient-level DP-SGD step vs the non-private step, same model and batch.

Both sides train the default CNN with Adam and BCE-with-logits on the same batch of 32 images
of 64x64 pixels (`--batch-size`, `--image-size`: other sizes); the DP side is Opacus'
`make_private` exactly as `client.private_training.train_private` calls it (sigma 1, C 1),
one row per grad-sample mode, plus "hooks" with physical batches of 8 (Opacus'
BatchMemoryManager way: skip-step per physical batch, one noisy step per logical batch).

Time: every variant lives in this one process; each iteration runs one step of every
variant, in rotating order, after a warm-up; the figure is the median step time.
"inline" is what training runs: fedrad's Conv2d, GroupNorm and Linear layers compute the
per-sample gradients in their own backward (client/inline_grad_samples.py, Opacus' "no_op"
mode; the summed loss is backpropagated). "hooks" is the previous default: fedrad's Conv2d
per-sample sampler (client/grad_samplers.py, registered in Opacus' registry) and
convolutions whose backward skips the summed weight gradients DP-SGD discards
(`per_sample_convolutions`); "hooks/autograd-weights" is the same
sampler with plain convolutions (autograd also computes their summed weight gradients), and
"hooks/opacus-conv" is stock Opacus (its own unfold-based sampler, plain convolutions).
Peak memory: each variant runs in a fresh subprocess that builds its model, data and
optimiser, resets the kernel's peak-RSS mark (`/proc/self/clear_refs` = 5), runs the
steps and reads `VmHWM`. "peak RSS" is that whole process's peak (torch included): its
ratio to plain's is the target's "peak memory, DP / non-private". "growth" is the peak
minus the RSS before the first step, i.e. what the training steps themselves add
(activations, per-sample gradients, Adam state, allocator caches); its ratio is stricter.
The process first lets glibc keep freed memory, as training does (client/allocator.py;
`--default-malloc` leaves malloc as it comes).
A last table times whole rounds, `train` vs `train_private` ("inline", "hooks" and "ew") on one
synthetic site (640 images of 320 patients; DP: q = 0.1, 10 Poisson steps/epoch of ~32
patients, where "ew" switches to a slower kernel below 32), as seconds per step.

`--phases` instead splits one step into forward (incl. zero_grad), backward (incl. Opacus'
per-sample gradient hooks), clip + noise (`DPOptimizer.pre_step()`: clipping, accumulation,
noise, scaling, accountant hook) and the Adam update (the wrapped optimizer's `step()`), for
plain, plain with frozen convolution weights (the backward without their summed weight
gradients), "hooks/opacus-conv", "hooks/autograd-weights", "inline", "hooks" and "hooks/conv-free" (as
"hooks" with a zero Conv2d sampler, registered only while that variant runs: convolution
per-sample gradients for free, a floor, not a mode);
fastest of --steps interleaved steps per phase and for the whole step (1 torch thread unless
--threads says otherwise).

    .venv/bin/python benchmarks/dp_overhead.py [--threads 2 1] [--steps 40]
    .venv/bin/python benchmarks/dp_overhead.py --phases [--steps 40] [--batch-size 32] [--image-size 64]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from _common import REPO, write_result

sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")

from client.grad_samplers import (  # noqa: E402  (the import registers fedrad's sampler)
    InputGradConv2d, opacus_conv_grad_sample, per_sample_convolutions)
from client.allocator import keep_freed_memory  # noqa: E402
from client.inline_grad_samples import InlineDPOptimizer, inline_grad_samples  # noqa: E402
from client.private_training import DEFAULT_GRAD_SAMPLE_MODE, DPConfig, train_private  # noqa: E402
from client.training import train  # noqa: E402
from common.config import TrainSettings  # noqa: E402
from common.model import build_model  # noqa: E402

IMAGE_SIZE, BATCH = 64, 32
VARIANTS = ("plain", "inline", "hooks", "hooks/autograd-weights", "hooks/opacus-conv", "ew", "functorch", "ghost",
            "hooks/phys8")
PHASE_VARIANTS = {"plain": "non-private",
                  "plain/frozen-conv-weights": "non-private, conv weights frozen (what their gradients cost)",
                  "hooks/opacus-conv": "hooks, Opacus' Conv2d sampler",
                  "hooks/autograd-weights": "hooks, fedrad's Conv2d sampler, summed conv weight gradients too",
                  "inline": "inline: fedrad's layers compute per-sample gradients in their backward (training's)",
                  "hooks": "hooks, fedrad's Conv2d sampler, no summed conv weight gradients",
                  "hooks/conv-free": "hooks, convolution gradients free (zero sampler: a floor, not a mode)"}
PHASES = ("forward", "backward", "clip + noise", "Adam", "step")
TARGET = 1.3


def zero_conv_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor],
                          backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Zero per-sample gradients: what hooks mode costs if a convolution's were free."""
    return {p: p.new_zeros((backprops.shape[0], *p.shape)) for p in layer.parameters() if p.requires_grad}


# Variant suffixes: hooks mode with another Conv2d sampler than fedrad's.
CONV_SAMPLERS = {"/opacus-conv": opacus_conv_grad_sample, "/conv-free": zero_conv_grad_sample}
# Variants whose convolutions stay plain nn.Conv2d (autograd computes summed weight gradients).
PLAIN_CONVOLUTIONS = ("/opacus-conv", "/autograd-weights")
_SWAPPED = contextlib.ExitStack()  # holds the other hooks variants' convolutions swapped


def make_step(variant: str, images: torch.Tensor, targets: torch.Tensor, phases: bool = False):
    """A closure running one training step of `variant` on the given batch (returning its phase times
    in seconds if `phases`)."""
    model = build_model(IMAGE_SIZE)
    if variant == "plain/frozen-conv-weights":  # not a training mode: shows the summed conv weight gradients' cost
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.requires_grad_(False)
        variant = "plain"
    if variant.startswith("hooks") and not variant.endswith(PLAIN_CONVOLUTIONS):
        _SWAPPED.enter_context(per_sample_convolutions(model))  # for good: the model lives in this process only
    if variant == "inline":
        _SWAPPED.enter_context(inline_grad_samples(model))
    for suffix, sampler in CONV_SAMPLERS.items():
        if variant.endswith(suffix):
            return _with_conv_sampler(_training_step(variant.removesuffix(suffix), model, images, targets,
                                                         phases), sampler)
    return _training_step(variant.removesuffix("/autograd-weights"), model, images, targets, phases)


def _training_step(variant: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, phases: bool):
    """`variant`'s step (sampler suffixes already handled) on `model`."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    criterion: nn.Module = nn.BCEWithLogitsLoss(reduction="sum" if variant == "inline" else "mean")
    mode, _, physical = variant.partition("/phys")
    if mode != "plain":
        loader = DataLoader(TensorDataset(images.repeat(10, 1, 1, 1), targets.repeat(10)), batch_size=BATCH)
        private = PrivacyEngine(accountant="rdp", secure_mode=False).make_private(
            module=model, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode="no_op" if mode == "inline" else mode,
            noise_generator=torch.Generator().manual_seed(0))
        model, optimizer = private[0], private[1]
        if mode == "inline":
            optimizer = InlineDPOptimizer.as_inline(optimizer)
        criterion = private[2] if len(private) == 4 else criterion
    if phases:
        return _phase_step(model, optimizer, criterion, images, targets)
    if mode == "plain":
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images), targets).backward()
            optimizer.step()
        return step

    chunks = list(zip(images.split(int(physical)), targets.split(int(physical)))) if physical else [(images, targets)]

    def dp_step() -> None:
        for index, (x, y) in enumerate(chunks):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            optimizer.signal_skip_step(do_skip=index < len(chunks) - 1)
            optimizer.step()
    return dp_step


def _phase_step(model, optimizer, criterion, images: torch.Tensor, targets: torch.Tensor):
    """One step timed by phase; a DPOptimizer's step() split into pre_step() and its wrapped Adam's."""
    from opacus.optimizers import DPOptimizer

    private = isinstance(optimizer, DPOptimizer)

    def step() -> dict[str, float | None]:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images), targets)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        if private:
            if not optimizer.pre_step():
                raise RuntimeError("DPOptimizer.pre_step() skipped the step")
        clipped = time.perf_counter()
        (optimizer.original_optimizer if private else optimizer).step()
        done = time.perf_counter()
        return {"forward": forward - started, "backward": backward - forward,
                "clip + noise": clipped - backward if private else None, "Adam": done - clipped,
                "step": done - started}
    return step


def _with_conv_sampler(step, sampler):
    """`step` run with `sampler` as Opacus' Conv2d sampler, the registry's previous entry restored after."""
    from opacus.grad_sample import GradSampleModule

    def sampler_step():
        registry = GradSampleModule.GRAD_SAMPLERS
        previous = {kind: registry.get(kind) for kind in (nn.Conv2d, InputGradConv2d)}
        registry.update(dict.fromkeys(previous, sampler))
        try:
            return step()
        finally:
            for kind, entry in previous.items():
                if entry is None:
                    del registry[kind]
                else:
                    registry[kind] = entry
    return sampler_step


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(BATCH, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            (torch.rand(BATCH, generator=generator) > 0.5).float())


def interleaved(runners: dict, steps: int, warmup: int) -> dict[str, list]:
    """Each runner's results over `steps` iterations after `warmup`; every iteration calls each runner
    once, in rotating order."""
    variants = list(runners)
    results: dict[str, list] = {variant: [] for variant in variants}
    for iteration in range(warmup + steps):
        shift = iteration % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            result = runners[variant]()
            if iteration >= warmup:
                results[variant].append(result)
    return results


def _timed(step):
    def run() -> float:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started
    return run


def time_steps(variants: list[str], steps: int, warmup: int) -> dict[str, float]:
    images, targets = batch()
    times = interleaved({variant: _timed(make_step(variant, images, targets)) for variant in variants}, steps, warmup)
    return {variant: statistics.median(values) * 1000 for variant, values in times.items()}


def phase_table(steps: int, warmup: int) -> list[dict]:
    """Fastest time (ms) of each phase, and of the whole step, per PHASE_VARIANTS variant."""
    images, targets = batch()
    runs = interleaved({variant: make_step(variant, images, targets, phases=True) for variant in PHASE_VARIANTS},
                       steps, warmup)
    print(f"\nbuild_model({IMAGE_SIZE}), batch {BATCH}, Adam, torch threads {torch.get_num_threads()}, "
          f"fastest of {steps} interleaved steps after {warmup} warm-up, ms")
    print(f"{'':72s} " + " ".join(f"{phase:>12s}" for phase in PHASES) + f" {'/ plain':>7s}")
    rows = []
    for variant, label in PHASE_VARIANTS.items():
        row = {"variant": variant, "label": label}
        for phase in PHASES:
            values = [run[phase] for run in runs[variant] if run[phase] is not None]
            row[phase] = round(min(values) * 1000, 1) if values else None
        row["ratio"] = round(row["step"] / rows[0]["step"], 2) if rows else 1.0
        rows.append(row)
        print(f"{label:72s} " + " ".join("           –" if row[phase] is None else f"{row[phase]:12.1f}"
                                          for phase in PHASES) + f" {row['ratio']:7.2f}")
    return rows


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_child(variant: str, steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    images, targets = batch()
    step = make_step(variant, images, targets)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    for _ in range(steps):
        step()
    print(json.dumps({"growth_mb": (_status_kb("VmHWM") - before) / 1024, "rss_before_mb": before / 1024,
                      "peak_rss_mb": _status_kb("VmHWM") / 1024}))


def peak_memory(variant: str, steps: int, threads: int) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--memory-child", variant, "--steps", str(steps),
                                "--threads", str(threads), "--batch-size", str(BATCH),
                                "--image-size", str(IMAGE_SIZE)],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def synthetic_site(patients: int = 320, per_patient: int = 2):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(patients * per_patient, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, 2, (patients * per_patient,), generator=generator)
    keys = tuple(f"patient-{i % patients}" for i in range(patients * per_patient))
    return images, labels, keys


def time_rounds(modes: list[str], repeats: int) -> dict[str, float]:
    """ms per step of whole rounds: `train` and `train_private` per mode, alternating."""
    images, labels, keys = synthetic_site()
    settings = TrainSettings(local_epochs=1, batch_size=BATCH, image_size=IMAGE_SIZE)
    per_step: dict[str, list[float]] = {name: [] for name in ["plain", *modes]}
    for repeat in range(repeats + 1):
        results = {"plain": train(build_model(IMAGE_SIZE), images, labels, settings, seed=repeat)}
        for mode in modes:
            results[mode], _ = train_private(build_model(IMAGE_SIZE), images, labels, keys, settings,
                                             DPConfig(noise_multiplier=1.0, grad_sample_mode=mode), seed=repeat)
        if repeat:  # the first round of each is warm-up
            for name, result in results.items():
                per_step[name].append(result.seconds / result.steps)
    return {name: statistics.median(values) * 1000 for name, values in per_step.items()}


def step_table(variants: list[str], threads: int, args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(threads)
    step_ms = time_steps(variants, args.steps, args.warmup)
    memory = {variant: peak_memory(variant, args.memory_steps, threads) for variant in variants}
    print(f"\nbuild_model({IMAGE_SIZE}), batch {BATCH}, Adam, torch threads {threads}, "
          f"median of {args.steps} steps after {args.warmup} warm-up, alternating in one process")
    print(f"{'mode':18s} {'step ms':>8s} {'ratio':>6s} {'peak RSS MB':>11s} {'ratio':>6s} {'growth MB':>9s} {'ratio':>6s}")
    rows = []
    for variant in variants:
        row = {"mode": variant, "threads": threads, "step_ms": round(step_ms[variant], 1),
               "time_ratio": round(step_ms[variant] / step_ms["plain"], 2),
               "peak_rss_mb": round(memory[variant]["peak_rss_mb"], 1),
               "memory_ratio": round(memory[variant]["peak_rss_mb"] / memory["plain"]["peak_rss_mb"], 2),
               "growth_mb": round(memory[variant]["growth_mb"], 1),
               "growth_ratio": round(memory[variant]["growth_mb"] / memory["plain"]["growth_mb"], 2)}
        rows.append(row)
        print(f"{variant:18s} {row['step_ms']:8.1f} {row['time_ratio']:6.2f} {row['peak_rss_mb']:11.0f} "
              f"{row['memory_ratio']:6.2f} {row['growth_mb']:9.1f} {row['growth_ratio']:6.2f}")
    return rows


def main() -> None:
    global BATCH, IMAGE_SIZE
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", help="torch thread settings to time (default 2 1; "
                        "1 with --phases)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=5)
    parser.add_argument("--round-repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--phases", action="store_true", help="only time a step's phases (forward, backward, "
                        "clip + noise, Adam) for plain and three hooks-mode Conv2d samplers")
    parser.add_argument("--batch-size", type=int, default=BATCH,
                        help=f"images a step (default {BATCH}, the run config's default batch size)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                        help=f"pixels a side (default {IMAGE_SIZE}, the run config's default; a tiny size such as "
                             "16 with --batch-size 2 leaves mostly the fixed per-step costs)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it comes (training, plain and private, calls "
                             "client.allocator.keep_freed_memory first, and so does this benchmark)")
    args = parser.parse_args()
    defaults = BATCH, IMAGE_SIZE
    BATCH, IMAGE_SIZE = args.batch_size, args.image_size
    suffix = ("" if BATCH == defaults[0] else f"_batch{BATCH}") + ("" if IMAGE_SIZE == defaults[1] else f"_px{IMAGE_SIZE}")
    if not args.default_malloc:
        keep_freed_memory()
    args.threads = args.threads or ([1] if args.phases else [2, 1])
    if args.phases:
        torch.set_num_threads(args.threads[0])
        rows = phase_table(args.steps, args.warmup)
        write_result("dp_overhead_phases" + suffix, {
            "setup": {"model": f"build_model({IMAGE_SIZE})", "batch_size": BATCH, "image_size": IMAGE_SIZE,
                      "optimizer": "Adam", "noise_multiplier": 1.0, "max_grad_norm": 1.0,
                      "threads": args.threads[0], "steps": args.steps, "warmup": args.warmup,
                      "statistic": "fastest of the interleaved steps, per phase and for the whole step (ms)",
                      "phases": {"forward": "zero_grad + forward + loss", "backward": "loss.backward() incl. "
                                 "Opacus' per-sample gradient hooks", "clip + noise": "DPOptimizer.pre_step()",
                                 "Adam": "the (wrapped) Adam's step()", "step": "all of it"}},
            "phases": rows,
        })
        return
    if args.memory_child:
        memory_child(args.memory_child, args.steps, args.threads[0])
        return
    variants = ["plain"] + [v for v in args.variants if v != "plain"]
    rows = [row for threads in args.threads for row in step_table(variants, threads, args)]
    print("(fresh process per mode; peak RSS: the process's whole peak resident memory, torch included, the "
          "'peak memory' of the target; growth: that peak minus the RSS after setup, what the steps add)")

    torch.set_num_threads(args.threads[0])
    round_modes = [m for m in ("inline", "hooks", "ew") if m in variants] or [DEFAULT_GRAD_SAMPLE_MODE]
    rounds = time_rounds(round_modes, args.round_repeats)
    round_ratios = {mode: round(rounds[mode] / rounds["plain"], 2) for mode in round_modes}
    print(f"\nwhole rounds (train vs train_private, Poisson batches of ~{BATCH} patients), "
          f"torch threads {args.threads[0]}, ms per step:")
    print(f"  plain {rounds['plain']:.1f}; " + "; ".join(
        f"{mode} {rounds[mode]:.1f} (ratio {round_ratios[mode]:.2f})" for mode in round_modes))
    write_result("dp_overhead" + suffix, {
        "target": {"time_ratio": TARGET, "memory_ratio": TARGET},
        "setup": {"model": f"build_model({IMAGE_SIZE})", "batch_size": BATCH, "optimizer": "Adam",
                  "noise_multiplier": 1.0, "max_grad_norm": 1.0, "threads": args.threads,
                  "steps": args.steps, "warmup": args.warmup, "memory_steps": args.memory_steps,
                  "memory_method": "fresh subprocess per mode; memory_ratio = its whole-process peak RSS "
                                   "(VmHWM) / plain's; growth = VmHWM after the steps (reset via "
                                   "/proc/self/clear_refs after setup) - VmRSS before them"},
        "default_grad_sample_mode": DEFAULT_GRAD_SAMPLE_MODE,
        "steps": rows,
        "round_threads": args.threads[0],
        "round_ms_per_step": {k: round(v, 1) for k, v in rounds.items()},
        "round_time_ratio": round_ratios,
    })


if __name__ == "__main__":
    main()
