"""PNG plots of a result (matplotlib optional: without it the plots are skipped with one line)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .common import rows_from_dict


def plot_all(result: dict, out_dir: Path, slug: str) -> str:
    """One horizontal bar chart per suite: median ms per (op, shape, mode) and provider, log scale.

    Returns a markdown line listing the written files, or saying why none were.
    """
    if importlib.util.find_spec("matplotlib") is None:
        return "plots: skipped (matplotlib is not installed; pip install 'arc-fast[bench]')"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows_from_dict(result) if r.status == "ok" and r.median_ms]
    written = []
    for suite in dict.fromkeys(r.suite for r in rows):
        sr = [r for r in rows if r.suite == suite]
        groups = list(dict.fromkeys((r.op, r.shape, r.dtype, r.mode) for r in sr))
        providers = list(dict.fromkeys(r.provider for r in sr))
        height = max(2.5, 0.32 * len(groups) * max(1, len(providers)) ** 0.5 + 1.5)
        fig, ax = plt.subplots(figsize=(11, min(height, 60)))
        bar = 0.8 / max(1, len(providers))
        for j, p in enumerate(providers):
            ys, xs = [], []
            for i, g in enumerate(groups):
                r = next((r for r in sr if (r.op, r.shape, r.dtype, r.mode) == g and r.provider == p), None)
                if r is not None:
                    ys.append(i + j * bar)
                    xs.append(r.median_ms)
            ax.barh(ys, xs, height=bar, label=p)
        ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(groups))])
        ax.set_yticklabels([f"{op} [{mode}] {dt}\n{shape}" for op, shape, dt, mode in groups], fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("median ms (log)")
        ax.invert_yaxis()
        ax.set_title(f"{suite}: {result.get('device_name')} @ {str(result.get('commit', ''))[:10]}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"{slug}-{suite}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return "plots: " + (", ".join(written) if written else "none (no timed rows)")
