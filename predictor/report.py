"""The training report: `report.md` with every metrics table and PNG plots (predicted vs measured
log-log, error histogram, sample-efficiency curve), written next to the saved predictor.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def pct(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def metrics_rows(sets: Mapping[str, Any]) -> list[list[str]]:
    """One row per (held-out set, model) plus the set's floors: the table `jcw train` prints."""
    rows = []
    for set_name, entry in sets.items():
        for label, floor in (("noise floor", entry["noise_floor"]), ("label floor", entry["label_floor"])):
            if floor["n"]:
                rows.append([set_name, label, str(floor["n"]), pct(floor["rmspe"]), pct(floor["mape"]),
                             pct(floor["within5"]), pct(floor["within10"]), pct(floor["within15"])])
        for model, m in entry["models"].items():
            rows.append([set_name, model, str(m["n"]), pct(m["rmspe"]), pct(m["mape"]), pct(m["within5"]),
                         pct(m["within10"]), pct(m["within15"])])
    return rows


METRIC_HEADER = ["held-out set", "model", "n", "RMSPE", "MAPE", "±5%", "±10%", "±15%"]
KIND_HEADER = ["layer kind", "n", "ours ±10%", "ours RMSPE", "noise floor ±10%", "label floor ±10%"]
UNSEEN_NOTE = ("The unseen-architecture holdout holds layers of EfficientNet-Lite0, SqueezeNet 1.1, VGG-11 and "
               "DenseNet-BC (the program zoo's unseen families, lite widths), ShuffleNetV2, GhostNet and "
               "MobileNetV3-Large at random widths and 96-320 px inputs, with random densities. The plans are not "
               "drawn from them, and no training or real-network held-out layer has one of their shapes.")


def kind_rows(kinds: Mapping[str, Any]) -> list[list[str]]:
    """Ours by layer kind on the unseen-architecture holdout, with each kind's floors."""
    rows = []
    for kind, entry in kinds.items():
        ours, noise, label = entry["models"]["ours"], entry["noise_floor"], entry["label_floor"]
        rows.append([kind, str(ours["n"]), pct(ours["within10"]), pct(ours["rmspe"]),
                     pct(noise["within10"]) if noise["n"] else "n/a", pct(label["within10"]) if label["n"] else "n/a"])
    return rows


