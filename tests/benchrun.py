"""Run a benchmark module the way a user does, and split its table from its ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_bench(module: str, workdir: Path, **env_extra: str) -> tuple[str, dict[str, Any]]:
    """``python -m <module> --quick --json --dir <workdir>``: (the table, the JSON report)."""
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json", "--dir", str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    table, brace, doc_text = proc.stdout.partition("\n{")
    assert brace, f"no JSON after the table:\n{proc.stdout[-3000:]}"
    return table, json.loads("{" + doc_text)
