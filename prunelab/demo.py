"""``make demo``: execute every notebook headlessly and collect its figures.

Each notebook runs at ``cpu`` scale when its cached results exist (``results/<study>_cpu.json``) and at
``ci`` scale otherwise (the notebooks decide through ``PRUNELAB_SCALE=auto``). Executed notebooks go
to ``out/notebooks/``, figures to ``out/figures/<notebook>/``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import nbformat
    from nbclient import NotebookClient

    out = ROOT / "out"
    nb_dir = ROOT / "notebooks"
    names = sorted(nb_dir.glob("*.ipynb"))
    if not names:
        print(f"no notebooks found in {nb_dir}", file=sys.stderr)
        return 1
    os.environ.setdefault("PRUNELAB_SCALE", "auto")
    os.environ["PRUNELAB_OUT"] = str(out / "figures")
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    # the kernels' own log lines (TCP warning, interrupt at shutdown) go to a file, not the console;
    # errors inside a notebook arrive through the client and are reported below
    failed = []
    with open(out / "kernel.log", "w") as kernel_log:
        for path in names:
            t = time.time()
            for attempt in (1, 2):
                nb = nbformat.read(path, as_version=4)
                try:
                    # a kernel that misses its first request leaves the client waiting; the per-cell
                    # timeout turns that into an error and the notebook is run once more
                    NotebookClient(nb, timeout=1200, startup_timeout=120, kernel_name="python3",
                                   resources={"metadata": {"path": str(nb_dir)}}).execute(stderr=kernel_log)
                    status = "ok" if attempt == 1 else "ok (second attempt)"
                    break
                except Exception as e:  # noqa: BLE001 - report every notebook, then fail
                    status = f"FAILED: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
            if status.startswith("FAILED"):
                failed.append(path.name)
            nbformat.write(nb, out / "notebooks" / path.name)
            scale = next((o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                          if o.get("output_type") == "stream" and "scale" in o.get("text", "")), "").strip().splitlines()
            scale_line = scale[0] if scale else "scale not printed"
            print(f"{path.name}: {status} in {time.time() - t:.0f} s ({scale_line})", flush=True)
    figs = sorted((out / "figures").rglob("*.png"))
    print(f"\n{len(figs)} figures written to {out / 'figures'}")
    for sub in sorted({f.parent for f in figs}):
        print(f"  {sub.relative_to(ROOT)}/: {', '.join(f.name for f in sorted(sub.glob('*.png')))}")
    print(f"executed notebooks: {out / 'notebooks'} (kernel logs: {out / 'kernel.log'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