def network_rows(network: Mapping[str, Any], best_impl: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for model, m in network.get("models", {}).items():
        agree = best_impl.get(model, {})
        rows.append([model, str(m["networks"]), pct(m["median"]), pct(m["p90"]), pct(m["floor_median"]),
                     pct(m["floor_p90"]), pct(agree.get("agreement")), pct(agree.get("mean_regret"))])
    return rows


NETWORK_HEADER = ["model", "networks", "median |err|", "p90 |err|", "floor median", "floor p90",
                  "best-kernel agreement", "mean regret of pick"]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plots(directory: Path, predicted: np.ndarray, measured: np.ndarray, impls: Sequence[str], set_name: str,
           curve: Sequence[Mapping[str, Any]]) -> list[str]:
    written = []
    impls = np.asarray(impls)
    fig, ax = plt.subplots(figsize=(5, 5))
    for impl, colour in (("dense", "tab:blue"), ("sparse", "tab:orange")):
        mask = impls == impl
        ax.scatter(measured[mask] / 1000, predicted[mask] / 1000, s=8, alpha=0.6, label=impl, color=colour)
    low, high = min(measured.min(), predicted.min()) / 1000, max(measured.max(), predicted.max()) / 1000
    ax.plot([low, high], [low, high], "k-", lw=0.8)
    for factor in (0.9, 1.1):
        ax.plot([low, high], [low * factor, high * factor], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=f"predicted vs measured: {set_name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "pred_vs_measured.png", dpi=110)
    plt.close(fig)
    written.append("pred_vs_measured.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    error = 100 * (predicted / measured - 1)
    ax.hist(np.clip(error, -40, 40), bins=60, color="tab:blue")
    for edge in (-10, 10):
        ax.axvline(edge, color="k", ls=":", lw=0.8)
    ax.set(xlabel="prediction error (%), clipped to ±40", ylabel="configurations",
           title=f"error histogram: {set_name}")
    fig.tight_layout()
    fig.savefig(directory / "error_histogram.png", dpi=110)
    plt.close(fig)
    written.append("error_histogram.png")

    if curve:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for arm, marker in (("random", "o-"), ("adaptive", "s--")):
            points = sorted((p["budget"], 100 * p["within10"]) for p in curve if p["arm"] == arm)
            if points:
                ax.plot(*zip(*points), marker, label=arm)
        ax.axhline(95, color="k", ls=":", lw=0.8)
        ax.set(xscale="log", xlabel="profiled training layers", ylabel="held-out within ±10% (%)",
               title="sample efficiency (real-network holdout)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "sample_efficiency.png", dpi=110)
        plt.close(fig)
        written.append("sample_efficiency.png")
    return written


def _program_plot(directory: Path, programs: Mapping[str, Any], name: str = "programs_pred_vs_measured.png",
                  title: str = "whole programs on ExecuTorch", measured: str = ".pte") -> str:
    """Predicted against measured whole-program latency, ours and the old baseline, per evaluation sample."""
    data, model = programs["data"], programs["model"]
    predicted = model.predict(data["x"])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for sample, marker in (("holdout", "o"), ("unseen", "s")):
        mask = data["sample"] == sample
        if mask.any():
            ax.scatter(data["measured_ms"][mask], predicted[mask], s=14, marker=marker, color="tab:blue",
                       label=f"ours, {sample}")
            ax.scatter(data["measured_ms"][mask], data["baseline_ms"][mask], s=14, marker=marker, color="tab:gray",
                       alpha=0.6, label=f"old baseline, {sample}")
    values = np.concatenate([data["measured_ms"], predicted, data["baseline_ms"]])
    low, high = values[values > 0].min(), values.max()
    ax.plot([low, high], [low, high], "k-", lw=0.8)
    for factor in (0.9, 1.1):
        ax.plot([low, high], [low * factor, high * factor], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel=f"measured {measured} latency (ms)", ylabel="predicted latency (ms)",
           title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / name, dpi=110)
    plt.close(fig)
    return name


def _sparse_section(result: Mapping[str, Any]) -> list[str]:
    """The sparse engine's program model and its held-out accuracy, beside the ExecuTorch section."""
    from jcw.predictor import program_eval
    sparse = result.get("sparse_programs")
    if sparse is None:
        return ["## Whole programs (sparse engine)", "",
                "The profile has too few sparse-engine programs (`jcw profile --sparse-programs N`), so the predictor "
                "has no sparse program model (card: `sparse_program_model: null`): a network on the sparse engine is "
                "predicted as the sum of its layers as the engine runs them, without its layout conversions.", ""]
    model = sparse["model"]
    coef = ", ".join(f"{t} {c:.3g}" for t, c in zip(model.state()["terms"], model.coef_) if c > 0)
    return ["## Whole programs (sparse engine)", "",
            f"Latency of jcw network files run by the kit's sparse engine at {result['card'].get('threads')} "
            f"thread(s), measured on {sparse['counts']['train']} training and {sparse['counts'].get('holdout', 0)} "
            "held-out programs (ResNet-18/50, MobileNetV1/V2 at genomes and per-layer densities never trained on). "
            "The law: dense ms of the convolutions run dense (NHWC, and depthwise ones run NCHW between sparse "
            "layers, apart), sparse ms of those run sparse at their density, the layout conversions (elements and "
            f"count), and the other operators as for ExecuTorch: **{model.kind_}**. Coefficients (ms per unit): "
            f"{coef}. The old anchor sums the faster kernel of every layer.", "",
            _markdown_table(program_eval.HEADER, program_eval.rows_table(sparse)), ""]


def _program_section(result: Mapping[str, Any]) -> list[str]:
    from jcw.predictor import program_eval
    from jcw.predictor.efficiency import PROGRAM_HEADER, program_table
    programs = result.get("programs")
    threads = result["card"].get("threads")
    if programs is None:
        return ["## Whole programs (ExecuTorch)", "",
                "The profile has too few measured whole programs, so the predictor has no program model "
                "(card: `program_model: null`): a whole program is predicted as the sum of its layers' dense "
                "latencies, which misses pooling, additions, linear layers and the runtime's overheads.", ""]
    model = programs["model"]
    coef = ", ".join(f"{t} {c:.3g}" for t, c in zip(model.state()["terms"], model.coef_) if c > 0)
    cv = "; ".join(f"{kind}: " + ", ".join(f"by {split} {pct(v['within10'])}" for split, v in splits.items())
                   for kind, splits in model.cv_.items())
    parts = ["## Whole programs (ExecuTorch)", "",
             f"Latency of the deployed .pte (ExecuTorch runtime, XNNPACK delegate) at {threads} thread(s), measured "
             f"on {programs['counts']['train']} training programs, {programs['counts'].get('holdout', 0)} held-out "
             f"programs (zoo architectures at genomes never trained on) and {programs['counts'].get('unseen', 0)} "
             "unseen-architecture programs. The program model is a non-negative linear law over the dense latency "
             "of the conv layers (density buys nothing on ExecuTorch), the elements each other operator kind reads "
             "and writes, the linear layers' MACs and per-node, per-layer and per-program costs"
             + (", corrected by small trees on its shares" if model.kind_ == "corrected" else "")
             + f": **{model.kind_}**"
             + (f" (grouped-CV share within ±10%: {cv})" if cv else "") + f". Coefficients (ms per unit): {coef}."
             + (f" Never trained on (pooled cost per element of the operators seen): {', '.join(model.borrowed_)}."
                if model.borrowed_ else ""), "",
             "The baseline is what the kit reported before: the sum over conv layers of the faster kernel. The label "
             "floor compares the fastest odd round with the fastest even round of the same programs.", "",
             _markdown_table(program_eval.HEADER, program_eval.rows_table(programs)), ""]
    if result.get("program_curve"):
        parts += ["### Program sample efficiency", "",
                  "Program models fitted on random subsets of the training programs (mean and worst of the draws).",
                  "", _markdown_table(PROGRAM_HEADER, program_table(result["program_curve"])), ""]
    return parts


def write(directory: str | Path, result: Mapping[str, Any], predicted: np.ndarray, measured: np.ndarray,
          impls: Sequence[str], plotted_set: str) -> Path:
    directory = Path(directory)
    images = _plots(directory, predicted, measured, impls, plotted_set, result["curve"])
    if result.get("programs") is not None:
        images.append(_program_plot(directory, result["programs"]))
    if result.get("sparse_programs") is not None:
        images.append(_program_plot(directory, result["sparse_programs"], "sparse_programs_pred_vs_measured.png",
                                    "whole programs on the sparse engine", ".jcwnet"))
    card = result["card"]
    facts = card.get("device_facts") or {}
    parts = [
        "# Latency predictor report", "",
        f"Profile `{card['profile']}` on {card.get('device_address') or 'unknown device'} "
        f"({facts.get('cpu') or facts.get('cpu_model') or card['runner'].get('cpu', 'unknown CPU')}), runner "
        f"{card.get('runner_version')}, {result['training_rows']} training, {result['holdout_rows']} real-network "
        f"held-out and {result.get('unseen_rows', 0)} unseen-architecture held-out configurations. "
        f"Model chosen by grouped cross-validation: **{result['model']}** "
        "(grouped-CV share within ±10% on real-network-like layers: "
        + ", ".join(f"{k} {pct(v)}" for k, v in result["cv_scores"].items()) + ").", "",
        *_prior_paragraph(result),
        "## Per-layer accuracy on held-out sets", "",
        "Each set was never used to fit the models scored on it. The noise floor compares two single timing "
        "rounds of the same configurations; the label floor compares two labels made the way stored latencies "
        "are (the fastest of the odd rounds against the fastest of the even rounds, with 4 or more rounds). "
        "A stored latency aggregates all rounds, so it is steadier than either: a predictor can beat the noise "
        "floor but not the label floor by much. The set \"holdout, rounds agree ±5%\" keeps the real-network "
        "held-out configurations whose two rounds agree within ±5%: what the predictor achieves once timing "
        "noise is out of the way.", "",
        _markdown_table(METRIC_HEADER, metrics_rows(result["sets"])), "",
    ]
    if result.get("unseen_kinds"):
        parts += ["## Unseen-architecture layers by kind", "", UNSEEN_NOTE, "",
                  _markdown_table(KIND_HEADER, kind_rows(result["unseen_kinds"])), ""]
    if result["network"]:
        parts += ["## Network level", "",
                  f"Networks: {result['network']['construction']}; "
                  f"{pct(result['network']['position_coverage'])} of positions found a held-out layer. "
                  "Latency = sum over layers of the faster kernel (predicted vs measured).", "",
                  _markdown_table(NETWORK_HEADER, network_rows(result["network"], result["best_impl"])), ""]
    parts += _program_section(result)
    parts += _sparse_section(result)
    if result["curve"]:
        from jcw.predictor.efficiency import as_table, first_budget_reaching
        reach = first_budget_reaching(result["curve"])
        parts += ["## Sample efficiency", "",
                  "Subsets of this profile's training layers (the adaptive arm chooses its second half with the "
                  "`jcw.acquisition` plug-in among the unrevealed layers), scored on the real-network holdout.", "",
                  _markdown_table(["layers", "arm", "configurations", "model", "±10% (%)", "RMSPE (%)"],
                                  as_table(result["curve"])), "",
                  f"First budget reaching 95% within ±10%: {reach if reach else 'none of those tried'}.", ""]
    parts += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + [""]
    path = directory / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _prior_paragraph(result: Mapping[str, Any]) -> list[str]:
    """For a transfer predictor: which known device it builds on (its hash) and how, before the tables."""
    prior = result.get("prior")
    declined = result.get("prior_declined")
    if declined:
        return [f"**Prior declined:** `{declined['path']}` (sha256 `{declined['sha256']}`): {declined['why']}. The "
                "tables score the transfer predictor it would have given as \"transfer (declined)\".", ""]
    if not prior:
        return []
    return [f"**Transfer from a known device:** prior `{prior['path']}` (sha256 `{prior['sha256']}`, device "
            f"{prior.get('device_address')}, threads {prior.get('threads')}), strategy **{prior['strategy']}**"
            + (" (picked by `--strategy auto` on this profile's layers held out by shape: "
               + ", ".join(f"{name} {share:.1f} %" for name, share in prior["strategy_scores"].items())
               + " within ±10 %)" if prior.get("asked") == "auto" else "") + ", chosen "
            f"among {len(prior['candidates'])} prior(s) by the smallest median error on this profile's measured layers "
            "after per-operator rescaling. The tables score it as \"ours\" beside the prior as it is and a model "
            "trained on this profile alone (\"no prior\").", ""]

