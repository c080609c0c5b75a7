"""The six experiments of ``normkit demo``.

Each ``run_*`` function trains its models, writes its PNG plot(s) into ``out``
and returns a results dict of numbers computed in the run (floats, ints, lists
and dicts of them; ``None`` where a target was never reached). Each
``describe_*`` function turns such a dict into the claim, a table and a verdict
computed from the numbers, for the terminal and ``report.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .common import (NORMS, Data, Progress, _recalibrate, accuracy, fmt, make_convnet, make_mlp, spread,
                     train)

Results = Dict[str, Any]
Described = Tuple[str, List[str], List[List[str]], str]  # claim, header, rows, verdict

MLP_BATCH = 60  # Ioffe & Szegedy's MNIST batch
MLP_LR = 0.5  # plain SGD, the same for both networks
TARGET = 0.90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steps_to(curve: Sequence[Tuple[int, float]], target: float) -> Optional[int]:
    return next((s for s, a in curve if a >= target), None)


def _clearly_less(a: Dict[str, float], b: Dict[str, float]) -> bool:
    """``a`` below ``b`` beyond the seeds' spread: mean + std of a < mean - std of b."""
    return a["mean"] + a["std"] < b["mean"] - b["std"]


def _label(bn: bool) -> str:
    return "with BN" if bn else "without BN"


# --------------------------------------------------------------------------- 1. convergence


