import re
import subprocess
import sys
from pathlib import Path

import pytest

import speechwire

README = Path(__file__).parents[1] / "README.md"


def test_import_is_light():
    code = ("import sys, speechwire; heavy = [m for m in ('torch', 'transformers', 'speechwire.model', "
            "'speechwire.config') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exports_are_the_modules_objects():
    from speechwire.config import load_config
    from speechwire.data import Batch, make_dataloader
    from speechwire.model import SpeechLLM

    assert (speechwire.load_config, speechwire.SpeechLLM, speechwire.make_dataloader, speechwire.Batch) == \
        (load_config, SpeechLLM, make_dataloader, Batch)
    assert {"Batch", "SpeechLLM", "load_config", "make_dataloader"} <= set(dir(speechwire))


def test_readme_python_section_names_are_exported():
    section = README.read_text().split("## Python in ten lines", 1)[1].split("\n## ", 1)[0]
    names = {n.strip() for group in re.findall(r"from speechwire\.\w+ import ([\w, ]+)", section)
             for n in group.split(",")}
    names |= set(re.findall(r"speechwire\.\w+\.(\w+)", section))  # "a speechwire.data.Batch"
    assert names and names <= set(speechwire.__all__)


def test_unknown_name():
    with pytest.raises(AttributeError, match="module 'speechwire' has no attribute 'nope'"):
        speechwire.nope  # noqa: B018
