"""`speechwire data synth`: a demo corpus built on the user's machine from Debian packages.

Synthetic English speech (espeak-ng) of the `trans-de-en` sentence pairs, for ASR and
English->German ST, plus real prompts from `asterisk-core-sounds-en` for ASR. See docs/data.md.
"""

from speechwire.data.synth.build import DEFAULT_OUT, build_corpus, demo_data_dir, split_pairs
from speechwire.data.synth.sources import MissingSystemDepsError, check_system_deps

__all__ = [
    "DEFAULT_OUT",
    "MissingSystemDepsError",
    "build_corpus",
    "check_system_deps",
    "demo_data_dir",
    "split_pairs",
]
