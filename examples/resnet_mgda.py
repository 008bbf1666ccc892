"""Any mtbench combiner in a plain PyTorch loop: a torchvision ResNet-18 trunk, 40 two-layer
heads, random data, and ``mtbench.backward(losses, rep, "mgda")`` instead of
``sum(losses).backward()``.

    python examples/resnet_mgda.py --steps 20
    python examples/resnet_mgda.py --steps 20 --combiner pcgrad

The only line that differs from an ordinary multitask loop is marked ``# mtbench``.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn

import mtbench

TASKS = 40


def main() -> None:
    ap = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20, help="training steps, each on a fresh random batch")
    ap.add_argument("--batch-size", type=int, default=16, help="images per batch")
    ap.add_argument("--image-size", type=int, default=64, help="height and width of the random RGB images")
    ap.add_argument("--combiner", default="mgda", help="any registered name: mgda, pcgrad, graddrop, ...")
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (cuda when one is visible)",
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    trunk = torchvision.models.resnet18(weights=None)
    trunk.fc = nn.Identity()  # the 512-d pooled features are the shared representation
    heads = nn.ModuleList(nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in range(TASKS))
    trunk.to(args.device), heads.to(args.device)
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-3)
    generator = torch.Generator(device=args.device).manual_seed(0)  # the combiner's random draws

    for step in range(args.steps):
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
        labels = torch.randint(0, 2, (args.batch_size, TASKS), device=args.device).float()
        rep = trunk(images)
        losses = [
            nn.functional.binary_cross_entropy_with_logits(head(rep)[:, 0], labels[:, i])
            for i, head in enumerate(heads)
        ]
        optimizer.zero_grad(set_to_none=True)
        info = mtbench.backward(losses, rep, args.combiner, generator=generator)  # mtbench
        optimizer.step()
        extra = "  " + "  ".join(f"{k} {v:.3f}" for k, v in info.items()) if info else ""
        print(f"step {step + 1}/{args.steps}: mean task loss {torch.stack(losses).mean().item():.4f}{extra}")


if __name__ == "__main__":
    main()
