"""Probe (a record, not a tool): phone-menu words (lone letters, numbers, ordinals, phonetic-alphabet
words, months, weekdays) read by every training voice (espeak-ng with a random voice + the five
flite/festival training voices, augmented as the corpus is), appended to the demo train manifest."""
import json, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
import soundfile as sf
from speechwire.data.synth import voice as V
from speechwire.data.synth.engines import TRAIN_VOICES, speak
from speechwire.data.synth.augment import augment, draw_aug
from speechwire.align import number_words

D = Path.home() / ".cache/speechwire/demo_data"
OUT = D / "menu"
letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
nato = "Alfa Bravo Charlie Delta Echo Foxtrot Golf Hotel India Juliett Kilo Lima Mike November Oscar Papa Quebec Romeo Sierra Tango Uniform Victor Whiskey X-ray Yankee Zulu".split()
numbers = [str(n) for n in list(range(0, 21)) + list(range(30, 101, 10))] + ["1000"]
ordinals = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
            "twelfth", "thirteenth", "twentieth", "thirtieth", "fortieth", "fiftieth", "hundredth"]
months = "January February March April May June July August September October November December".split()
days = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
ITEMS = letters + nato + numbers + [o.capitalize() for o in ordinals] + months + days

def job(args):
    i, text, spec = args
    rng = np.random.default_rng([77, i])
    if spec == "espeak":
        params = V.draw_params(rng, V.list_voices(), V.list_variants())
        audio = V.render(text, params, rng)
        sr = 16000
    else:
        samples, sr0 = speak(text, spec)
        audio = augment(samples, sr0, draw_aug(rng), rng)
        sr = 16000
    path = OUT / f"menu-{i:05d}.wav"
    sf.write(path, audio, sr, subtype="PCM_16")
    return {"id": f"menu-{i:05d}", "audio": f"menu/menu-{i:05d}.wav", "duration": round(len(audio) / sr, 4),
            "transcript": text, "task": "asr", "voice": spec}

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    voices = ["espeak", "espeak"] + list(TRAIN_VOICES)
    jobs = [(i, text, spec) for i, (text, spec) in enumerate((t, v) for t in ITEMS for v in voices)]
    with ProcessPoolExecutor(2) as ex:
        rows = list(ex.map(job, jobs, chunksize=8))
    rows = [r for r in rows if r["duration"] > 0.2]
    base = (D / "demo_train.asr.jsonl").read_text()
    (D / "demo_train_menu.asr.jsonl").write_text(base + "".join(json.dumps(r) + "\n" for r in rows))
    print(len(ITEMS), "items,", len(rows), "clips,", round(sum(r["duration"] for r in rows) / 60, 1), "min")
