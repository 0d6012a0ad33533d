import torch, time, warnings
warnings.simplefilter("ignore")
torch.set_num_threads(1)
from torch.ao.nn.quantized.dynamic import Linear as DLinear
from torch.ao.quantization import per_channel_dynamic_qconfig
def bench(f, n=50):
    f(); t=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n*1e3
for (K, N) in [(896, 4864), (4864, 896), (896, 896)]:
    lin = torch.nn.Linear(K, N, bias=False)
    lin.qconfig = per_channel_dynamic_qconfig
    q8 = DLinear.from_float(lin)
    W = lin.weight.detach()
    gs = 32
    # asymmetric int4 groups
    Wg = W.reshape(N, K // gs, gs)
    mn, mx = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
    scale = ((mx - mn) / 15).clamp(min=1e-8)
    q = ((Wg - mn) / scale).round().clamp(0, 15).to(torch.int32).reshape(N, K)
    # torch convention: w = (q - 8) * scale + zero  -> zero = mn + 8*scale
    zero = mn + 8 * scale
    sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], -1).transpose(0, 1).contiguous()  # (K/gs, N, 2)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    for M in (1, 16, 64):
        x = torch.randn(M, K)
        ref = x @ W.T
        t8 = bench(lambda: q8(x))
        e8 = ((q8(x) - ref).norm() / ref.norm()).item()
        for dt in (torch.float32, torch.bfloat16):
            try:
                y4 = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dt), packed, gs, sz.to(dt))
                t4 = bench(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dt), packed, gs, sz.to(dt)))
                e4 = ((y4.float() - ref).norm() / ref.norm()).item()
                print(f"K{K} N{N} M{M} int8 {t8:.3f}ms err {e8:.4f} | int4 {dt} {t4:.3f}ms err {e4:.4f}")
            except Exception as e:
                print("int4", dt, "fail", str(e)[:200])
        tf = bench(lambda: x @ W.T)
        print(f"   float {tf:.3f}ms")
