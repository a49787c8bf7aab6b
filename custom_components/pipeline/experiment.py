"""The chained pipeline and its comparison experiment, as stages for :mod:`runner`.

Order: data (demo data or the user's datalists) -> real_subset (the first ``n_real`` training cases, when
set) -> prepare-healthy -> dtss_mas_seg phase 1 per seed (the baseline; its encoder is TF's frozen F) ->
tf_aug train + synthesise -> tf_gan train + refine (-> Pix2Pix train + synthesise) -> dtss_mas_seg per arm
and seed -> evaluation per arm and seed -> report. Every bundle stage runs the bundle's own configs through
``python -m monai.bundle run`` with an overrides file; each stage's output datalist is the next one's input.

The synthesis follows the seeds (``synthesis_per_seed``): every seed ``s`` draws its own synthetic cases
(``tf_aug_synthesise_s<s>`` with TF-Aug's ``seed: s``, ``tf_gan_refine_s<s>`` / ``pix2pix_synthesise_s<s>`` of
those cases, ``synthetic_subsets_s<s>``) and seed ``s``'s arms train with them, so the spread over seeds includes
the synthesis. ``draws`` trains TF-Aug, TF-GAN and Pix2Pix once (``*_train_s<first seed>``, F = the first
seed's phase-1 model); ``train`` trains them per seed too (``*_train_s<s>``, F = seed ``s``'s phase-1 model).
DTSS and CarveMix draw online from each segmentation run's own ``seed``.

The arms train by the experiment's ``protocol``: ``dsma`` (DSMA paper) continues each seed's phase-1 model
for ``phase2_epochs`` with the arm's data (the baseline arm continues on real data only, so every arm trains
as long); ``tf`` (TF paper) trains every synthetic arm from a fresh initialisation for the phase-1 model's
number of epochs, i.e. the same number of iterations (an epoch is one pass over the real cases), and the
baseline arm is the phase-1 model itself.

How synthetic samples join a batch (``synthetic_sampling``, dtss_mas_seg's key of the same name; default per
protocol, ``PROTOCOL_SAMPLING``): ``companion`` (dsma) adds each real index's synthetic companions, so a synthetic
arm sees more crops per step than the baseline; ``union`` (tf, the TF paper's nnU-Net) draws one sample per index
from the union of the real and synthetic cases, the baseline's samples per step. Online arms (DTSS, CarveMix)
always use companions. The ``real_matched`` arm (added by ``control_arm``) is the control of the samples per step:
real data only, a second independently augmented real crop per index (``real_per_case = base_ratio``) where the
synthetic arms have a companion; where no arm uses companions (union, no online arm) it is the baseline itself
and reuses the baseline's model (:attr:`Experiment.control_is_baseline`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custom_components.data.atomic import atomic_write_text
from custom_components.data.datalist import read_datalist, write_datalist
from custom_components.data.loader import load_datalist
from custom_components.pipeline.arms import BASELINE, get_arm
from custom_components.pipeline.config import PROTOCOLS
from custom_components.pipeline.runner import Stage, bundle_command, run_stages, workdir_lock
from custom_components.pipeline.summary import write_experiment_report
from custom_components.synthesis.methods import SynthesisMethod

# the stage of a forced run (--from), kept until the run completes
FORCED_RECORD = "forced_from.json"
# the model parts of the synthesis on healthy scans (SynthesisMethod.parts), and TF-Aug's cases with mass effect
PARTS: tuple[str, ...] = ("tf_aug", "tf_gan", "pix2pix", "tf_aug_mass")


def _device(cfg: dict[str, Any]) -> str:
    return f"$torch.device({cfg['device']!r})"


class Experiment:
    """Stages of one pipeline config (see :func:`custom_components.pipeline.config.load_config`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.work = Path(cfg["workdir"])

    # ---- paths ---------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.work / name

    @property
    def source_datalist(self) -> Path:
        """The real tumour data: the demo's datalist or the user's."""
        if self.cfg["demo"] is not None:
            return self.stage_dir("data") / "demo" / "tumour" / "datalist.json"
        return Path(self.cfg["real_datalist"])

    @property
    def real_datalist(self) -> Path:
        """The real data every stage uses: the source, or its first ``n_real`` training cases (all other sections)."""
        if self.cfg["n_real"] is None:
            return self.source_datalist
        return self.stage_dir("real_subset") / "datalist.json"

    @property
    def raw_healthy(self) -> Path:
        if self.cfg["demo"] is not None:
            return self.stage_dir("data") / "demo" / "healthy" / "datalist.json"
        return Path(self.cfg["healthy"])

    @property
    def prepared_healthy(self) -> Path:
        return self.stage_dir("prepare_healthy") / "datalist.json"

    def phase1_model(self, seed: int) -> Path:
        return self.stage_dir(f"seg_phase1_s{seed}") / "models" / "model.pt"

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.cfg["seeds"]]

    @property
    def encoder_seed(self) -> int:
        """The first seed: its phase-1 model is the report's encoder F, and with ``synthesis_per_seed: draws`` TF's."""
        return self.seeds[0]

    def model_seed(self, seed: int) -> int:
        """The seed whose TF-Aug / TF-GAN / Pix2Pix models synthesise seed ``seed``'s cases: its own with
        ``synthesis_per_seed: train``, else the encoder seed (models trained once, cases drawn per seed)."""
        return int(seed) if self.cfg["synthesis_per_seed"] == "train" else self.encoder_seed

    @property
    def model_seeds(self) -> list[int]:
        """The seeds TF-Aug, TF-GAN and Pix2Pix are trained with (see :meth:`model_seed`)."""
        return list(dict.fromkeys(self.model_seed(s) for s in self.seeds))

    def tf_aug_params(self, model_seed: int) -> Path:
        return self.stage_dir(f"tf_aug_train_s{model_seed}") / "models" / "intensity.json"

    def tf_gan_generator(self, model_seed: int) -> Path:
        return self.stage_dir(f"tf_gan_train_s{model_seed}") / "models" / "model.pt"

    def pix2pix_generator(self, model_seed: int) -> Path:
        return self.stage_dir(f"pix2pix_train_s{model_seed}") / "models" / "pix2pix" / "model.pt"

    def coarse_datalist(self, seed: int) -> Path:
        """TF-Aug's coarse cases of a seed."""
        return self.stage_dir(f"tf_aug_synthesise_s{seed}") / "coarse" / "datalist.json"

    def mass_coarse_datalist(self, seed: int) -> Path:
        """TF-Aug cases of a seed synthesised with mass effect (arm ``tf_aug+mass``)."""
        return self.stage_dir(f"tf_aug_synthesise_mass_s{seed}") / "coarse" / "datalist.json"

    def refined_datalist(self, seed: int) -> Path:
        """TF's cases of a seed: its coarse cases refined by TF-GAN."""
        return self.stage_dir(f"tf_gan_refine_s{seed}") / "refined" / "datalist.json"

    def pix2pix_datalist(self, seed: int) -> Path:
        """Pix2Pix's cases of a seed: images generated for its coarse cases' masks."""
        return self.stage_dir(f"pix2pix_synthesise_s{seed}") / "pix2pix" / "datalist.json"

    def subset_datalist(self, ratio: float, kind: str, seed: int) -> Path:
        return self.stage_dir(f"synthetic_subsets_s{seed}") / f"{kind}_syn{ratio:g}.json"

    @property
    def base_ratio(self) -> float:
        """Synthetic cases per real case of the synthetic arms (tf_aug, pix2pix, tf, tf_mas)."""
        return float(self.cfg["tf_aug"]["synthetic_per_real"])

    def num_subset(self, ratio: float) -> int:
        """Synthetic cases of a ratio: ``round(ratio * n_real)``, at least one (Syn50 = 50 for 100 real cases)."""
        return max(1, round(ratio * self.n_real()))

    def synthetic_datalist(self, kind: str, seed: int) -> Path:
        """The datalist a synthetic arm of a seed trains with: all the seed's cases, or with an ablation (which
        synthesises more) the first ``base_ratio`` per real case, so every synthetic arm gets the same amount."""
        if self.cfg["synthetic_per_real"]:
            return self.subset_datalist(self.base_ratio, kind, seed)
        return self.cases_datalist(kind, seed)

    def cases_datalist(self, kind: str, seed: int) -> Path:
        """All of a seed's cases of a kind (a method's ``cases``: ``coarse``, ``refined`` or ``pix2pix``)."""
        full = {"coarse": self.coarse_datalist, "refined": self.refined_datalist, "pix2pix": self.pix2pix_datalist}
        return full[kind](seed)

    def method_cases(self, method: SynthesisMethod, seed: int, mass_effect: bool = False) -> Path:
        """All of a seed's cases of a method on healthy scans; with ``mass_effect`` the seed's TF-Aug cases with mass
        effect (TF-Aug's is the only such option of the methods on healthy scans: ``Arm`` checks it)."""
        return self.mass_coarse_datalist(seed) if mass_effect else self.cases_datalist(str(method.cases), seed)

    def method_datalist(self, method: SynthesisMethod, seed: int, mass_effect: bool = False) -> Path:
        """The datalist a synthetic arm of a method on healthy scans trains with: :meth:`method_cases`, or with the
        synthetic-volume ablation (which synthesises more) the first ``base_ratio`` per real case."""
        if mass_effect or not self.cfg["synthetic_per_real"]:
            return self.method_cases(method, seed, mass_effect)
        return self.subset_datalist(self.base_ratio, str(method.cases), seed)

    def metrics(self, arm: str, seed: int) -> Path:
        return self.stage_dir(f"evaluate_{arm}_s{seed}") / "metrics.json"

    # ---- which parts are needed -----------------------------------------------------------------
    @property
    def arms(self) -> list[str]:
        return list(self.cfg["arms"]) + [f"tf_syn{float(r):g}" for r in self.cfg["synthetic_per_real"]]

    def needs(self, part: str) -> bool:
        """Whether an arm needs a model part (:data:`PARTS`): the union of the arms' ``parts``."""
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; known: {PARTS}")
        return any(part in get_arm(a).parts for a in self.arms)

    def n_real(self) -> int:
        """Real training cases every arm sees (``n_real``, else the whole training section)."""
        if self.cfg["n_real"] is not None:
            return int(self.cfg["n_real"])
        return len(load_datalist(self.real_datalist, check="none"))

    def num_synthetic(self) -> int:
        ratios = [self.base_ratio, *map(float, self.cfg["synthetic_per_real"])]
        return max(self.num_subset(r) for r in ratios)

    def iterations_per_epoch(self) -> int:
        """Optimizer steps per epoch of dtss_mas_seg: one index per real case, ``batch_size`` indices per batch."""
        return math.ceil(self.n_real() / int(self.cfg["seg"]["batch_size"]))

    @property
    def control_is_baseline(self) -> bool:
        """Whether the ``real_matched`` arm is the baseline itself: under union sampling without online arms every
        synthetic arm sees the baseline's samples per step, so the control matched in data source, steps and
        samples per step is the baseline (same seed, same data, same compute) and is not trained again. Online
        arms (DTSS, CarveMix: :attr:`~custom_components.pipeline.arms.Arm.online`) always use companion sampling;
        with one of them ``real_matched`` trains with a second real crop per index, their control."""
        return self.cfg["synthetic_sampling"] == "union" and not any(get_arm(a).online for a in self.arms)

    def reuses_baseline(self, arm: str) -> bool:
        """Whether an arm's model is the baseline's: the control arm where :attr:`control_is_baseline`."""
        return get_arm(arm).role == "control" and self.control_is_baseline

    def arm_epochs(self, arm: str) -> int:
        """Epochs an arm's own training stage runs (0: its model is another's: the phase-1 model, tf protocol's
        baseline, or the baseline's for ``real_matched`` where :attr:`control_is_baseline`)."""
        seg = self.cfg["seg"]
        if self.reuses_baseline(arm):
            return 0
        if self.cfg["protocol"] == "tf":
            return 0 if get_arm(arm).role == "baseline" else int(seg["phase1_epochs"])
        return int(seg["phase2_epochs"])

    def arm_iterations(self, arm: str) -> int:
        """Optimizer steps from a fresh initialisation to an arm's model (phase 1 included where continued)."""
        seg = self.cfg["seg"]
        if self.cfg["protocol"] == "tf":
            return int(seg["phase1_epochs"]) * self.iterations_per_epoch()
        return (int(seg["phase1_epochs"]) + int(seg["phase2_epochs"])) * self.iterations_per_epoch()

    def arm_model(self, arm: str, seed: int) -> Path:
        """The model an arm's evaluation reads."""
        if self.reuses_baseline(arm):
            return self.arm_model(BASELINE, seed)
        if self.arm_epochs(arm) == 0:
            return self.phase1_model(seed)
        return self.stage_dir(f"seg_{arm}_s{seed}") / "models" / "model.pt"

    # ---- data stages ------------------------------------------------------------------------------
    def data_stages(self) -> list[Stage]:
        stages = []
        if self.cfg["demo"] is not None:
            demo = dict(self.cfg["demo"])

            def make_demo() -> None:
                from custom_components.data.demo import make_demo_data

                make_demo_data(self.stage_dir("data") / "demo", overwrite=True, **demo)

            stages.append(
                Stage(
                    "data",
                    function=make_demo,
                    outputs=[self.source_datalist, self.raw_healthy],
                    inputs=[],
                    description=f"demo data (PHANTOM tumours) {demo}",
                    key=json.dumps(demo, sort_keys=True),
                )
            )

        if self.cfg["n_real"] is not None:
            n = int(self.cfg["n_real"])

            def write_real_subset() -> None:
                data = read_datalist(self.source_datalist)
                training = data.get("training", [])
                if len(training) < n:
                    raise ValueError(
                        f"{self.source_datalist}: n_real {n} but the training section has {len(training)} cases"
                    )
                subset = {**data, "training": training[:n], "description": f"first {n} real training cases"}
                write_datalist(self.real_datalist, subset)

            stages.append(
                Stage(
                    "real_subset",
                    function=write_real_subset,
                    inputs=[self.source_datalist],
                    outputs=[self.real_datalist],
                    description=f"the first {n} real training cases (n_real): every arm and TF's synthesis use them",
                    key=str(n),
                )
            )

        def prepare() -> None:
            from custom_components.synthesis.healthy_prep import prepare_healthy

            prepare_healthy(
                self.raw_healthy,
                self.reference(),
                self.stage_dir("prepare_healthy"),
                overwrite=True,
                min_brain_dice=float(self.cfg["min_brain_dice"]),
            )

        stages.append(
            Stage(
                "prepare_healthy",
                function=prepare,
                inputs=[self.raw_healthy, self.real_datalist],
                outputs=[self.prepared_healthy],
                description="register healthy scans into the tumour data's space, brain mask, [-1, 1]",
                key=json.dumps([self.cfg["reference"], float(self.cfg["min_brain_dice"])]),
            )
        )
        return stages

    def reference(self) -> Path:
        """The ``reference`` override, else the real datalist (prepare-healthy then chooses its first training
        case's T1-weighted image and logs it; see :func:`~custom_components.synthesis.healthy_prep.choose_reference`)."""
        return Path(self.cfg["reference"]) if self.cfg["reference"] else self.real_datalist

    # ---- bundle stages ------------------------------------------------------------------------------
    def _bundle_stage(
        self,
        name: str,
        bundle: str,
        configs: list[str],
        overrides: dict[str, Any],
        inputs: list[Path],
        outputs: list[Path],
        description: str,
        run_id: str = "run",
    ) -> Stage:
        out = self.stage_dir(name)
        common = {"device": _device(self.cfg), "num_workers": int(self.cfg["num_workers"])}
        overrides_file = self.work / "overrides" / f"{name}.json"
        command = bundle_command(bundle, configs, {**common, **overrides}, overrides_file, run_id)
        return Stage(name, command=command, inputs=inputs, outputs=outputs, description=description, clean=[out])

    def _seg_common(self, seed: int) -> dict[str, Any]:
        seg = self.cfg["seg"]
        return {
            "datalist": str(self.real_datalist),
            "modalities": list(self.cfg["modalities"]),
            "network_name": seg["network_name"],
            "filters": list(seg["filters"]),
            "crop_size": list(seg["crop_size"]),
            "batch_size": int(seg["batch_size"]),
            "seed": int(seed),
            "val_section": self.cfg["eval_section"],
            **seg["overrides"],
        }

    def val_interval(self, epochs: int) -> int:
        """The bundle's ``val_interval`` for a training of ``epochs`` epochs: ``seg.val_interval`` capped at
        ``epochs`` (so a training validates at least at its end), or 0 (no validation; model.pt is the final
        weights, measured by the evaluation stage) when it is 0."""
        interval = int(self.cfg["seg"]["val_interval"])
        return 0 if interval == 0 else max(1, min(interval, epochs))

    def phase1_stage(self, seed: int) -> Stage:
        epochs = int(self.cfg["seg"]["phase1_epochs"])
        name = f"seg_phase1_s{seed}"
        overrides = {
            **self._seg_common(seed),
            "output_dir": str(self.stage_dir(name)),
            "max_epochs": epochs,
            "phase2_start_epoch": epochs,
            "val_interval": self.val_interval(epochs),
            "use_dtss": False,
            "use_mas": False,
        }
        return self._bundle_stage(
            name,
            "dtss_mas_seg",
            ["common.yaml", "train.yaml"],
            overrides,
            inputs=[self.real_datalist],
            outputs=[self.phase1_model(seed)],
            description=f"dtss_mas_seg phase 1 (real data only, {epochs} epochs): baseline model and encoder F",
            run_id="training",
        )

    def _encoder(self, seed: int) -> dict[str, Any]:
        """The frozen encoder F of the TF stages: seed ``seed``'s phase-1 model."""
        seg = self.cfg["seg"]
        return {
            "encoder_checkpoint": str(self.phase1_model(seed)),
            "encoder_network": seg["network_name"],
            "encoder_filters": list(seg["filters"]),
            "encoder_patch_size": list(seg["crop_size"]),
        }

    def _per_seed(self, train: Callable[[int], Stage], synthesise: Callable[[int], Stage]) -> list[Stage]:
        """A model's training stage per model seed (:attr:`model_seeds`), then its synthesis stage per seed."""
        return [*map(train, self.model_seeds), *map(synthesise, self.seeds)]

    def _tf_aug_common(self, seed: int) -> dict[str, Any]:
        return {
            "healthy_datalist": str(self.prepared_healthy),
            "real_datalist": str(self.real_datalist),
            "modalities": list(self.cfg["modalities"]),
            # TF-Aug's synthesis seeds case i by (seed, i): mask augmentation, placement, random pairing
            "seed": int(seed),
            **self._encoder(self.model_seed(seed)),
            **self.cfg["tf_aug"]["overrides"],
        }

    def tf_aug_train_stage(self, seed: int) -> Stage:
        """TF-Aug's training with seed ``seed`` and that seed's phase-1 model as F."""
        tf = self.cfg["tf_aug"]
        name = f"tf_aug_train_s{seed}"
        return self._bundle_stage(
            name,
            "tf_aug",
            ["common.yaml", "train.yaml"],
            {
                **self._tf_aug_common(seed),
                "output_dir": str(self.stage_dir(name)),
                "max_epochs": int(tf["epochs"]),
                "crop_size": list(tf["crop_size"]),
            },
            inputs=[self.prepared_healthy, self.real_datalist, self.phase1_model(seed)],
            outputs=[self.tf_aug_params(seed)],
            description=f"tf_aug, seed {seed}: learn class-wise intensities a_c, b_c through F ({tf['epochs']} epochs)",
            run_id="training",
        )

    def tf_aug_synthesis_stage(self, seed: int, mass_effect: bool = False) -> Stage:
        """TF-Aug's coarse cases of seed ``seed`` (with mass effect: arm ``tf_aug+mass``'s)."""
        n = self.num_synthetic()
        name = f"tf_aug_synthesise{'_mass' if mass_effect else ''}_s{seed}"
        out = self.stage_dir(name)
        params = self.tf_aug_params(self.model_seed(seed))
        overrides = {
            **self._tf_aug_common(seed),
            "output_dir": str(out),
            "intensity_params": str(params),
            "synthesis_dir": str(out / "coarse"),
            "num_cases": n,
            "qc_cases": int(self.cfg["qc_cases"]),
        }
        return self._bundle_stage(
            name,
            "tf_aug",
            ["common.yaml", "inference.yaml"],
            {**overrides, "mass_effect": True} if mass_effect else overrides,
            inputs=[self.prepared_healthy, self.real_datalist, params],
            outputs=[self.mass_coarse_datalist(seed) if mass_effect else self.coarse_datalist(seed)],
            description=f"tf_aug: synthesise {n} coarse tumour cases{' with mass effect' if mass_effect else ''} on "
            f"healthy scans, seed {seed} (intensities of seed {self.model_seed(seed)})",
        )

    def tf_aug_stages(self) -> list[Stage]:
        stages = self._per_seed(self.tf_aug_train_stage, self.tf_aug_synthesis_stage)
        if self.needs("tf_aug_mass"):
            stages += [self.tf_aug_synthesis_stage(s, mass_effect=True) for s in self.seeds]
        return stages

    def _gan_common(self, seed: int) -> dict[str, Any]:
        gan = self.cfg["tf_gan"]
        return {
            "modalities": list(self.cfg["modalities"]),
            "real_datalist": str(self.real_datalist),
            "coarse_datalist": str(self.coarse_datalist(seed)),
            "patch_size": list(gan["patch_size"]),
            "gen_channels": list(gan["gen_channels"]),
            "disc_channels": list(gan["disc_channels"]),
            "seed": int(seed),
            **gan["overrides"],
        }

    def tf_gan_train_stage(self, seed: int) -> Stage:
        """TF-GAN's training on seed ``seed``'s coarse cases, with that seed's phase-1 model as F."""
        gan = self.cfg["tf_gan"]
        name = f"tf_gan_train_s{seed}"
        return self._bundle_stage(
            name,
            "tf_gan",
            ["common.yaml", "train.yaml"],
            {
                **self._gan_common(seed),
                **self._encoder(seed),
                "output_dir": str(self.stage_dir(name)),
                "max_epochs": int(gan["epochs"]),
            },
            inputs=[self.coarse_datalist(seed), self.real_datalist, self.phase1_model(seed)],
            outputs=[self.tf_gan_generator(seed)],
            description=f"tf_gan, seed {seed}: adversarial refinement training ({gan['epochs']} epochs)",
            run_id="training",
        )

    def _generator_stage(
        self, name: str, seed: int, configs: list[str], generator: Path, folder_key: str, output: Path, what: str
    ) -> Stage:
        """A tf_gan bundle stage that applies a trained generator to seed ``seed``'s coarse cases, writing them to
        ``output`` (the datalist in the folder that ``folder_key`` names)."""
        return self._bundle_stage(
            name,
            "tf_gan",
            configs,
            {
                **self._gan_common(seed),
                "output_dir": str(self.stage_dir(name)),
                "generator_checkpoint": str(generator),
                folder_key: str(output.parent),
            },
            inputs=[self.coarse_datalist(seed), generator],
            outputs=[output],
            description=f"{what} (generator of seed {self.model_seed(seed)})",
        )

    def tf_gan_refine_stage(self, seed: int) -> Stage:
        """TF's cases of seed ``seed``: its coarse cases refined by the generator of its model seed."""
        return self._generator_stage(
            f"tf_gan_refine_s{seed}",
            seed,
            ["common.yaml", "inference.yaml"],
            self.tf_gan_generator(self.model_seed(seed)),
            "refined_dir",
            self.refined_datalist(seed),
            f"tf_gan: refine every coarse case of seed {seed} (sliding window, Gaussian blending)",
        )

    def tf_gan_stages(self) -> list[Stage]:
        return self._per_seed(self.tf_gan_train_stage, self.tf_gan_refine_stage)

    def pix2pix_train_stage(self, seed: int) -> Stage:
        gan = self.cfg["tf_gan"]
        name = f"pix2pix_train_s{seed}"
        return self._bundle_stage(
            name,
            "tf_gan",
            ["common.yaml", "train.yaml", "train_pix2pix.yaml"],
            {**self._gan_common(seed), "output_dir": str(self.stage_dir(name)), "max_epochs": int(gan["epochs"])},
            inputs=[self.real_datalist],
            outputs=[self.pix2pix_generator(seed)],
            description=f"Pix2Pix baseline, seed {seed}: label map -> image ({gan['epochs']} epochs)",
            run_id="training",
        )

    def pix2pix_synthesis_stage(self, seed: int) -> Stage:
        """Pix2Pix's cases of seed ``seed``: images for its coarse cases' masks by the generator of its model seed."""
        return self._generator_stage(
            f"pix2pix_synthesise_s{seed}",
            seed,
            ["inference.yaml", "inference_pix2pix.yaml"],
            self.pix2pix_generator(self.model_seed(seed)),
            "synthetic_dir",
            self.pix2pix_datalist(seed),
            f"Pix2Pix baseline: images for the augmented masks of seed {seed}",
        )

    def pix2pix_stages(self) -> list[Stage]:
        return self._per_seed(self.pix2pix_train_stage, self.pix2pix_synthesis_stage)

    def subset_stage(self, seed: int) -> Stage:
        """Datalists of the first N synthetic cases per real case of a seed: the ablation's refined subsets, and
        the base-ratio subsets of every synthesised datalist the arms use."""
        wanted = {("refined", float(r)) for r in self.cfg["synthetic_per_real"]}
        sources = {"refined": self.refined_datalist(seed)}
        if self.needs("tf_aug"):
            sources["coarse"] = self.coarse_datalist(seed)
        if self.needs("pix2pix"):
            sources["pix2pix"] = self.pix2pix_datalist(seed)
        wanted |= {(kind, self.base_ratio) for kind in sources}
        wanted = {(k, r) for k, r in wanted if k in sources}

        def write_subsets() -> None:
            for kind, r in sorted(wanted):
                data = read_datalist(sources[kind])
                items = data["training"][: self.num_subset(r)]
                subset = {**data, "training": items, "description": f"first {len(items)} {kind} cases ({r:g}/real)"}
                write_datalist(self.subset_datalist(r, kind, seed), subset)

        return Stage(
            f"synthetic_subsets_s{seed}",
            function=write_subsets,
            inputs=[*sources.values(), self.real_datalist],
            outputs=[self.subset_datalist(r, k, seed) for k, r in sorted(wanted)],
            description=f"synthetic datalists of seed {seed} with N cases per real case: {sorted(wanted)}",
            key=json.dumps(sorted(wanted)),
        )

    def arm_overrides(self, arm: str, seed: int) -> dict[str, Any]:
        """dtss_mas_seg phase-2 settings that define an arm of a seed (which data: the seed's synthetic cases; the
        protocol is in :meth:`arm_stages`): :meth:`custom_components.pipeline.arms.Arm.overrides`."""
        return get_arm(arm).overrides(self, seed)

    def arm_train_overrides(self, arm: str, seed: int) -> dict[str, Any]:
        """dtss_mas_seg overrides of an arm's training stage under the experiment's protocol."""
        epochs = self.arm_epochs(arm)
        base = {
            **self._seg_common(seed),
            **self.arm_overrides(arm, seed),
            "output_dir": str(self.stage_dir(f"seg_{arm}_s{seed}")),
            "phase2_start_epoch": 0,
            "max_epochs": epochs,
        }
        if self.cfg["protocol"] == "tf":
            # from scratch, as long as the baseline, with phase 1's learning rate and validation schedule
            return {
                **base,
                "init_checkpoint": None,
                "lr_phase2": "@lr_phase1",
                "val_interval": self.val_interval(epochs),
            }
        # continue the seed's phase-1 model; validate (and keep the model) at the end of the short continuation,
        # or not at all
        val_interval = epochs if self.val_interval(epochs) else 0
        return {**base, "init_checkpoint": str(self.phase1_model(seed)), "val_interval": val_interval}

    def arm_stages(self, arm: str, seed: int) -> list[Stage]:
        model = self.arm_model(arm, seed)
        stages = []
        if self.arm_epochs(arm) > 0:
            overrides = self.arm_train_overrides(arm, seed)
            init = [Path(overrides["init_checkpoint"])] if overrides["init_checkpoint"] else []
            how = PROTOCOLS[self.cfg["protocol"]]
            stages.append(
                self._bundle_stage(
                    f"seg_{arm}_s{seed}",
                    "dtss_mas_seg",
                    ["common.yaml", "train.yaml"],
                    overrides,
                    inputs=[self.real_datalist, *init, *map(Path, overrides["synthetic_datalists"])],
                    outputs=[model],
                    description=f"dtss_mas_seg arm {arm} ({get_arm(arm).description}), seed {seed}: {how}",
                    run_id="training",
                )
            )
        eval_name = f"evaluate_{arm}_s{seed}"
        # the control under union sampling: the baseline's model, evaluated under the control's name
        reused = (
            " (the baseline's model: under union sampling every arm sees its samples per step)"
            if self.reuses_baseline(arm)
            else ""
        )
        evaluate = self._bundle_stage(
            eval_name,
            "dtss_mas_seg",
            ["common.yaml", "evaluate.yaml"],
            {
                **self._seg_common(seed),
                "output_dir": str(self.stage_dir(eval_name)),
                "model_path": str(model),
                "eval_datalist": str(self.real_datalist),
                "eval_section": self.cfg["eval_section"],
                "eval_dir": str(self.stage_dir(eval_name)),
            },
            inputs=[self.real_datalist, model],
            outputs=[self.metrics(arm, seed)],
            description=f"evaluate arm {arm}{reused}, seed {seed} on '{self.cfg['eval_section']}' (ET/TC/WT Dice, "
            "HD95)",
        )
        return [*stages, evaluate]

    def model_stages(self) -> list[Stage]:
        seeds = self.seeds
        stages = [self.phase1_stage(s) for s in seeds]
        if self.needs("tf_aug"):
            stages += self.tf_aug_stages()
        if self.needs("tf_gan"):
            stages += self.tf_gan_stages()
        if self.needs("pix2pix"):
            stages += self.pix2pix_stages()
        if self.cfg["synthetic_per_real"]:
            stages += [self.subset_stage(s) for s in seeds]
        for arm in self.arms:
            for seed in seeds:
                stages += self.arm_stages(arm, seed)
        return stages

    def stage_names(self) -> list[str]:
        """The names of every stage of this experiment, the report's included (in their order)."""
        return [s.name for s in [*self.data_stages(), *self.model_stages()]] + ["report"]

    def count_model_stages(self) -> int:
        """Number of stages after the data stages (for the progress lines, before datalists exist)."""
        trained = sum(self.arm_epochs(a) > 0 for a in self.arms)
        seeds = len(self.seeds)
        n = seeds * (1 + len(self.arms) + trained) + 1
        # per model: its trainings (one per model seed) and a synthesis per seed
        n += (len(self.model_seeds) + seeds) * sum(self.needs(p) for p in ("tf_aug", "tf_gan", "pix2pix"))
        return n + seeds * (int(self.needs("tf_aug_mass")) + int(bool(self.cfg["synthetic_per_real"])))

    def report_stage(self, write: Callable[[Experiment], dict[str, Path]]) -> Stage:
        seeds = self.seeds
        metrics = [self.metrics(a, s) for a in self.arms for s in seeds]
        return Stage(
            "report",
            function=lambda: write(self),
            inputs=metrics,
            outputs=[self.stage_dir("report") / "report.md", self.stage_dir("report") / "report.html"],
            description="comparison report (Markdown + HTML), Dice plot, QC montages",
            key=self.cfg["title"],
        )


