"""Can TF-GAN's discriminator tell coarse TF-Aug patches from real ones at a CPU budget?

The adversarial game of TF-GAN can only start once D separates real from generated patches. This probe trains D
alone, with G held at the identity (the refined patch is the coarse one, which is what an untrained residual
generator returns), on the training crops of the tf_gan bundle (its preprocessing, ``patch_size``, ``crop_pos`` /
``crop_neg``, flips and gamma), with the bundle's D (widths, normalisation) and loss (eq. 4: both heads, weighted by
lambda_a and lambda_b). Every ``--every`` iterations it prints D's accuracy (``discriminator_accuracy``: real, coarse,
mean; 0.5 = chance) on ``--eval-batches`` fresh batches, without training on them.

Usage (a pipeline workdir that ran TF-Aug, e.g. ``make demo``'s ``demo_output``)::

    python benchmarks/probe_tf_gan_discriminator.py --workdir demo_output [--iterations 200] [--lr-d 4e-4]
        [--spectral-norm] [--disc-channels 8] [--crop-neg 0]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from custom_components.engines.gan_trainer import discriminator_accuracy
from custom_components.losses.adversarial import DualHeadAdversarialLoss
from custom_components.networks.tf_gan import condition_channels

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "tf_gan"


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def _inputs(batch: dict) -> torch.Tensor:
    return torch.cat([batch["image"], condition_channels(batch["label"])], 1)


def build(args: argparse.Namespace) -> ConfigParser:
    """The tf_gan training config of the workdir's first TF-GAN stage, with the probe's D settings."""
    overrides = json.loads((Path(args.workdir) / "overrides" / "tf_gan_train_s0.json").read_text())
    overrides.update(
        {
            "bundle_root": str(BUNDLE),
            "disc_spectral_norm": args.spectral_norm,
            "disc_channels": [args.disc_channels] * 5,
            "crop_neg": args.crop_neg,
            "num_workers": 0,
        }
    )
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "common.yaml"), str(BUNDLE / "configs" / "train.yaml")])
    parser.update(overrides)
    return parser


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="pipeline workdir with tf_aug_synthesise_s0 and overrides/")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--lr-d", type=float, default=1e-4)
    ap.add_argument("--disc-channels", type=int, default=8)
    ap.add_argument("--spectral-norm", action="store_true")
    ap.add_argument("--crop-neg", type=int, default=1)
    args = ap.parse_args()
    set_determinism(seed=0)
    parser = build(args)
    coarse = _forever(parser.get_parsed_content("train#dataloader"))
    real = _forever(parser.get_parsed_content("train#real_dataloader"))
    d = parser.get_parsed_content("d_network")
    lam_patch, lam_global = float(parser["lambda_patch"]), float(parser["lambda_global"])
    opt = torch.optim.Adam(d.parameters(), lr=args.lr_d, betas=tuple(parser["betas"]))
    loss = DualHeadAdversarialLoss()
    print(f"D {parser['disc_channels']} spectral_norm={args.spectral_norm} lr_d={args.lr_d} crop_neg={args.crop_neg}")
    start = time.perf_counter()
    for it in range(args.iterations + 1):
        if it % args.every == 0:
            with torch.no_grad():
                accs = [
                    discriminator_accuracy(d(_inputs(next(real))), d(_inputs(next(coarse))))
                    for _ in range(args.eval_batches)
                ]
            mean = {k: sum(a[k] for a in accs) / len(accs) for k in accs[0]}
            print(
                f"iteration {it:4d}: held-out accuracy real {mean['d_acc_real']:.2f} coarse {mean['d_acc_fake']:.2f} "
                f"mean {mean['d_acc']:.2f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        if it == args.iterations:
            break
        d_patch, d_global = loss.discriminator(d(_inputs(next(real))), d(_inputs(next(coarse))))
        opt.zero_grad()
        (lam_patch * d_patch + lam_global * d_global).backward()
        opt.step()


if __name__ == "__main__":
    main()
