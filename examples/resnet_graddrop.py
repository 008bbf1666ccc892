"""GradDrop as a layer in a plain PyTorch loop: a torchvision ResNet-18 trunk, 40 two-layer
heads (one per binary attribute, as CelebA has), random data.

    python examples/resnet_graddrop.py --steps 20

The only lines that GradDrop adds to an ordinary multitask model are marked ``# GradDrop``.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn

import mtbench.nn

TASKS = 40


class MultiTaskResNet(nn.Module):
    def __init__(self, leak: float = 0.0):
        super().__init__()
        trunk = torchvision.models.resnet18(weights=None)
        trunk.fc = nn.Identity()  # the 512-d pooled features are the shared representation
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1)) for _ in range(TASKS))
        self.graddrop = mtbench.nn.GradDrop(leak=leak)  # GradDrop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rep = self.trunk(images)
        views = self.graddrop(rep, len(self.heads))  # GradDrop: one view of rep per head
        return torch.cat([head(v) for head, v in zip(self.heads, views)], dim=1)  # [B, 40] logits


def main() -> None:
    ap = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20, help="training steps, each on a fresh random batch")
    ap.add_argument("--batch-size", type=int, default=16, help="images per batch")
    ap.add_argument("--image-size", type=int, default=64, help="height and width of the random RGB images")
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (cuda when one is visible)",
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    model = MultiTaskResNet().to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(args.steps):
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
        labels = torch.randint(0, 2, (args.batch_size, TASKS), device=args.device).float()
        logits = model(images)
        # one loss per task, summed: one ordinary backward pass (GradDrop acts inside it)
        losses = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=0)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        print(f"step {step + 1}/{args.steps}: mean task loss {losses.mean().item():.4f}")


if __name__ == "__main__":
    main()
