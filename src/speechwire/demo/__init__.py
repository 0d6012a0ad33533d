"""`speechwire demo`: real weights on CPU, speechwire vs plain Whisper (ASR) or the cascade (ST).

Modules: data (corpus build/reuse, tiny tone corpus), baselines (plain Whisper, LLM cascade),
report (table, side by side, files, plot), main (the command). Exporting a trained run as the
packaged checkpoint is a maintainer script: scripts/ship_demo.py.
"""

from speechwire.demo.main import DemoError, asset_dir, demo_main, run_demo

__all__ = ["DemoError", "asset_dir", "demo_main", "run_demo"]
