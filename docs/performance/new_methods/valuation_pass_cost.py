"""Valuation's epoch pass vs one plain training epoch (joint's steps), synthetic default sizes, 1 thread."""
import time, torch
from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training.build import build_data, build_method, build_model, loaders
from mmbalance.training.passes import EpochPasses
from mmbalance.engine import build_optimizer, train_step
from mmbalance.types import Batch
torch.set_num_threads(1)
cfg = build_config("valuation", "synthetic", {"method.warmup": 1}, get_method("valuation").Hyperparameters)
data = build_data(cfg)
method = build_method(cfg, build_model(data, cfg))
gen, (train_dl, _, _) = loaders(data, cfg, 0, method)
opt = build_optimizer(method.optimizer_groups(), cfg.optim)
def epoch():
    t = time.perf_counter()
    for x, y in train_dl:
        train_step(method, Batch(x, y), opt)
    return time.perf_counter() - t
def pass_():
    t = time.perf_counter()
    logs = method.on_epoch_pass(0, EpochPasses(method, {"train": train_dl.dataset}, cfg.data.batch_size, train_dl.collate_fn))
    return time.perf_counter() - t, logs
epoch()  # warm-up
plain = [epoch() for _ in range(3)]
passes = [pass_() for _ in range(3)]
resampled = [epoch() for _ in range(2)]
N = len(train_dl.dataset)
print(f"train rows {N}; plain epoch s {sorted(plain)[1]:.3f}; pass s {sorted(p for p, _ in passes)[1]:.3f}; "
      f"re-sampled epoch s {min(resampled):.3f}; rows after pass {passes[-1][1]['train_rows']:.0f}")