def run_convergence(data: Data, out: Path, seeds: Sequence[int], quick: bool) -> Results:
    steps, every = (300, 25) if quick else (1500, 25)
    bar = Progress(2 * len(seeds) * steps, "convergence")
    res: Results = {"steps": steps, "target": TARGET, "lr": MLP_LR, "batch": MLP_BATCH}
    for bn in (False, True):
        curves, reach, final, train_acc = [], [], [], []
        for seed in seeds:
            model = make_mlp(data.n_features, data.n_classes, bn, seed)
            curve = train(model, data, steps, MLP_BATCH, MLP_LR, seed, eval_every=every, progress=bar)
            curves.append([a for _, a in curve])
            reach.append(_steps_to(curve, TARGET))
            final.append(curve[-1][1])
            train_acc.append(accuracy(model, data.x_train, data.y_train))
        key = "bn" if bn else "plain"
        res[key] = {"curves": curves, "steps_to_target": reach, "final": spread(final),
                    "train": spread(train_acc),
                    "gap": spread([a - b for a, b in zip(train_acc, final)])}
        res["eval_steps"] = [s for s, _ in curve]
    bar.close()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, bn in (("plain", False), ("bn", True)):
        c = np.asarray(res[key]["curves"])
        ax.plot(res["eval_steps"], c.mean(0), label=_label(bn))
        ax.fill_between(res["eval_steps"], c.min(0), c.max(0), alpha=0.25)
    ax.axhline(TARGET, color="gray", ls=":", lw=1)
    ax.set(xlabel="training step", ylabel="test accuracy", ylim=(0, 1),
           title=f"3x100 sigmoid MLP, SGD lr {MLP_LR}, mean and min-max over {len(seeds)} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=110)
    plt.close(fig)
    return res


def _reach_text(r: Sequence[Optional[int]], steps: int) -> str:
    got = [s for s in r if s is not None]
    if not got:
        return f"not reached in {steps} steps"
    t = f"{np.mean(got):.0f} (min {min(got)}, max {max(got)})"
    return t if len(got) == len(r) else t + f", {len(r) - len(got)} of {len(r)} seeds never"


def describe_convergence(r: Results) -> Described:
    claim = "BN makes training converge in fewer steps (Ioffe & Szegedy 2015, MNIST MLP)."
    header = ["", f"steps to {TARGET:.0%} test acc.", f"test acc. after {r['steps']} steps (%)",
              "train − test acc. (%)"]
    rows = [[_label(bn), _reach_text(r[k]["steps_to_target"], r["steps"]), fmt(r[k]["final"], True),
             fmt(r[k]["gap"], True)] for k, bn in (("plain", False), ("bn", True))]
    rb = [s if s is not None else np.inf for s in r["bn"]["steps_to_target"]]
    rp = [s if s is not None else np.inf for s in r["plain"]["steps_to_target"]]
    mb, mp = float(np.mean(rb)), float(np.mean(rp))
    if mb < mp:
        ratio = "" if not np.isfinite(mp) else f" ({mp / mb:.1f}x fewer)"
        verdict = (f"**Agrees.** With BN the MLP reached {TARGET:.0%} test accuracy in "
                   f"{_reach_text(r['bn']['steps_to_target'], r['steps'])} steps vs "
                   f"{_reach_text(r['plain']['steps_to_target'], r['steps'])} without{ratio}.")
    else:
        verdict = (f"**Disagrees.** With BN: {_reach_text(r['bn']['steps_to_target'], r['steps'])} steps to "
                   f"{TARGET:.0%}; without: {_reach_text(r['plain']['steps_to_target'], r['steps'])}.")
    gb, gp = r["bn"]["gap"]["mean"], r["plain"]["gap"]["mean"]
    verdict += (f" Regularisation: the train−test accuracy gap is {100 * gb:.1f} points with BN vs "
                f"{100 * gp:.1f} without, ")
    if min(r["bn"]["final"]["mean"], r["plain"]["final"]["mean"]) < TARGET:
        verdict += f"which cannot be judged here (a network below {TARGET:.0%} test accuracy has not learnt enough)."
    else:
        verdict += ("smaller with BN, as claimed." if gb < gp else
                    "not smaller with BN: no regularising effect shows here.")
    return claim, header, rows, verdict


# --------------------------------------------------------------------------- 2. covariate shift


def run_covariate_shift(data: Data, out: Path, seeds: Sequence[int], quick: bool) -> Results:
    steps, every = (200, 10) if quick else (1000, 20)
    bar = Progress(2 * len(seeds) * steps, "covariate-shift")
    res: Results = {"steps": steps, "unit": 0, "layer": "last hidden"}
    for bn in (False, True):
        traces, moves, ranges = [], [], []
        for seed in seeds:
            model = make_mlp(data.n_features, data.n_classes, bn, seed)
            sig = [m for m in model if isinstance(m, nn.Sigmoid)][-1]
            trace: List[List[float]] = []

            def probe(step: int) -> None:
                seen: List[torch.Tensor] = []
                h = sig.register_forward_pre_hook(lambda m, i: seen.append(i[0][:, 0].detach()))
                model.eval()
                with torch.no_grad():
                    model(data.x_test)
                model.train()
                h.remove()
                trace.append([float(q) for q in np.percentile(seen[0].numpy(), [15, 50, 85])])

            curve = train(model, data, steps, MLP_BATCH, MLP_LR, seed, eval_every=every, on_eval=probe,
                          progress=bar)
            t = np.asarray(trace)  # (evals, 3)
            traces.append(t.tolist())
            # how far the percentiles travel after the first 10% of training, in units of the
            # distribution's own width (85th - 15th percentile) at the end
            k = max(1, len(t) // 10)
            width = max(1e-12, float(t[-1, 2] - t[-1, 0]))
            moves.append(float(np.abs(np.diff(t[k:], axis=0)).sum(0).mean() / width))
            ranges.append(float((t[k:, 1].max() - t[k:, 1].min()) / width))
        key = "bn" if bn else "plain"
        res[key] = {"percentiles": traces, "travel": spread(moves), "median_range": spread(ranges)}
        res["eval_steps"] = [s for s, _ in curve]
    bar.close()
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, (key, bn) in zip(axes, (("plain", False), ("bn", True))):
        t = np.asarray(res[key]["percentiles"][0])
        for j, (q, ls) in enumerate(zip((15, 50, 85), (":", "-", "--"))):
            ax.plot(res["eval_steps"], t[:, j], ls, color="C0" if not bn else "C1", label=f"{q}th percentile")
        ax.set(title=f"{_label(bn)} (seed {seeds[0]})", xlabel="training step", ylabel="input to sigmoid unit 0")
        ax.legend(fontsize=8)
    fig.suptitle("input distribution of one last-hidden-layer sigmoid over training")
    fig.tight_layout()
    fig.savefig(out / "covariate_shift.png", dpi=110)
    plt.close(fig)
    return res


def describe_covariate_shift(r: Results) -> Described:
    claim = ("BN keeps a layer's input distribution stable during training (Figure 1 of Ioffe & Szegedy: "
             "15th/50th/85th percentiles of a sigmoid's input).")
    header = ["", "percentile travel after 10% of training (÷ final width)", "range of the median (÷ final width)"]
    rows = [[_label(bn), fmt(r[k]["travel"], digits=2), fmt(r[k]["median_range"], digits=2)]
            for k, bn in (("plain", False), ("bn", True))]
    tb, tp = r["bn"]["travel"], r["plain"]["travel"]
    mb, mp = r["bn"]["median_range"], r["plain"]["median_range"]
    travel, median = _clearly_less(tb, tp), _clearly_less(mb, mp)
    word = "**Agrees.**" if travel and median else ("**Partly agrees.**" if travel or median else "**Disagrees.**")
    verdict = (f"{word} After the first 10% of training the median of the sigmoid's input moved over a range of "
               f"{mb['mean']:.2f} final distribution widths with BN vs {mp['mean']:.2f} without "
               f"({'clearly less' if median else 'not clearly less'} with BN, i.e. beyond the seeds' spread); "
               f"the three percentiles' total travel was {tb['mean']:.2f} widths with BN vs {tp['mean']:.2f} "
               f"without ({'clearly less' if travel else 'not clearly less'} with BN). This measures the "
               "distribution's stability, not whether stability is why BN helps (Santurkar et al. 2018 argue "
               "it is not).")
    return claim, header, rows, verdict


# --------------------------------------------------------------------------- 3. learning rate


def run_learning_rate(data: Data, out: Path, seeds: Sequence[int], quick: bool) -> Results:
    lrs = [0.01, 0.1, 1.0, 10.0] if quick else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    steps = 100 if quick else 400
    bar = Progress(2 * len(seeds) * len(lrs) * steps, "learning-rate")
    res: Results = {"lrs": lrs, "steps": steps}
    for bn in (False, True):
        acc = [[train(make_mlp(data.n_features, data.n_classes, bn, s), data, steps, MLP_BATCH, lr, s,
                      progress=bar)[-1][1] for s in seeds] for lr in lrs]
        res["bn" if bn else "plain"] = {"final": [spread(a) for a in acc]}
    bar.close()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, bn in (("plain", False), ("bn", True)):
        f = res[key]["final"]
        m = np.array([x["mean"] for x in f])
        ax.errorbar(lrs, m, yerr=[m - [x["min"] for x in f], [x["max"] for x in f] - m], marker="o",
                    capsize=3, label=_label(bn))
    ax.set(xscale="log", xlabel="learning rate (plain SGD)", ylabel=f"test accuracy after {steps} steps",
           ylim=(0, 1), title="final accuracy over learning rates (mean, min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_rate.png", dpi=110)
    plt.close(fig)
    return res


def _good(values: Sequence[Dict[str, float]], xs: Sequence[float]) -> List[float]:
    return [x for x, v in zip(xs, values) if v["mean"] >= TARGET]


def describe_learning_rate(r: Results) -> Described:
    claim = "BN allows (and tolerates) much higher learning rates."
    header = ["learning rate", "without BN (%)", "with BN (%)"]
    rows = [[f"{lr:g}", fmt(p, True), fmt(b, True)]
            for lr, p, b in zip(r["lrs"], r["plain"]["final"], r["bn"]["final"])]
    gb, gp = _good(r["bn"]["final"], r["lrs"]), _good(r["plain"]["final"], r["lrs"])
    span = lambda g: f"{min(g):g} to {max(g):g}" if g else "no learning rate"  # noqa: E731
    agree = len(gb) > len(gp) and (not gp or max(gb) >= max(gp))
    best = lambda k: max(zip(r[k]["final"], r["lrs"]), key=lambda t: t[0]["mean"])  # noqa: E731
    (fb, lb), (fp, lp) = best("bn"), best("plain")
    verdict = (f"**{'Agrees' if agree else 'Disagrees'}.** Mean test accuracy ≥ {TARGET:.0%} after "
               f"{r['steps']} steps: with BN for {len(gb)} of {len(r['lrs'])} learning rates ({span(gb)}), "
               f"without BN for {len(gp)} ({span(gp)}). Best learning rate: {lb:g} with BN "
               f"({100 * fb['mean']:.1f}%) vs {lp:g} without ({100 * fp['mean']:.1f}%). In this short budget the "
               "network without BN is also still slow to converge (see convergence), which this sweep cannot "
               "separate from learning-rate tolerance.")
    return claim, header, rows, verdict


# --------------------------------------------------------------------------- 4. initialisation


def run_initialisation(data: Data, out: Path, seeds: Sequence[int], quick: bool) -> Results:
    scales = [0.1, 1.0, 10.0] if quick else [0.1, 0.3, 1.0, 3.0, 10.0]
    steps = 100 if quick else 400
    bar = Progress(2 * len(seeds) * len(scales) * steps, "initialisation")
    res: Results = {"scales": scales, "steps": steps, "lr": MLP_LR}
    for bn in (False, True):
        acc = [[train(make_mlp(data.n_features, data.n_classes, bn, s, init_scale=k), data, steps, MLP_BATCH,
                      MLP_LR, s, progress=bar)[-1][1] for s in seeds] for k in scales]
        res["bn" if bn else "plain"] = {"final": [spread(a) for a in acc]}
    bar.close()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, bn in (("plain", False), ("bn", True)):
        f = res[key]["final"]
        m = np.array([x["mean"] for x in f])
        ax.errorbar(scales, m, yerr=[m - [x["min"] for x in f], [x["max"] for x in f] - m], marker="o",
                    capsize=3, label=_label(bn))
    ax.set(xscale="log", xlabel="initial weight scale (x torch's default)",
           ylabel=f"test accuracy after {steps} steps", ylim=(0, 1),
           title="sensitivity to initialisation (mean, min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "initialisation.png", dpi=110)
    plt.close(fig)
    return res


def describe_initialisation(r: Results) -> Described:
    claim = "BN makes training much less sensitive to the scale of the initial weights."
    header = ["weight scale", "without BN (%)", "with BN (%)"]
    rows = [[f"x{k:g}", fmt(p, True), fmt(b, True)]
            for k, p, b in zip(r["scales"], r["plain"]["final"], r["bn"]["final"])]
    mb = [x["mean"] for x in r["bn"]["final"]]
    mp = [x["mean"] for x in r["plain"]["final"]]
    sb, sp = max(mb) - min(mb), max(mp) - min(mp)
    verdict = (f"**{'Agrees' if sb < sp else 'Disagrees'}.** Across scales x{min(r['scales']):g} to "
               f"x{max(r['scales']):g} the mean test accuracy varies by {100 * sb:.1f} points with BN "
               f"(worst {100 * min(mb):.1f}%) vs {100 * sp:.1f} points without (worst {100 * min(mp):.1f}%).")
    return claim, header, rows, verdict


# --------------------------------------------------------------------------- 5. batch size


def _conv_lr(batch: int) -> float:
    return max(0.025, 0.1 * (batch / 128) ** 0.5)  # square-root scaling, floored; SGD momentum 0.9


def _conv_steps(batch: int, quick: bool) -> int:
    """A floor on the steps and one on the samples seen, so tiny batches are not simply under-trained."""
    return max(40, 240 // batch) if quick else max(150, 1200 // batch)


def run_batch_size(data: Data, out: Path, seeds: Sequence[int], quick: bool) -> Results:
    sizes = [2, 8, 32, 128] if quick else [2, 4, 8, 32, 128]
    bar = Progress(len(NORMS) * len(seeds) * sum(_conv_steps(b, quick) for b in sizes), "batch-size")
    res: Results = {"sizes": sizes, "steps": [_conv_steps(b, quick) for b in sizes],
                    "lrs": [_conv_lr(b) for b in sizes]}
    for norm in NORMS:
        acc = []
        for b in sizes:
            a = []
            for s in seeds:
                steps = _conv_steps(b, quick)
                model = make_convnet(data.image_shape, data.n_classes, norm, s, batch=b, steps=steps)
                a.append(train(model, data, steps, b, _conv_lr(b), s, momentum=0.9, progress=bar)[-1][1])
            acc.append(spread([1.0 - x for x in a]))
        res[norm] = {"error": acc}
    bar.close()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for norm in NORMS:
        e = res[norm]["error"]
        m = np.array([x["mean"] for x in e])
        ax.errorbar(sizes, 100 * m, yerr=100 * np.array([m - [x["min"] for x in e], [x["max"] for x in e] - m]),
                    marker="o", capsize=3, label=norm)
    ax.set(xscale="log", xlabel="batch size", ylabel="test error (%), eval mode",
           title="conv net, lr max(0.025, 0.1*sqrt(b/128)), eval mode")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "batch_size.png", dpi=110)
    plt.close(fig)
    return res


def describe_batch_size(r: Results) -> Described:
    claim = ("BN degrades at small batch sizes while batch-independent normalizers (GroupNorm, LayerNorm) do not "
             "(Wu & He 2018, Figure 1); BatchRenorm and GhostBatchNorm are the batch-dependent remedies.")
    header = ["normalization"] + [f"b={b} error (%)" for b in r["sizes"]]
    rows = [[n] + [fmt(e, True) for e in r[n]["error"]] for n in NORMS]
    deg = {n: r[n]["error"][0]["mean"] - r[n]["error"][-1]["mean"] for n in NORMS}
    small, large = r["sizes"][0], r["sizes"][-1]
    worse = deg["BatchNorm"] > max(deg["GroupNorm"], deg["LayerNorm"])
    e0 = {n: 100 * r[n]["error"][0]["mean"] for n in NORMS}
    verdict = (f"**{'Agrees' if worse else 'Disagrees'}.** At batch {small} the test error is "
               f"{e0['BatchNorm']:.1f}% with BatchNorm vs {e0['GroupNorm']:.1f}% with GroupNorm and "
               f"{e0['LayerNorm']:.1f}% with LayerNorm. Going from batch {large} to batch {small}, the test "
               f"error rises by {100 * deg['BatchNorm']:.1f} points with BatchNorm vs "
               f"{100 * deg['GroupNorm']:.1f} with GroupNorm and {100 * deg['LayerNorm']:.1f} with LayerNorm "
               f"(BatchRenorm {100 * deg['BatchRenorm']:.1f}, GhostBatchNorm {100 * deg['GhostBatchNorm']:.1f}). "
               f"Steps per batch size: {', '.join(f'b={b}: {s}' for b, s in zip(r['sizes'], r['steps']))}, so "
               "small batches see fewer samples: compare the normalizers within a column, not across columns. "
               "GhostBatchNorm uses virtual batches of 16, so it equals BatchNorm at b ≤ 16.")
    return claim, header, rows, verdict


# --------------------------------------------------------------------------- 6. train vs eval


SCENARIOS = (("batch 64, momentum 0.1", 64, 0.1), ("batch 2, momentum 0.1", 2, 0.1),
             ("batch 64, momentum 0.001", 64, 0.001))


def run_train_vs_eval(data: Data, out: Path, seeds: Sequence[int], quick: bool) -> Results:
    steps_of = lambda b: 2 * _conv_steps(b, quick)  # noqa: E731
    bar = Progress(len(seeds) * sum(steps_of(b) for _, b, _ in SCENARIOS), "train-vs-eval")
    res: Results = {"steps": [steps_of(b) for _, b, _ in SCENARIOS],
                    "scenarios": [name for name, _, _ in SCENARIOS]}
    for name, b, mom in SCENARIOS:
        steps = steps_of(b)
        batch_acc, eval_acc, recal_acc = [], [], []
        for s in seeds:
            model = make_convnet(data.image_shape, data.n_classes, "BatchNorm", s, batch=b, steps=steps,
                                 momentum=mom)
            train(model, data, steps, b, _conv_lr(b), s, momentum=0.9, progress=bar)
            # training-mode behaviour: test batches of the training batch size, normalised by their own statistics
            batch_acc.append(accuracy(model, data.x_test, data.y_test, batch_stats=True, batch=b))
            eval_acc.append(accuracy(model, data.x_test, data.y_test))
            _recalibrate(model, data.x_train)
            recal_acc.append(accuracy(model, data.x_test, data.y_test))
        res[name] = {"batch_stats": spread(batch_acc), "eval": spread(eval_acc), "recalibrated": spread(recal_acc),
                     "gap": spread([a - e for a, e in zip(batch_acc, eval_acc)]),
                     "gap_recalibrated": spread([a - e for a, e in zip(batch_acc, recal_acc)])}
    bar.close()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(SCENARIOS))
    for j, (k, lab) in enumerate((("batch_stats", "train mode: batch statistics, test batches of the training size"),
                                  ("eval", "eval mode, running statistics"),
                                  ("recalibrated", "eval mode after recalibration"))):
        m = np.array([res[n][k]["mean"] for n, _, _ in SCENARIOS])
        sd = np.array([res[n][k]["std"] for n, _, _ in SCENARIOS])
        ax.bar(x + (j - 1) * 0.27, 100 * m, 0.27, yerr=100 * sd, capsize=3, label=lab)
    ax.set_xticks(x, [n for n, _, _ in SCENARIOS], fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title="train/eval discrepancy and recalibration")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "train_vs_eval.png", dpi=110)
    plt.close(fig)
    return res


def describe_train_vs_eval(r: Results) -> Described:
    claim = ("BN's eval mode (running statistics) can disagree with its training mode when batches are tiny or "
             "the momentum is poorly chosen; recomputing the statistics (recalibration) closes the gap.")
    header = ["setting", "batch stats (%)", "eval mode (%)", "recalibrated (%)", "gap before → after (points)"]
    rows = [[n, fmt(r[n]["batch_stats"], True), fmt(r[n]["eval"], True), fmt(r[n]["recalibrated"], True),
             f"{100 * r[n]['gap']['mean']:.1f} → {100 * r[n]['gap_recalibrated']['mean']:.1f}"]
            for n in r["scenarios"]]
    ref, bad = r["scenarios"][0], r["scenarios"][1:]
    g = lambda n, k="gap": 100 * r[n][k]["mean"]  # noqa: E731  train-mode minus eval-mode accuracy, points
    parts, held = [], 0
    for n in bad:
        worse = r[n]["gap"]["mean"] > r[ref]["gap"]["mean"] + r[n]["gap"]["std"] + r[ref]["gap"]["std"]
        closed = abs(r[n]["gap_recalibrated"]["mean"]) <= abs(r[n]["gap"]["mean"]) / 2
        held += worse and closed
        if worse:
            parts.append(f"with {n} eval mode is {g(n):.1f} points worse than training mode "
                         f"(reference {g(ref):.1f}); recalibration takes eval-mode accuracy from "
                         f"{100 * r[n]['eval']['mean']:.1f}% to {100 * r[n]['recalibrated']['mean']:.1f}% "
                         f"(gap {g(n, 'gap_recalibrated'):.1f}), " + ("closing it" if closed else "not closing it"))
        else:
            parts.append(f"with {n} eval mode is not worse than training mode (gap {g(n):.1f} points, "
                         f"reference {g(ref):.1f}): the running statistics average out the noise of its tiny "
                         f"batches, and recalibration changes eval-mode accuracy by "
                         f"{100 * (r[n]['recalibrated']['mean'] - r[n]['eval']['mean']):+.1f} points")
    word = "Agrees" if held == len(bad) else ("Partly agrees" if held else "Disagrees")
    text = "; ".join(parts)
    verdict = (f"**{word}.** " + text[:1].upper() + text[1:] + ". (Training mode: test batches of the training batch "
               "size, normalised by their own statistics. Recalibration is the demo's own `_recalibrate`: pooled "
               "mean and unbiased variance of each BN layer's eval-mode inputs over the training set.)")
    return claim, header, rows, verdict


EXPERIMENTS = {
    "convergence": (run_convergence, describe_convergence),
    "covariate-shift": (run_covariate_shift, describe_covariate_shift),
    "learning-rate": (run_learning_rate, describe_learning_rate),
    "initialisation": (run_initialisation, describe_initialisation),
    "batch-size": (run_batch_size, describe_batch_size),
    "train-vs-eval": (run_train_vs_eval, describe_train_vs_eval),
}
PLOTS = {
    "convergence": ["convergence.png"], "covariate-shift": ["covariate_shift.png"],
    "learning-rate": ["learning_rate.png"], "initialisation": ["initialisation.png"],
    "batch-size": ["batch_size.png"], "train-vs-eval": ["train_vs_eval.png"],
}
