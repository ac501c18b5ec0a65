"""Figures of a results store (matplotlib, PNG + SVG), averaged over seeds.

Curves, P@H<=2 and t-SNE are drawn on clean data (no scenario), as in the papers; scenarios
show in ``map_scenario``. Per-bits figures use ``report.curve_bits`` (default: the largest).

- ``pr_lookup``: precision-recall by Hamming radius (hash lookup), one line per method
- ``pr_ranking``: precision-recall by Hamming ranking, on a recall grid
- ``topn``: precision@N and recall@N curves
- ``p_h2_bits``: P@H<=2 against code length (DGHDGH Fig. 4)
- ``map_scenario``: mAP against scenario strength (DCGH Fig. 4, IDGH Table 3 / Fig. 5, HINT Table 6)
- ``tsne``: t-SNE of codes coloured by modality and by class (DCGH Fig. 9, DEMO Fig. 5, HINT Fig. 7)
- ``train_time``: training time against training-set size (DCGH Fig. 8)
- ``lambda``: HINT's lambda during training (HINT Fig. 5), from ``record["hint"]["lambda_per_epoch"]``

Each figure is made only where the records hold what it needs; the list of files written is returned.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cmhash.experiments.config import FIGURES, SCENARIO_AXES, ExperimentConfig
from cmhash.io import atomic_write

DIRS = (("i2t", "Image → Text"), ("t2i", "Text → Image"))


def make_figures(config: ExperimentConfig, entries: list, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    wanted = set(config.report.get("figures", FIGURES))
    done = [e for e in entries if e.record is not None]
    if not done:
        return []
    made: list[Path] = []
    makers: dict[str, Callable[..., list[Path]]] = {
        "pr_lookup": _curve_figures, "pr_ranking": _curve_figures, "topn": _curve_figures,
        "p_h2_bits": _p_h2_bits, "map_scenario": _map_scenario, "tsne": _tsne,
        "train_time": _train_time, "lambda": _lambda,
    }
    for name in FIGURES:
        if name in wanted:
            made += makers[name](name, config, done, out)
    return made


# ---------------------------------------------------------------------------- helpers


def _scenario_key(e) -> tuple:
    return tuple(e.cell.scenario)


def _scenario_text(key: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in key) or "clean"


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p != "")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")


def _save(fig, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        # no creation date, fixed SVG ids: the same results give byte-identical figure files
        with atomic_write(path, "wb") as fh, plt.rc_context({"svg.hashsalt": "cmhash"}):
            fig.savefig(fh, format=ext, dpi=120 if ext == "png" else None, bbox_inches="tight",
                        metadata={"Date": None} if ext == "svg" else {"Software": None})
        paths.append(path)
    plt.close(fig)
    return paths


def _methods(entries: list) -> list[str]:
    out: list[str] = []
    for e in entries:
        if e.cell.method.label not in out:
            out.append(e.cell.method.label)
    return out


def _curve_bits(config: ExperimentConfig, entries: list) -> int:
    if "curve_bits" in config.report:
        return int(config.report["curve_bits"])
    return max(e.cell.bits for e in entries)


def _mean_curve(records: list[dict], direction: str, kind: str, x: str, y: str) -> tuple[np.ndarray, np.ndarray] | None:
    curves = [r["curves"].get(direction, {}).get(kind) for r in records]
    curves = [c for c in curves if c]
    if not curves:
        return None
    xs = _floats(curves[0][x])
    ys = [_floats(c[y]) for c in curves if len(c[y]) == len(xs)]
    return xs, np.mean(ys, axis=0)


def _floats(values: list) -> np.ndarray:
    """A stored curve as floats (null, an undefined point, becomes NaN and is not drawn)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


# ------------------------------------------------------------------------ curve figures

CURVES = {
    "pr_lookup": [("pr_lookup", "recall", "precision", "recall", "precision", "PR by Hamming radius")],
    "pr_ranking": [("pr_ranking", "recall", "precision", "recall", "precision", "PR by Hamming ranking")],
    "topn": [("topn", "n", "precision", "N", "precision@N", "P@N"),
             ("topn", "n", "recall", "N", "recall@N", "R@N")],
}


