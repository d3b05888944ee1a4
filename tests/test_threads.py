"""One thread policy for the CLI and the app (diffusion_core/threads.py): idle OpenMP threads sleep
(OMP_WAIT_POLICY=PASSIVE), set before torch loads, unless the user chose otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from diffusion_core.threads import apply_thread_policy

ROOT = Path(__file__).resolve().parents[1]

WATCH_CLI = r"""
import importlib.abc, json, os, runpy, sys

seen = []  # OMP_WAIT_POLICY at the moment torch is first imported


class WatchTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None


sys.meta_path.insert(0, WatchTorch())
sys.argv = ["diffusion_core", "sample", "--help"]
try:
    runpy.run_module("diffusion_core", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps(seen))
"""


def test_cli_process_gets_the_policy_before_torch_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-c", WATCH_CLI], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == ["PASSIVE"]  # torch loaded, with the policy set


def test_a_users_setting_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert apply_thread_policy() == "ACTIVE" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert apply_thread_policy() == "PASSIVE" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
