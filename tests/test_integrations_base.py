"""metricsbuf.integrations imports no framework (the adapters' own tests are in tests_frameworks/)."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning", "keras", "jax", "tensorflow")


def test_the_package_imports_no_framework() -> None:
    # In a fresh interpreter: importing it here would add it to metricsbuf's attributes.
    code = (
        "import sys, metricsbuf.integrations as i; "
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)); "
        "print(i.rank_suffixed('loss', 3))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "loss[rank=3]"]
