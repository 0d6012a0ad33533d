"""Chars alignment stage per adapter on the fixed 2,400-clip sample: python probe.py NAME STEPS [overrides...]"""
import sys, json, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, "/work/main/src")
from speechwire.config import load_config
from speechwire.train import train
name, steps, *over = sys.argv[1:]
out = f"/work/exp/g27/runs/{name}"
cfg = load_config("/work/main/configs/demo_asr.yaml", ["data.train_manifest=/work/exp/sub_train.asr.jsonl",
    "train.stage=align", f"align.steps={steps}", f"train.output_dir={out}", "align.lm_order=0",
    f"train.eval_every={steps}", f"train.save_every={steps}", "train.log_every=25", "train.eval_max_items=160", *over])
print(cfg.adapter, flush=True)
s = train(cfg, resume=False, progress=False)
print(json.dumps(s.get("final_dev"))[:600])
