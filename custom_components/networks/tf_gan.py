"""TF-GAN networks (Tumor Fabrication, section 2.2): the refining generator G and the dual-head discriminator D.

Input layout shared by G and D (see :func:`condition_channels`): the image channels first (one per
modality, intensities in [-1, 1]), then one binary channel per conditioning class. For TF-GAN the
classes are the three tumour classes of the internal convention (NCR=1, ED=2, ET=3) and background
is *not* a channel (it is implied by all tumour channels being 0). For the Pix2Pix baseline the
generator sees no image channel and four classes: NCR, ED, ET and "brain" (brain voxels that are not
tumour).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.config import NdarrayOrTensor
from monai.networks.blocks import Convolution, UpSample
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetResBlock
from monai.transforms.utils_pytorch_numpy_unification import where
from torch import nn

from custom_components.data.labels import TUMOUR_CLASSES

BRAIN_CHANNEL: str = "brain"
UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "trilinear")
# TFGANGenerator's options that are stored with its weights: buffer -> (config key, value of a checkpoint without the
# buffer, the key's value names for False and True)
_ARCHITECTURE_OPTIONS: dict[str, tuple[str, bool, tuple[str, str]]] = {
    "residual_output": ("residual", False, ("false", "true")),
    "upsample_trilinear": ("upsample", False, ("nearest", "trilinear")),
}


def condition_channels(
    label: torch.Tensor,
    classes: Sequence[int] = TUMOUR_CLASSES,
    brain: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-hot conditioning channels from an internal-convention label map.

    Args:
        label: ``(B, 1, *spatial)`` label map (any numeric dtype).
        classes: label values that get a channel each, in this order (background excluded).
        brain: optional ``(B, 1, *spatial)`` brain mask; when given, one more channel is appended that is 1
            on brain voxels whose label is not in ``classes`` (the Pix2Pix "brain" label).

    Returns:
        ``(B, len(classes) [+1], *spatial)`` float tensor of zeros and ones.
    """
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"label must have shape (B, 1, *spatial), got {tuple(label.shape)}")
    lab = torch.as_tensor(label)
    channels = [(lab == c) for c in classes]
    if brain is not None:
        tumour = torch.zeros_like(lab, dtype=torch.bool)
        for ch in channels:
            tumour |= ch
        channels.append((torch.as_tensor(brain) > 0) & ~tumour)
    return torch.cat(channels, dim=1).float()


