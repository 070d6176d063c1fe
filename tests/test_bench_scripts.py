"""The GPU check scripts work before a GPU is lent: bench/paper_throughput.py on the CPU, and
bench/gpu_check.sh's syntax and its one-line refusal without a GPU (exit status 2).

The throughput run times two paper-scale stages (ResNet-20 fine-tuning for l1, ResNet-56 with ManiDP's
predictors for ManiDP) for 1 + 1 steps on one thread: about 15 s of CPU time.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT = REPO / "bench" / "paper_throughput.py"
GPU_CHECK = REPO / "bench" / "gpu_check.sh"
NO_GPU = "gpu_check: no CUDA device: run this on the lent GPU machine"


def _throughput_module():
    spec = importlib.util.spec_from_file_location("paper_throughput", THROUGHPUT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_throughput_on_cpu_prints_a_row_per_stage(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(THROUGHPUT), "--device", "cpu", "--steps", "1", "--warmup", "1",
                        "--eval-steps", "1", "--only", "resnet20_l1,resnet20_manidp", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SYNTHETIC" in r.stdout and "estimate from synthetic-data throughput" in r.stdout
    table = r.stdout.split("== throughput table", 1)[1].splitlines()
    head = table[1].split()
    assert head[:6] == ["config", "method", "model", "stage", "device", "batch"]
    body = {line.split()[0]: line.split() for line in table[2:] if line.startswith("resnet20_")}
    assert body["resnet20_l1"][1:4] == ["l1", "resnet20", "finetune"]
    assert body["resnet20_manidp"][1:4] == ["manidp", "resnet56", "learn"]  # paper scale: ResNet-56
    for row in body.values():
        assert float(row[head.index("img/s") + 1]) > 0  # "cpu fp32" is two words
    rows = json.loads(out.read_text())["rows"]
    assert [(x["config"], x["stage"]) for x in rows] == [("resnet20_l1", "finetune"), ("resnet20_manidp", "learn")]
    for x in rows:
        assert x["train_images_per_s"] > 0 and x["eval_images_per_s"] > 0 and x["hours"] > 0
        assert x["run_hours"] == x["hours"] and not x.get("error")
    assert rows[1]["epochs"] == 400 and rows[1]["batch"] == 128 and rows[1]["train_images_per_epoch"] == 49920


def test_paper_throughput_stages_and_splits_follow_the_configs():
    from prunelab.config import load_config

    m = _throughput_module()
    stages = {n: [s for s, _ in m.stages_of(load_config(n, "paper"))]
              for n in ("resnet56", "resnet20_l1", "resnet20_manidp", "resnet20_ddnp", "resnet20_pfs", "bar_wrn_bar")}
    assert stages == {"resnet56": ["train"], "resnet20_l1": ["finetune"], "resnet20_manidp": ["learn"],
                      "resnet20_ddnp": ["learn", "finetune"], "resnet20_pfs": ["learn", "finetune"],
                      "bar_wrn_bar": ["learn", "finetune"]}
    ddnp = dict(m.stages_of(load_config("resnet20_ddnp", "paper")))
    # DDNP searches on 5 % (2,500 images) and evaluates on the other 95 % and the test set every epoch
    assert m.split_sizes(ddnp["learn"].data) == (2500, 47500 + 10000)
    assert m.split_sizes(ddnp["finetune"].data) == (50000, 10000)
    pfs = dict(m.stages_of(load_config("resnet20_pfs", "paper")))
    assert m.split_sizes(pfs["learn"].data) == (45000, 5000 + 10000)
    h, per_epoch, _ = m.hours(pfs["finetune"], {"train_images_per_s": 1000.0, "eval_images_per_s": 5000.0})
    assert per_epoch == 49920 and h == pytest.approx((320 * 49920 / 1000 + 320 * 10000 / 5000) / 3600)


def test_gpu_check_syntax():
    r = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("smi", ["missing", "path"])
def test_gpu_check_without_a_gpu_is_one_line_and_status_2(tmp_path, smi):
    env = dict(os.environ)
    if smi == "missing":
        env["NVIDIA_SMI"] = str(tmp_path / "no-nvidia-smi")
    elif shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: gpu_check.sh would run the whole check")
    r = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == NO_GPU and r.stdout == ""


def test_paper_throughput_refuses_cuda_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, str(THROUGHPUT), "--device", "cuda"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 2 and "no CUDA device" in r.stderr and r.stdout == ""


def test_manidp_step_profile_prints_the_ladder_and_restores_the_method():
    """One step per rung: the ladder lists every rung with a ratio against dense, the operator table has
    rows, and the ``no mask`` rung's swap of MaskAndPool.apply does not outlive its measurement."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "manidp_step_profile.py"), "--steps", "1",
                        "--rounds", "1", "--top", "3"], capture_output=True, text=True, env=env, timeout=600,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    for rung in ("dense", "predictors, no mask", "+ mask", "+ sparsity", "+ L_sim (ManiDP)"):
        assert f"  {rung} " in r.stdout, r.stdout
    ops = r.stdout.split("operator ", 1)[1].splitlines()[1:]
    assert len(ops) == 3 and all(line.split()[-1].startswith(("+", "-")) for line in ops), r.stdout
    spec = importlib.util.spec_from_file_location("manidp_step_profile", REPO / "bench" / "manidp_step_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = mod.MaskAndPool.apply
    mod.timed("predictors, no mask", x, y, 1)
    assert mod.MaskAndPool.apply == before
