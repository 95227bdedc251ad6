"""MCR in your own PyTorch training loop (no Lightning): two modalities, a few epochs on
random data with a planted signal, printing the loss terms.

    python examples/mcr_own_loop.py
"""

import torch
import torch.nn.functional as F

import mmbalance as mb


def main(epochs: int = 5, seed: int = 0) -> float:
    torch.manual_seed(seed)
    n, classes = 512, 4
    labels = torch.randint(0, classes, (n,))
    audio = torch.randn(n, 20) + F.one_hot(labels, classes).repeat(1, 5).float()  # label in audio
    video = torch.randn(n, 28) + 0.5 * F.one_hot(labels, classes).repeat(1, 7).float()
    model = mb.MultimodalModel({"audio": mb.MLPEncoder(20, 32), "video": mb.MLPEncoder(28, 32)}, classes)
    mcr = mb.MCRLoss(strategy="greedy", mipd_weight=0.1, contrastive_weight=1.0, num_permutations=8).bind(model)
    opt = torch.optim.Adam([*model.parameters(), *mcr.parameters()], lr=3e-3)
    for epoch in range(epochs):
        for batch in torch.randperm(n).split(64):
            opt.zero_grad()
            out = model({"audio": audio[batch], "video": video[batch]})
            reg = mcr(model, out, labels[batch])
            unimodal = sum(F.cross_entropy(z, labels[batch]) for z in out.unimodal_logits.values())
            loss = F.cross_entropy(out.logits, labels[batch]) + 0.1 * unimodal + reg.total
            loss.backward()
            opt.step()
        terms = ", ".join(f"{k} {v.item():.4f}" for k, v in reg.terms.items())
        print(f"epoch {epoch}: loss {loss.item():.3f} ({terms})")
    with torch.no_grad():
        accuracy = float((model({"audio": audio, "video": video}).logits.argmax(-1) == labels).float().mean())
    print(f"training accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