def _curve_figures(name: str, config: ExperimentConfig, entries: list, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    bits = _curve_bits(config, entries)
    made: list[Path] = []
    groups: dict[tuple, list] = defaultdict(list)
    for e in entries:  # clean data (the papers' curves); scenarios show in map_scenario
        if e.cell.bits == bits and not e.cell.scenario:
            groups[(e.cell.dataset.label, _scenario_key(e))].append(e)
    for (dataset, scen), group in groups.items():
        panels = CURVES[name]
        fig, axes = plt.subplots(len(panels), 2, figsize=(10, 4 * len(panels)), squeeze=False, layout="constrained")
        drawn = False
        for row, (kind, xk, yk, xlabel, ylabel, title) in enumerate(panels):
            for col, (direction, dir_title) in enumerate(DIRS):
                ax = axes[row][col]
                for label in _methods(group):
                    recs = [e.record for e in group if e.cell.method.label == label]
                    curve = _mean_curve(recs, direction, kind, xk, yk)
                    if curve is None:
                        continue
                    ax.plot(curve[0], curve[1], marker="." if len(curve[0]) < 40 else None, label=label)
                    drawn = True
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                ax.set_title(f"{title}, {dir_title}")
                ax.grid(alpha=0.3)
                if ax.lines:
                    ax.legend(fontsize=8)
        if not drawn:
            plt.close(fig)
            continue
        fig.suptitle(f"{dataset}, {bits} bits, {_scenario_text(scen)} (mean over seeds)")
        made += _save(fig, out, _slug(name, dataset, f"{bits}b", _scenario_text(scen) if scen else ""))
    return made


# --------------------------------------------------------------------- metric figures


def _metric_lines(entries: list, x_of: Callable[[Any], Any], metric: Callable[[dict], float | None]):
    """label -> sorted [(x, mean, std)] over seeds."""
    acc: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        value = metric(e.record)
        if value is not None:
            acc[e.cell.method.label][x_of(e)].append(value)
    out = {}
    for label, by_x in acc.items():
        xs = sorted(by_x)
        out[label] = [(x, float(np.mean(by_x[x])), float(np.std(by_x[x]))) for x in xs]
    return out


def _missing_points(entries: list, x_of: Callable[[Any], Any], metric: Callable[[dict], float | None]):
    """label -> {x: (cells without a value, cells)} where some cell has no value."""
    acc: dict[str, dict[Any, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        acc[e.cell.method.label][x_of(e)].append(metric(e.record) is None)
    return {label: {x: (sum(flags), len(flags)) for x, flags in sorted(by_x.items()) if any(flags)}
            for label, by_x in acc.items() if any(any(f) for f in by_x.values())}


def _line_panels(lines_by_dir: dict[str, dict], xlabel: str, ylabel: str, title: str, xlog: bool = False,
                 missing: dict[str, dict] | None = None, missing_why: str = ""):
    """One panel per direction; ``missing`` (direction -> label -> {x: (without value, cells)})
    is drawn as a hollow marker on the x axis labelled "no value" (or "k/m no value")."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lines_by_dir), figsize=(5 * len(lines_by_dir), 4), squeeze=False, layout="constrained")
    for ax, (dir_title, lines) in zip(axes[0], lines_by_dir.items()):
        for label, pts in lines.items():
            xs, ms, ss = (np.array([p[i] for p in pts], dtype=float) for i in range(3))
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
        gaps = (missing or {}).get(dir_title, {})
        for label, points in gaps.items():
            for x, (without, cells) in points.items():
                ax.plot([x], [0.0], marker="v", markersize=9, markerfacecolor="none", color="tab:gray",
                        transform=ax.get_xaxis_transform(), clip_on=False)
                ax.annotate(f"{label}: {'no value' if without == cells else f'{without}/{cells} no value'}",
                            (x, 0.0), xycoords=ax.get_xaxis_transform(), xytext=(0, 8),
                            textcoords="offset points", ha="center", fontsize=7, rotation=90, va="bottom")
        if gaps:
            ax.plot([], [], marker="v", linestyle="none", markerfacecolor="none", color="tab:gray",
                    label=f"no value{': ' + missing_why if missing_why else ''}")
        if xlog:
            ax.set_xscale("log", base=2)
            xt = sorted({p[0] for pts in lines.values() for p in pts})
            ax.set_xticks(xt)
            ax.set_xticklabels([str(int(x)) if float(x).is_integer() else str(x) for x in xt])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(dir_title)
        ax.grid(alpha=0.3)
        if lines or gaps:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def _p_h2_bits(name, config, entries, out) -> list[Path]:
    made = []
    groups: dict[tuple, list] = defaultdict(list)
    for e in entries:
        if not e.cell.scenario:
            groups[(e.cell.dataset.label, _scenario_key(e))].append(e)
    for (dataset, scen), group in groups.items():
        metric = {d: (lambda r, d=d: _pct(r["metrics"][d].get("p_at_h2"))) for d, _ in DIRS}
        lines = {t: _metric_lines(group, lambda e: e.cell.bits, metric[d]) for d, t in DIRS}
        missing = {t: _missing_points(group, lambda e: e.cell.bits, metric[d]) for d, t in DIRS}
        if len({e.cell.bits for e in group}) < 2:
            continue
        fig = _line_panels(lines, "bits", "P@H≤2 (%)", f"P@H≤2 against code length — {dataset}, {_scenario_text(scen)}",
                           xlog=True, missing=missing, missing_why="no query retrieves anything within radius 2")
        made += _save(fig, out, _slug(name, dataset, _scenario_text(scen) if scen else ""))
    return made


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _map_scenario(name, config, entries, out) -> list[Path]:
    bits = _curve_bits(config, entries)
    made = []
    for axis in config.scenarios:
        if len(axis.values) < 2:
            continue
        others = [a.name for a in config.scenarios if a.name != axis.name]
        groups: dict[tuple, list] = defaultdict(list)
        for e in entries:
            if e.cell.bits == bits:
                sd = e.cell.scenario_dict
                groups[(e.cell.dataset.label, tuple((o, sd[o]) for o in others))].append(e)
        for (dataset, rest), group in groups.items():
            lines = {t: _metric_lines(group, lambda e: _axis_x(e, axis.name),
                                      lambda r, d=d: 100.0 * r["metrics"][d]["map"]) for d, t in DIRS}
            rest_text = ", ".join(f"{k}={v}" for k, v in rest if v != SCENARIO_AXES[k])
            fig = _line_panels(lines, axis.name, "mAP@all (%)",
                               f"mAP against {axis.name} — {dataset}, {bits} bits" + (f", {rest_text}" if rest_text else ""))
            made += _save(fig, out, _slug(name, axis.name, dataset, f"{bits}b", rest_text))
    return made


def _axis_x(e, axis: str) -> float:
    """The axis value as a number: 'all' training pairs is the full training split."""
    value = e.cell.scenario_dict[axis]
    if value == "all":
        return float(e.record["data"]["train"])
    if value == "default":
        return float(e.record["record"]["hparams"].get("batch_size", np.nan))
    return float(value)


def _train_time(name, config, entries, out) -> list[Path]:
    if not any(a.name == "train_size" and len(a.values) > 1 for a in config.scenarios):
        return []
    made = []
    groups: dict[tuple, list] = defaultdict(list)
    for e in entries:
        rest = tuple((k, v) for k, v in e.cell.scenario if k != "train_size")
        groups[(e.cell.dataset.label, rest)].append(e)
    for (dataset, rest), group in groups.items():
        lines: dict[str, list] = {}
        for bits in sorted({e.cell.bits for e in group}):
            sub = [e for e in group if e.cell.bits == bits]
            for label, pts in _metric_lines(sub, lambda e: float(e.record["data"]["train"]),
                                            lambda r: r["record"].get("wall_time_s")).items():
                lines[f"{label}, {bits} bits"] = pts
        fig = _line_panels({"training time (mean ± std over seeds)": lines}, "training pairs", "seconds",
                           f"Training time against data size — {dataset}" + (f", {_scenario_text(rest)}" if rest else ""))
        made += _save(fig, out, _slug(name, dataset, _scenario_text(rest) if rest else ""))
    return made


def lambda_curve(record: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """HINT's lambda per epoch from a run record: ``record["hint"]["lambda_per_epoch"]`` is a
    list of ``{"epoch": e, "image": mean lambda, "text": mean lambda}`` (cmhash.methods.hint)."""
    rows = (record.get("hint") or {}).get("lambda_per_epoch") or []
    if not rows:
        return None
    return {k: np.array([r[k] for r in rows], dtype=float) for k in ("epoch", "image", "text")}


def _lambda(name, config, entries, out) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves: dict[tuple, list] = defaultdict(list)
    for e in entries:
        lam = lambda_curve(e.record["record"])
        if lam is not None:
            curves[(e.cell.dataset.label, e.cell.method.label, e.cell.bits)].append(lam)
    made = []
    by_dataset: dict[str, list] = defaultdict(list)
    for (dataset, label, bits), runs in curves.items():
        by_dataset[dataset].append((label, bits, runs))
    for dataset, items in by_dataset.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
        for ax, modality in zip(axes, ("image", "text")):
            for label, bits, runs in items:
                n = min(len(r["epoch"]) for r in runs)
                ax.plot(runs[0]["epoch"][:n], np.mean([r[modality][:n] for r in runs], axis=0),
                        label=f"{label}, {bits} bits")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel("λ (batch MMD, mean over the epoch)")
            ax.set_title(f"{modality} batches")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"HINT's λ during training — {dataset} (mean over seeds)")
        made += _save(fig, out, _slug(name, dataset))
    return made


# -------------------------------------------------------------------------------- t-SNE


def _display_classes(labels: list[list[int]]) -> tuple[np.ndarray, bool]:
    """One class per item for colouring: its label, or for multi-label items the label that is
    rarest in the sample (the most telling one; ties by class index). Unlabelled items: -1."""
    counts: dict[int, int] = defaultdict(int)
    for lab in labels:
        for c in lab:
            counts[c] += 1
    out = np.array([min(lab, key=lambda c: (counts[c], c)) if lab else -1 for lab in labels])
    return out, any(len(lab) > 1 for lab in labels)


TSNE_LEGEND_CLASSES = 20  # more classes than this: the legend names the first ones and counts the rest


def _class_panel(ax, emb: np.ndarray, classes: np.ndarray, n: int, multi: bool) -> None:
    """t-SNE points coloured by class (o image, x text) with a legend naming each class's colour."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cmap = plt.get_cmap("tab10" if classes.max() < 10 else "tab20")
    is_image = np.arange(2 * n) < n
    handles = []
    for c in np.unique(classes):
        sel = classes == c
        colour = "lightgray" if c < 0 else cmap(int(c) % cmap.N)
        ax.scatter(emb[sel & is_image, 0], emb[sel & is_image, 1], s=9, color=colour, marker="o")
        ax.scatter(emb[sel & ~is_image, 0], emb[sel & ~is_image, 1], s=12, color=colour, marker="x")
        handles.append(Line2D([], [], marker="s", linestyle="none", color=colour,
                              label="no label" if c < 0 else f"class {int(c)}"))
    shown = handles[:TSNE_LEGEND_CLASSES]
    if len(handles) > len(shown):
        shown.append(Line2D([], [], linestyle="none", label=f"... {len(handles) - len(shown)} more classes"))
    shown += [Line2D([], [], marker="o", linestyle="none", color="black", label="image"),
              Line2D([], [], marker="x", linestyle="none", color="black", label="text")]
    ax.legend(handles=shown, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("coloured by class" + (" (each item's rarest label)" if multi else ""))


def _tsne(name, config, entries, out) -> list[Path]:
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from cmhash.experiments.measure import decode_sample

    # scikit-learn >= 1.5 names the iteration count max_iter (n_iter before)
    iters = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    bits = int(config.report.get("tsne_bits", max(e.cell.bits for e in entries)))
    made = []
    chosen: dict[tuple, Any] = {}
    for e in entries:  # the first seed of each (dataset, method) at the chosen bits, clean data
        k = (e.cell.dataset.label, e.cell.method.label, _scenario_key(e))
        if e.cell.bits == bits and not e.cell.scenario and e.record.get("codes") and (k not in chosen or e.cell.seed < chosen[k].cell.seed):
            chosen[k] = e
    for (dataset, label, scen), e in chosen.items():
        sample = e.record["codes"]
        img, txt = decode_sample(sample, "image"), decode_sample(sample, "text")
        x = np.vstack([img, txt]).astype(np.float32)
        n = len(img)
        # exact gradients for the few hundred points stored per cell (faster than Barnes-Hut here)
        emb = TSNE(n_components=2, perplexity=min(30.0, max(2.0, (2 * n - 1) / 3)), init="pca",
                   random_state=0, metric="hamming", n_jobs=1, **{iters: 500},
                   method="exact" if 2 * n <= 1000 else "barnes_hut").fit_transform(x)
        classes, multi = _display_classes(sample["labels"])
        classes = np.concatenate([classes, classes])
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
        a1.scatter(emb[:n, 0], emb[:n, 1], s=9, c="tab:red", label="image", alpha=0.7)
        a1.scatter(emb[n:, 0], emb[n:, 1], s=9, c="tab:green", label="text", alpha=0.7)
        a1.set_title("coloured by modality")
        a1.legend()
        _class_panel(a2, emb, classes, n, multi)
        for ax in (a1, a2):
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"t-SNE of {bits}-bit query codes — {label} on {dataset}, {_scenario_text(scen)}, seed {e.cell.seed}")
        made += _save(fig, out, _slug(name, dataset, label, f"{bits}b", _scenario_text(scen) if scen else ""))
    return made
