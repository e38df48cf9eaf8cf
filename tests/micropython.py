"""Run code in the real MicroPython interpreter: its WebAssembly port, under Node.

The npm package ``@micropython/micropython-webassembly-pyscript`` (installed by
``scripts/test`` into ``<repo>/.node``) is the MicroPython VM compiled to wasm, with
``loadMicroPython()`` returning an interpreter whose ``runPython()`` executes source
and whose ``FS`` is an in-memory filesystem (``/lib`` is on ``sys.path``).

One call to :func:`run_micropython` starts ONE Node process for any number of
snippets; each snippet gets a fresh interpreter (about 25 ms) with the same files, so
snippets cannot leak state into each other while Node starts only once per call.

    runs = run_micropython({"hello": "print(1 + 1)"}, files={"/lib/m.py": source})
    runs["hello"].check().stdout == "2"

:func:`require_micropython` skips a test when Node or the package is missing (and
fails it under CI, where both must be installed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / ".node" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
ENTRY = PACKAGE_DIR / "micropython.mjs"

# The Node side: read a job (files + snippets) as JSON on stdin, run each snippet in a
# fresh interpreter, write one JSON array of results on stdout. MicroPython's output
# goes to callbacks, never to Node's own stdout, so the JSON stays clean.
_RUNNER = r"""
import { pathToFileURL } from "node:url";
const { loadMicroPython } = await import(pathToFileURL(process.env.MICROPYTHON_MJS).href);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
const results = [];
for (const snippet of job.snippets) {
  const out = [], err = [];
  let error = null, errorType = null;
  try {
    const mp = await loadMicroPython({
      heapsize: job.heapsize, stdout: s => out.push(s), stderr: s => err.push(s),
    });
    for (const [path, text] of Object.entries(job.files)) {
      const parts = path.split("/").filter(p => p);
      let dir = "";
      for (const part of parts.slice(0, -1)) {
        dir += "/" + part;
        try { mp.FS.mkdir(dir); } catch (e) { /* exists */ }
      }
      mp.FS.writeFile(path, text);
    }
    mp.runPython(snippet.code);
  } catch (e) {
    errorType = e.name === "PythonError" ? e.type : (e.name || "Error");
    error = e.name === "PythonError" ? e.message : String(e && e.stack || e);
  }
  results.push({ name: snippet.name, stdout: out.join("\n"), stderr: err.join("\n"),
                 error, error_type: errorType });
}
process.stdout.write(JSON.stringify(results));
"""


class MicroPythonError(AssertionError):
    """MicroPython code raised, or the Node harness itself failed."""


@dataclass(frozen=True, slots=True)
class MicroPythonRun:
    """What one snippet did: its printed lines, and the exception it ended with."""

    name: str
    stdout: str
    stderr: str
    error: str | None  # MicroPython traceback text
    error_type: str | None  # e.g. "ValueError"

    def check(self) -> MicroPythonRun:
        """Raise :class:`MicroPythonError` (with the traceback) if the snippet raised."""
        if self.error is not None:
            raise MicroPythonError(
                f"MicroPython snippet {self.name!r} raised {self.error_type}:\n{self.error}"
                f"\n--- stdout ---\n{self.stdout}"
            )
        return self

    def json(self) -> Any:
        """The last printed line parsed as JSON (how snippets hand results back)."""
        lines = self.check().stdout.strip().splitlines()
        if not lines:
            raise MicroPythonError(f"MicroPython snippet {self.name!r} printed nothing")
        try:
            return json.loads(lines[-1])
        except ValueError as e:
            raise MicroPythonError(
                f"MicroPython snippet {self.name!r}: last line is not JSON: {lines[-1]!r}"
            ) from e


def find_node() -> str | None:
    return shutil.which("node") or (
        "/usr/bin/node" if os.access("/usr/bin/node", os.X_OK) else None
    )


def unavailable_reason() -> str | None:
    """Why MicroPython cannot run here, or None when it can."""
    if find_node() is None:
        return "node is not installed (apt-get install nodejs, or run scripts/test)"
    if not ENTRY.is_file():
        return (
            f"MicroPython WebAssembly port missing: {ENTRY} "
            "(run scripts/test, or npm install --prefix .node "
            "@micropython/micropython-webassembly-pyscript)"
        )
    return None


def require_micropython() -> None:
    """Skip the calling test when Node or the package is missing; fail under CI."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} -- required under CI", pytrace=False)
    pytest.skip(reason)


def run_micropython(
    snippets: Mapping[str, str],
    *,
    files: Mapping[str, str | Path] | None = None,
    heapsize: int = 4 * 1024 * 1024,
    timeout: float = 60.0,
) -> dict[str, MicroPythonRun]:
    """Run each snippet (name -> source) in a fresh MicroPython, all in one Node process.

    ``files`` maps a path in MicroPython's filesystem (``/lib/x.py`` is importable as
    ``x``) to its text, or to a host file to copy.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise MicroPythonError(reason)
    node = find_node()
    assert node is not None
    job = {
        "heapsize": heapsize,
        "files": {
            path: src.read_text(encoding="utf-8") if isinstance(src, Path) else src
            for path, src in (files or {}).items()
        },
        "snippets": [{"name": name, "code": code} for name, code in snippets.items()],
    }
    try:
        proc = subprocess.run(
            [node, "--input-type=module", "-e", _RUNNER],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "MICROPYTHON_MJS": str(ENTRY)},
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise MicroPythonError(
            f"MicroPython under Node did not finish {len(snippets)} snippet(s) in {timeout}s"
        ) from e
    if proc.returncode != 0:
        # Node prints the minified module source with some errors: keep the tail.
        raise MicroPythonError(
            f"node exited with status {proc.returncode}: {proc.stderr[-2000:]}"
        )
    try:
        results = json.loads(proc.stdout)
    except ValueError as e:
        raise MicroPythonError(f"node harness printed no JSON: {proc.stdout[-2000:]!r}") from e
    return {r["name"]: MicroPythonRun(**r) for r in results}
