"""``mtbench-fake``: small fake datasets in the real layouts, to try a task without a download.

    mtbench-fake celeba --root DIR --n N [--layout plain|torchvision] [--seed S]
    mtbench-fake cifar100 --root DIR --n N [--n-test M] [--flat] [--seed S]
    mtbench-fake nyuv2|cityscapes --root DIR [--n N] [--n-val M] [--height H --width W] [--seed S]

``celeba`` (:mod:`mtbench.data.fake.celeba`) writes JPEGs and the two list files of the real
CelebA; ``cifar100`` (:mod:`mtbench.data.fake.cifar100`) the pickles of ``cifar-100-python``;
``nyuv2`` and ``cityscapes`` (:mod:`mtbench.data.fake.dense`) the MTAN-preprocessed ``.npy`` files.
Then ``mtbench task=celeba data.root=DIR name=fake_celeba`` (a ``name`` of its own keeps fake
results apart from real ones). Needs only numpy and Pillow (installed with torchvision).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["WRITERS", "main"]

#: the datasets ``mtbench-fake`` writes: name -> (module, one line of help)
WRITERS = {
    "celeba": (
        "mtbench.data.fake.celeba",
        "a fake CelebA in the real layout (178 x 218 JPEGs, list_attr_celeba.txt, list_eval_partition.txt)",
    ),
    "cifar100": (
        "mtbench.data.fake.cifar100",
        "a small CIFAR-100 stand-in in the python pickle layout (cifar-100-python/)",
    ),
    "nyuv2": (
        "mtbench.data.fake.dense",
        "a small NYUv2 in the MTAN-preprocessed layout ({train,val}/{image,label,depth,normal}/<i>.npy)",
    ),
    "cityscapes": (
        "mtbench.data.fake.dense",
        "a small Cityscapes in the MTAN-preprocessed layout ({train,val}/{image,label_7,label_19,depth}/<i>.npy)",
    ),
}


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (``mtbench-fake: error: ...``) naming the fix, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = _Parser(prog="mtbench-fake", description="Write a small fake dataset in the real layout (no download).")
    sub = parser.add_subparsers(dest="dataset", metavar="{" + ",".join(WRITERS) + "}", parser_class=_Parser)
    modules = {}
    for name, (module, text) in WRITERS.items():
        modules[name] = importlib.import_module(module)
        modules[name].add_arguments(sub.add_parser(name, help=text, description=text))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.dataset is None:
        parser.error(f"name the dataset to write: mtbench-fake {{{','.join(WRITERS)}}} --root DIR")
    if args.n < 1:
        parser.error(f"--n {args.n}: give at least 1 image")
    try:
        print(modules[args.dataset].run(args))
    except OSError as e:
        print(
            f"mtbench-fake: error: cannot write into {args.root}: {e.strerror or e}; choose another --root",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
