"""scripts/setup.sh says what it installs and can install the CPU-only torch build; the README's
commands are the ones a newcomer types after it. The script runs against a stub interpreter that
records its calls (no network, nothing installed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
# A stand-in for .venv/bin/python: logs its arguments; torch is "installed" once pip installed it.
here=$(dirname "$0")
echo "$*" >> "$here/calls.log"
case "$*" in
  *find_spec*) [ -f "$here/torch-installed" ] ;;
  *"pip install"*torch*--index-url*) touch "$here/torch-installed"; echo "Collecting torch"; echo "Successfully installed torch-2.9.0+cpu" ;;
  *"pip install"*"-r requirements.txt"*) echo "Requirement already satisfied: numpy>=1.26 in ./.venv"; echo "Collecting streamlit>=1.40"; touch "$here/torch-installed" ;;
  *) true ;;
esac
"""


def run_setup(tmp_path: Path, **env: str) -> tuple[str, list[str]]:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(STUB)
    (bin_dir / "python").chmod(0o755)
    run = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    return run.stdout, (bin_dir / "calls.log").read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_says_what_it_installs(tmp_path):
    out, calls = run_setup(tmp_path, TORCH_CPU="0")
    assert "setup: installing torch (the first time" in out and "setup: installing requirements.txt into .venv" in out
    assert "Collecting streamlit>=1.40" in out  # pip's progress is shown ...
    assert "Requirement already satisfied" not in out  # ... less what is already there
    assert not any("whl/cpu" in c for c in calls)
    assert out.rstrip().endswith("setup: .venv is ready (.venv/bin/python)")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_torch_cpu_installs_the_cpu_build_first(tmp_path):
    out, calls = run_setup(tmp_path, TORCH_CPU="1")
    pips = [c for c in calls if c.startswith("-m pip install --disable-pip-version-check")]
    assert pips[0].endswith("torch --index-url https://download.pytorch.org/whl/cpu")
    assert pips[1].endswith("-r requirements.txt")
    assert "setup: installing the CPU-only torch build" in out and "setup: installing torch (" not in out


def test_readme_commands_are_the_ones_a_newcomer_types():
    readme = (ROOT / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.S))
    cli = [line for line in blocks.splitlines() if "-m diffusion_core" in line]
    assert len(cli) >= 6 and all(line.startswith(".venv/bin/python -m diffusion_core ") for line in cli), cli
    assert "TORCH_CPU=1 bash scripts/setup.sh" in blocks
    assert "http://localhost:8501" in readme and "port 8501" in readme
    assert "DIFFUSION_EXPLORER_DATA" in readme and "`data/` in the repository root" in readme