def run_experiment(cfg: dict[str, Any], from_stage: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Run the whole chain for a loaded pipeline config; returns the report's Markdown path.

    The work dir is locked for the run (:func:`~custom_components.pipeline.runner.workdir_lock`). A forced
    ``from_stage`` is recorded in ``<workdir>/forced_from.json`` until the run completes, so a rerun after an
    interruption still redoes every stage from it on.
    """
    exp = Experiment(cfg)
    exp.work.mkdir(parents=True, exist_ok=True)
    with workdir_lock(exp.work):
        record = exp.work / FORCED_RECORD
        if from_stage is None and record.is_file():
            # an interrupted forced run: every stage from the recorded one on is still to be redone
            from_stage = json.loads(record.read_text()).get("from")
            log(f"continuing the interrupted forced run (--from {from_stage}, recorded in {record})")
        if from_stage is not None:
            atomic_write_text(record, json.dumps({"from": from_stage}) + "\n")
        report = _run_experiment(exp, from_stage, log)
        record.unlink(missing_ok=True)
    return report


def _run_experiment(exp: Experiment, from_stage: str | None, log: Callable[[str], None]) -> Path:

    data = exp.data_stages()
    data_names = [s.name for s in data]
    total = len(data) + exp.count_model_stages()
    run_stages(data, exp.work, from_stage if from_stage in data_names else None, log=log, numbering=(0, total))
    rest = [*exp.model_stages(), exp.report_stage(write_experiment_report)]
    names = [s.name for s in data + rest]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"--from {from_stage!r} is not a stage; stages: {', '.join(names)}")
    # a forced rerun of a data stage forces everything after it too
    rerun_from = rest[0].name if from_stage in data_names else from_stage
    run_stages(rest, exp.work, rerun_from, log=log, numbering=(len(data), total))
    return exp.stage_dir("report") / "report.md"
