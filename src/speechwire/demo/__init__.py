"""`speechwire demo`: real weights on CPU, speechwire vs plain Whisper (ASR) or the cascade (ST).

Modules: data (corpus build/reuse, tiny tone corpus), baselines (plain Whisper, LLM cascade),
report (table, side by side, files, plot), main (`run_demo`, what `speechwire demo` runs).
Exporting a trained run as the packaged checkpoint is a maintainer script: scripts/ship_demo.py.
"""

from speechwire.demo.main import DEFAULT_LIMIT, DemoError, asset_dir, run_demo

__all__ = ["DEFAULT_LIMIT", "DemoError", "asset_dir", "run_demo"]