def roi_noise(roi: torch.Tensor, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise input of a generator with ``noise_channels`` (this project's optional deviation from the paper):
    standard normal values inside ``m_roi`` and 0 outside, so the generator has a source of randomness to draw
    texture from where it refines, and none where the hinge loss asks it to keep the anatomy.

    Args:
        roi: ``(B, 1, *spatial)`` ``m_roi`` (non-zero inside).
        channels: noise channels (0 gives an empty ``(B, 0, *spatial)`` tensor).
        generator: the random generator to draw from (``None``: torch's global one, seeded by ``set_determinism``).
    """
    if roi.ndim < 3 or roi.shape[1] != 1:
        raise ValueError(f"roi must have shape (B, 1, *spatial), got {tuple(roi.shape)}")
    shape = (roi.shape[0], int(channels), *roi.shape[2:])
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu" if generator else roi.device)
    return noise.to(roi.device) * (roi > 0).to(torch.float32)


def keep_coarse_outside_roi(refined: NdarrayOrTensor, coarse: NdarrayOrTensor, roi: NdarrayOrTensor) -> NdarrayOrTensor:
    """The refined image inside ``m_roi`` and the coarse one outside it (``paste_outside_roi``, this project's optional
    deviation from the paper, whose G may change every voxel and is held back outside ``m_roi`` by the hinge loss of
    eq. 2 alone). Applied to G's output in training, D and the losses see the coarse anatomy unchanged, so G can
    win only by refining the tumour; applied at refinement, the written case keeps it exactly.

    Args:
        refined: generator output ``(B, C, *spatial)`` or ``(C, *spatial)`` (tensor or array).
        coarse: the coarse input, same shape and type.
        roi: ``m_roi`` (non-zero inside) with one channel, ``(B, 1, *spatial)`` or ``(1, *spatial)``.
    """
    if refined.shape != coarse.shape:
        raise ValueError(f"refined {tuple(refined.shape)} and coarse {tuple(coarse.shape)} shapes differ")
    if roi.ndim != refined.ndim or roi.shape[-3:] != refined.shape[-3:] or roi.shape[-4] != 1:
        raise ValueError(f"roi {tuple(roi.shape)} must be one channel of the image's shape {tuple(refined.shape)}")
    return where(roi > 0, refined, coarse)


def check_spatial_size(owner: str, shape: Sequence[int], divisor: int) -> None:
    """Raise a clear error unless every side is a multiple of ``divisor`` and at least ``2 * divisor``
    (instance normalisation needs more than one voxel at the deepest level).

    Args:
        owner: the network and its depth, for the message.
        shape: spatial shape of the input.
        divisor: 2 ** (number of downsamplings).
    """
    spatial = tuple(int(s) for s in shape)
    if any(s % divisor for s in spatial):
        raise ValueError(
            f"{owner} needs a spatial size divisible by {divisor}, got {spatial} "
            f"(pad the input or choose a patch/ROI size that is a multiple of {divisor})"
        )
    if any(s // divisor < 2 for s in spatial):
        raise ValueError(
            f"{owner}: input {spatial} leaves a one-voxel bottleneck; use at least {2 * divisor} voxels per side"
        )


class TFGANGenerator(nn.Module):
    """3D U-Net generator with six resolution levels and interpolation upsampling (no transposed convolutions).

    Encoder: one block of two 3x3x3 convolutions (instance norm, LeakyReLU) per level, the first convolution
    of levels 2-6 with stride 2. Decoder: interpolation upsampling by 2 followed by a 3x3x3 convolution
    (MONAI ``UpSample(mode="nontrainable", post_conv=...)``, the paper's remedy for checkerboard artefacts; nearest
    neighbour by default, trilinear with ``upsample="trilinear"``), concatenation with the skip connection and a
    block of two convolutions.
    The output is a 1x1x1 convolution ``h``. With ``residual=False`` the image is ``tanh(h)`` (the network predicts
    the image directly, in [-1, 1]); with ``residual=True`` it is ``clamp(x_img + h, -1, 1)``: the input image plus
    a correction, with ``h``'s convolution initialised to zero so that an untrained generator returns its input
    image exactly. The TF paper fixes the U-Net and the losses (eqs. 2-5), not this output parametrisation; the
    residual form makes short trainings safe, because the hinge loss outside the ROI starts at 0 instead of at the
    distance between noise and the anatomy.

    Whether the output is residual and how the decoder upsamples are part of the weights (the buffers
    ``residual_output`` and ``upsample_trilinear``): a checkpoint loads only into a generator built the same way, and a
    checkpoint written before an option existed (no such entry) has that option's old value (direct output, nearest
    neighbour).

    The input tensor holds ``in_channels`` image channels followed by ``num_classes`` one-hot mask channels
    (see :func:`condition_channels`) and ``noise_channels`` noise channels (:func:`roi_noise`); ``in_channels``
    may be 0 for a label-only generator (Pix2Pix). The paper's G sees the coarse image and the mask only
    (``noise_channels=0``); a deterministic G can sharpen or shift what the blurred ROI holds but cannot draw
    random texture into it, so noise channels are this project's optional deviation (tf_gan docs/README.md).

    Args:
        in_channels: image channels of the input (modalities of the coarse image; 0 for Pix2Pix).
        out_channels: image channels of the output.
        num_classes: conditioning channels appended to the image (3 tumour classes for TF-GAN).
        channels: feature widths of the levels, shallow to deep; the number of entries is the number of levels.
        norm_name: normalisation layer (MONAI name, e.g. ``"instance"``).
        act_name: activation layer (MONAI name and arguments).
        res_block: use residual blocks (``UnetResBlock``) instead of plain double convolutions.
        residual: output ``clamp(input image + h, -1, 1)`` with a zero-initialised output layer (needs
            ``in_channels == out_channels``) instead of ``tanh(h)``.
        noise_channels: noise channels appended to the input (0: the paper's G).
        upsample: the decoder's interpolation, ``"nearest"`` (the paper's nearest-neighbour upsampling) or
            ``"trilinear"`` (smooth: a deep feature's value no longer stops at its block's edge).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        num_classes: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 256, 320),
        norm_name: str | tuple = "instance",
        act_name: str | tuple = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        res_block: bool = False,
        residual: bool = False,
        noise_channels: int = 0,
        upsample: str = "nearest",
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0, got {noise_channels}")
        if len(channels) < 2:
            raise ValueError(f"TFGANGenerator needs at least two levels, got channels={channels}")
        if in_channels < 0 or num_classes < 0 or in_channels + num_classes < 1:
            raise ValueError(
                f"need at least one input channel, got in_channels={in_channels}, num_classes={num_classes}"
            )
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"residual=True adds the output to the input image, so in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels}); a label-only generator (Pix2Pix) needs residual=False"
            )
        self.residual = bool(residual)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.noise_channels = int(noise_channels)
        self.out_channels = int(out_channels)
        self.channels = tuple(channels)
        self.divisor = 2 ** (len(channels) - 1)
        block = UnetResBlock if res_block else UnetBasicBlock

        self.encoder = nn.ModuleList()
        prev = self.in_channels + self.num_classes + self.noise_channels
        for i, ch in enumerate(channels):
            self.encoder.append(
                block(3, prev, ch, kernel_size=3, stride=1 if i == 0 else 2, norm_name=norm_name, act_name=act_name)
            )
            prev = ch

        self.upsamples = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            post_conv = Convolution(3, channels[i + 1], channels[i], kernel_size=3, norm=norm_name, act=act_name)
            self.upsamples.append(
                UpSample(
                    3,
                    in_channels=channels[i + 1],
                    out_channels=channels[i + 1],
                    scale_factor=2,
                    mode="nontrainable",
                    pre_conv=None,
                    post_conv=post_conv,
                    interp_mode=upsample,
                    align_corners=None if upsample == "nearest" else False,
                )
            )
            self.decoder.append(
                block(3, 2 * channels[i], channels[i], kernel_size=3, stride=1, norm_name=norm_name, act_name=act_name)
            )
        self.head = UnetOutBlock(3, channels[0], self.out_channels)
        if self.residual:
            nn.init.zeros_(self.head.conv.conv.weight)
            nn.init.zeros_(self.head.conv.conv.bias)
        self.upsample = upsample
        self.register_buffer("residual_output", torch.tensor(self.residual))
        self.register_buffer("upsample_trilinear", torch.tensor(upsample == "trilinear"))

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        """Refuse weights trained with another output form or upsampling; read a checkpoint without such an entry
        (written before the option existed) as one with the option's old value (direct output, nearest neighbour)."""
        built = {"residual_output": self.residual, "upsample_trilinear": self.upsample == "trilinear"}
        for buffer, (option, old_value, value_names) in _ARCHITECTURE_OPTIONS.items():
            key = prefix + buffer
            saved = bool(state_dict[key]) if key in state_dict else old_value
            if saved != built[buffer]:
                origin = "" if key in state_dict else f" (a checkpoint from before the {option} option)"
                error_msgs.append(
                    f"the weights were trained with {option}={value_names[saved]}{origin}, the generator is built "
                    f"with {option}={value_names[built[buffer]]}: set `{option}: {value_names[saved]}` in the config"
                )
            state_dict.setdefault(key, torch.tensor(saved))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for buffer, value in built.items():  # the flags describe this network, whatever was read
            getattr(self, buffer).fill_(value)

    @torch.jit.unused
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError when ``x`` does not fit: wrong channel count, spatial size not divisible by 2**(levels-1),
        or a one-voxel bottleneck (instance normalisation cannot normalise a single voxel).

        Skipped in a TorchScript export (``monai.bundle ckpt_export``), which fails inside the network instead."""
        expected = self.in_channels + self.num_classes + self.noise_channels
        if x.ndim != 5 or x.shape[1] != expected:
            raise ValueError(
                f"TFGANGenerator expects (B, {expected}, H, W, D) input ({self.in_channels} image + "
                f"{self.num_classes} mask + {self.noise_channels} noise channels), got {tuple(x.shape)}"
            )
        check_spatial_size(f"TFGANGenerator with {len(self.channels)} levels", x.shape[2:], self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refine ``x`` ``(B, in_channels + num_classes + noise_channels, H, W, D)`` into an image ``(B, out_channels, H, W, D)``."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        image = x[:, : self.in_channels]
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.upsamples, self.decoder, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        if self.residual:
            return torch.clamp(image + self.head(x), -1.0, 1.0)
        return torch.tanh(self.head(x))


class DualHeadDiscriminator(nn.Module):
    """Conditional 3D discriminator with a shared encoder and two heads (TF-GAN, section 2.2).

    The shared encoder has five (``len(channels)``) downsampling stages, each a 4x4x4 convolution with
    stride 2 (PatchGAN style: no normalisation in the first stage, instance norm after, LeakyReLU 0.2).
    The *local* head is a 3x3x3 convolution to one channel giving a patch map of logits at 1/32 of the input
    resolution; the *global* head is adaptive average pooling followed by a linear layer giving one logit per
    sample. Both heads return raw logits (use a BCE-with-logits loss).

    The input is the image concatenated with the one-hot mask it is conditioned on (see
    :func:`condition_channels`): ``in_channels`` counts both.

    ``spectral_norm=True`` (where the paper is silent; tf_gan docs/README.md, "Discriminator normalisation") drops
    the instance normalisation and constrains every convolution and the linear layer by spectral normalisation
    (Miyato et al. 2018) instead. Instance normalisation divides each channel of each sample by its own spread, so
    at the deep, few-voxel stages it removes the feature magnitudes that tell a textured tumour from a flat one.

    Args:
        in_channels: image channels + mask channels.
        channels: widths of the downsampling stages (five in the paper).
        norm_name: normalisation of stages 2..n (MONAI name); ignored with ``spectral_norm``.
        negative_slope: LeakyReLU slope.
        spectral_norm: spectral normalisation of every layer instead of instance normalisation.
    """

    def __init__(
        self,
        in_channels: int = 4,
        channels: Sequence[int] = (32, 64, 128, 256, 320),
        norm_name: str | tuple = "instance",
        negative_slope: float = 0.2,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("DualHeadDiscriminator needs at least one stage")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.in_channels = int(in_channels)
        self.channels = tuple(channels)
        self.divisor = 2 ** len(channels)
        act = ("leakyrelu", {"negative_slope": negative_slope, "inplace": True})
        stages = []
        prev = self.in_channels
        norm = None if spectral_norm else norm_name
        for i, ch in enumerate(channels):
            stages.append(
                Convolution(3, prev, ch, strides=2, kernel_size=4, padding=1, norm=None if i == 0 else norm, act=act)
            )
            prev = ch
        self.encoder = nn.Sequential(*stages)
        self.patch_head = Convolution(3, prev, 1, kernel_size=3, padding=1, conv_only=True)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.global_head = nn.Linear(prev, 1)
        self.spectral_norm = bool(spectral_norm)
        if self.spectral_norm:
            for module in [m for m in self.modules() if isinstance(m, nn.Conv3d | nn.Linear)]:
                nn.utils.parametrizations.spectral_norm(module)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(patch_logits (B, 1, H/2**n, W/2**n, D/2**n), global_logits (B, 1))`` for ``x`` ``(B, C, H, W, D)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DualHeadDiscriminator expects (B, {self.in_channels}, H, W, D) input, got {tuple(x.shape)}"
            )
        check_spatial_size(f"DualHeadDiscriminator with {len(self.channels)} stages", x.shape[2:], self.divisor)
        features = self.encoder(x)
        return self.patch_head(features), self.global_head(torch.flatten(self.pool(features), 1))
