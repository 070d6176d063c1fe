"""Every cached results file says what made it and still fits the recipe it names.

For each ``results/<study>_<scale>.json``: the command, the package version, the git commit and the
recipe fingerprints (resolved configs, code) are recorded; every config of the recipe still resolves
at that scale; the keys the study's notebook reads are present. Whether the code moved on since is not
a failure here: the notebooks print a warning then (:func:`prunelab.experiments.provenance_note`).
"""

from __future__ import annotations

import json

import pytest

from prunelab.config import load_config
from prunelab.experiments import RECIPES, RESULTS_DIR, provenance, provenance_note, staleness

FILES = sorted(p for p in RESULTS_DIR.glob("*.json") if not p.name.endswith(".partial.json")
               and not p.name.startswith("bench_"))

# what each study's notebook reads from its results (top-level keys)
NOTEBOOK_KEYS = {
    "quickstart": {"dense", "l1"},
    "pfs": {"structures", "sweeps", "layers", "full_widths", "seeds", "epochs", "pretrain_acc", "full_acc"},
    "bar": {"runs", "baselines", "dense", "teacher", "sensitivity", "full_active_neurons"},
    "manidp": {"variants", "layers", "channels", "dense", "dense_macs", "hyperparameters"},
    "ddnp": {"runs", "compare", "settings", "layers", "channels", "p", "dense", "model"},
}
# files made before fingerprints were recorded (each still names its command and commit)
PREDATES_FINGERPRINTS: set[str] = set()
# files whose study's recipe (configs or code files) changed since they were made: their notebooks warn;
# rerunning the study's command (or --collect on its run folders) refreshes them
RECIPE_CHANGED = {"bar_cpu.json": "the BAR study moved onto the runner; its recipe now also lists methods/l1.py "
                                  "(the one L1 score of the WM rule) and experiments/tasks.py",
                  "ddnp_cpu.json": "the DDNP study gained its rank part (issue 29): its recipe now also lists the "
                                   "slimming, HRank and CHIP configs and method files"}


def test_every_study_has_cached_cpu_results():
    assert {p.name for p in FILES} >= {f"{s}_cpu.json" for s in RECIPES}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_cached_results_record_their_recipe(path):
    r = json.loads(path.read_text())
    study, scale = r.get("study"), r.get("scale")
    assert study in RECIPES and path.name == f"{study}_{scale}.json"
    assert r.get("command", "").startswith(f"prunelab experiment {study} --scale {scale}")
    assert r.get("commit")
    missing = NOTEBOOK_KEYS[study] - set(r)
    assert not missing, f"{path.name} lacks {sorted(missing)}, which its notebook reads"
    for c in RECIPES[study]["configs"]:
        load_config(c, scale)  # still resolves (raises a ConfigError naming the problem otherwise)
    if path.name in PREDATES_FINGERPRINTS:
        pytest.xfail(f"{path.name} predates the package version and recipe fingerprints: {staleness(r)}")
    assert r.get("package_version")
    assert len(r.get("config_hash", "")) == 64 and len(r.get("code_hash", "")) == 64
    if path.name in RECIPE_CHANGED and r["recipe"] != RECIPES[study]:
        pytest.xfail(f"{path.name}: {RECIPE_CHANGED[path.name]}")
    assert r["recipe"] == RECIPES[study]


def test_staleness_is_detected(tmp_path, monkeypatch):
    """A fingerprint that no longer matches the code gives the notebook's warning; a current one does not."""
    now = provenance("ddnp", "ci")
    fresh = {"study": "ddnp", "scale": "ci", "command": "x", "commit": "abc", **now}
    assert staleness(fresh) == [] and "WARNING" not in provenance_note(fresh)
    old = {**fresh, "code_hash": "0" * 64}
    assert "changed since" in staleness(old)[0] and "WARNING" in provenance_note(old)
    assert "predate" in staleness({"study": "ddnp", "scale": "ci"})[0]
