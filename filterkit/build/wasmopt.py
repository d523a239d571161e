"""Optional post-build step: shrink a module with binaryen's ``wasm-opt`` when it is installed.

Never required: without ``wasm-opt`` the module is kept as the compiler wrote it, and when
``wasm-opt`` fails the unoptimised module is kept with a warning. ``WASM_OPT=/path/to/wasm-opt``
picks a binary, ``WASM_OPT=0`` (or ``build: {wasm_opt: false}`` in filterkit.yaml) turns the step off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# The features rustc ≥ 1.70 may emit for wasm32 (its default CPU), which Envoy's V8, WAMR and wasmtime
# all run. The module carries no target_features section after `strip`, so they are named here;
# wasm-opt would otherwise assume the MVP and reject the module.
FEATURES = ("--enable-sign-ext", "--enable-mutable-globals", "--enable-nontrapping-float-to-int",
            "--enable-bulk-memory", "--enable-reference-types", "--enable-multivalue")
LEVEL = "-Oz"


def find_wasm_opt() -> str | None:
    configured = os.environ.get("WASM_OPT", "").strip()
    if configured.lower() in ("0", "false", "no", "off"):
        return None
    if configured:
        path = Path(configured).expanduser()
        return str(path) if path.is_file() else shutil.which(configured)
    return shutil.which("wasm-opt")


def optimize_wasm(module: Path, log) -> dict | None:
    """Optimise ``module`` in place; the sizes before and after, or None when nothing was done."""
    tool = find_wasm_opt()
    if tool is None:
        return None
    before = module.stat().st_size
    optimized = module.with_name(module.name + ".opt")
    try:
        result = subprocess.run([tool, LEVEL, *FEATURES, str(module), "-o", str(optimized)],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        ok = result.returncode == 0 and optimized.is_file() and optimized.read_bytes()[:4] == b"\0asm"
        problem = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0] if not ok else ""
    except (OSError, subprocess.TimeoutExpired) as err:
        ok, problem = False, str(err)
    if not ok:
        optimized.unlink(missing_ok=True)
        log(f"warning: wasm-opt ({tool}) failed, keeping the unoptimised module: {problem[:300]}")
        return None
    after = optimized.stat().st_size
    if after >= before:
        optimized.unlink()
        log(f"wasm-opt {LEVEL}: {before} bytes, no smaller; kept as compiled")
        return {"before": before, "after": before}
    os.replace(optimized, module)
    log(f"wasm-opt {LEVEL}: {before} → {after} bytes ({100 * (before - after) // before}% smaller)")
    return {"before": before, "after": after}
