import time, torch, sys
torch.set_num_threads(2)
from speechwire.config import load_config
from speechwire.encoders import build_encoder
from speechwire.audio import load_audio
from pathlib import Path
import json
man = [json.loads(l) for l in open(Path.home() / ".cache/speechwire/demo_data/demo_train.asr.jsonl")][:120]
wavs = [torch.tensor(load_audio(str(Path.home() / ".cache/speechwire/demo_data" / u["audio"]))) if not isinstance(load_audio(str(Path.home() / ".cache/speechwire/demo_data" / u["audio"])), torch.Tensor) else load_audio(str(Path.home() / ".cache/speechwire/demo_data" / u["audio"])) for u in man]
secs = sum(len(w) for w in wavs) / 16000
for model in sys.argv[1:]:
    enc = build_encoder(load_config(None, [f"encoder.model={model}", "encoder.mode=trimmed"]).encoder)
    t = time.time()
    with torch.no_grad():
        for i in range(0, len(wavs), 16):
            batch = wavs[i:i + 16]
            n = max(len(w) for w in batch)
            x = torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in batch])
            enc(x, torch.tensor([len(w) for w in batch]))
    dt = time.time() - t
    print(model, f"audio {secs:.0f}s, {dt:.1f}s, RTF {dt/secs:.4f}, 5.98 h -> {dt/secs*5.98*3600/60:.1f} min")
