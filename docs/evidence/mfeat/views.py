import torch
from mmbalance.config import build_config
from mmbalance.methods import get_method
from mmbalance.training.build import build_data
from mmbalance.training.probe import fit_linear_probe, probe_score
torch.set_num_threads(1)
for seed in (0,1,2):
    cfg = build_config("joint","mfeat",{"data.modalities":["fou","fac","kar","pix","zer","mor"],"data.seed":seed},get_method("joint").Hyperparameters)
    d = build_data(cfg)
    def xy(ds):
        xs = [ds[i] for i in range(len(ds))]
        return {m: torch.stack([torch.as_tensor(a[0][m]) for a in xs]) for m in d.shapes}, torch.tensor([int(a[1]) for a in xs])
    tx, ty = xy(d.train); vx, vy = xy(d.val)
    print(seed, {m: round(probe_score(fit_linear_probe(tx[m], ty, 10), vx[m], vy, 10),3) for m in d.shapes})
