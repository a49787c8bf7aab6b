"""The MONAI Model Zoo's bundle checks (``ci/verify_bundle.py`` of Project-MONAI/model-zoo, full mode), run on one
bundle folder with MONAI's own functions.

    python ci/verify_bundle.py BUNDLE_DIR [--schema meta_schema.json] [--properties_overrides data.json]

Each check reads ``configs/inference.*`` alone, with ``configs/metadata.json``, as the Zoo does (never
``common.yaml``):

- ``files``: the necessary files (``configs/metadata.json``, ``LICENSE``) and the preferred ones
  (``configs/inference.{json,yaml,yml}``, ``models/model.pt``) exist, and ``docs/README.md``;
- ``large_files``: the files of ``large_files.{yml,yaml,json}`` are there with their hashes
  (``monai.bundle.download_large_files``; nothing is downloaded when they are);
- ``version``: ``version`` is a key of ``changelog``;
- ``metadata``: ``monai.bundle.verify_metadata`` against the schema file;
- ``fake_weights``: ``ConfigParser`` reads the inference config and the metadata and parses ``network_def``; its
  ``state_dict`` is written to ``models/model.pt`` when that file is missing (as the Zoo makes weights to test);
- ``net_in_out``: ``monai.bundle.verify_net_in_out`` on the metadata's ``network_data_format`` (n=1, any=1);
- ``torchscript``: ``monai.bundle.ckpt_export`` of ``models/model.pt`` to ``models/verify_model.ts``; the file loads
  with its metadata and the inference config inside (and ``models/model.ts``, if the bundle has one, loads);
- ``properties``: ``ConfigWorkflow(config_file=<inference>, workflow_type="inference")``, initialised,
  ``check_properties()`` is empty. The Zoo's workflow is initialised without data; this project's inference configs
  check their inputs in ``initialize`` (a bad input fails before anything is written), so this check takes the
  data paths from ``--properties_overrides`` (a JSON object of config overrides, e.g. a small datalist).

The script imports only MONAI, torch and the standard library (plus the bundle's own code through its configs),
so it runs where this repository is not importable, e.g. on an exported bundle that vendors its code in
``scripts/``. The bundle folder is put first on ``sys.path``, as the Zoo does. It prints one ``PASS``/``FAIL`` line
per check and exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKS = ("files", "large_files", "version", "metadata", "fake_weights", "net_in_out", "torchscript", "properties")
NET_ID = "network_def"
SUFFIXES = ("json", "yaml", "yml")


def find_config(bundle: Path, name: str) -> Path | None:
    """``configs/<name>.{json,yaml,yml}`` of the bundle (the Zoo's suffix search), or None."""
    for suffix in SUFFIXES:
        path = bundle / "configs" / f"{name}.{suffix}"
        if path.is_file():
            return path
    return None


def _inference(bundle: Path) -> Path:
    path = find_config(bundle, "inference")
    if path is None:
        raise FileNotFoundError(f"{bundle}/configs: no inference.json, inference.yaml or inference.yml")
    return path


def _meta(bundle: Path) -> Path:
    return bundle / "configs" / "metadata.json"


def check_files(bundle: Path, **_: Any) -> str:
    missing = [
        f
        for f in ("configs/metadata.json", "LICENSE", "models/model.pt", "docs/README.md")
        if not (bundle / f).is_file()
    ]
    if find_config(bundle, "inference") is None:
        missing.append("configs/inference.{json,yaml,yml}")
    if missing:
        raise FileNotFoundError(f"missing: {', '.join(missing)}")
    return "metadata.json, LICENSE, inference config, models/model.pt, docs/README.md"


def check_large_files(bundle: Path, **_: Any) -> str:
    from monai.bundle import download_large_files

    for suffix in SUFFIXES:
        name = f"large_files.{suffix}"
        if (bundle / name).is_file():
            # no large_file_name: MONAI 1.6.1's download_large_files fails with one (UnboundLocalError) and finds
            # the large_files.* file itself
            download_large_files(bundle_path=str(bundle))
            return f"{name}: every file present with its hash"
    return "no large_files.* (nothing to fetch)"


def check_version(bundle: Path, **_: Any) -> str:
    meta = json.loads(_meta(bundle).read_text())
    if "version" not in meta or "changelog" not in meta:
        raise ValueError("metadata.json needs 'version' and 'changelog'")
    if meta["version"] not in meta["changelog"]:
        raise ValueError(f"version {meta['version']} is not a key of changelog ({list(meta['changelog'])})")
    return f"version {meta['version']} in changelog"


def check_metadata(bundle: Path, schema: Path | None = None, **_: Any) -> str:
    from monai.bundle import verify_metadata

    if schema is None or not schema.is_file():
        raise FileNotFoundError(f"schema file {schema} not found (pass --schema)")
    verify_metadata(meta_file=str(_meta(bundle)), filepath=str(schema))
    return f"valid against {schema.name}"


def produce_fake_weights(bundle: Path, **_: Any) -> str:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=str(_inference(bundle)))
    parser.read_meta(f=str(_meta(bundle)))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content(NET_ID)
    target = bundle / "models" / "model.pt"
    if target.is_file():
        # the bundle's own weights must fit the network the inference config defines
        network.load_state_dict(torch.load(target, map_location="cpu", weights_only=True))
        return f"{NET_ID} parsed from the inference config; models/model.pt loads into it"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)
    return f"{NET_ID} parsed from the inference config; its state_dict written to models/model.pt"


def check_net_in_out(bundle: Path, **_: Any) -> str:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id=NET_ID, meta_file=str(_meta(bundle)), config_file=str(_inference(bundle)), bundle_root=str(bundle)
    )
    return "network_data_format input -> output channels and dtype"


def check_torchscript(bundle: Path, **_: Any) -> str:
    import torch
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    inference = _inference(bundle)
    ts = bundle / "models" / "verify_model.ts"
    ckpt_export(
        net_id=NET_ID,
        filepath=str(ts),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=str(_meta(bundle)),
        config_file=str(inference),
        bundle_root=str(bundle),
    )
    _, meta, extra = load_net_with_metadata(str(ts), more_extra_files=(f"{inference.stem}.json",))
    if meta.get("version") != json.loads(_meta(bundle).read_text())["version"]:
        raise ValueError(f"{ts}: embedded metadata version {meta.get('version')} differs from metadata.json")
    if NET_ID not in json.loads(extra[f"{inference.stem}.json"]):
        raise ValueError(f"{ts}: the embedded {inference.stem}.json has no {NET_ID}")
    provided = bundle / "models" / "model.ts"
    if provided.is_file():
        torch.jit.load(str(provided))
    return f"ckpt_export -> {ts.name} loads with metadata and {inference.stem}.json" + (
        "; models/model.ts loads" if provided.is_file() else ""
    )


def check_properties(bundle: Path, properties_overrides: dict[str, Any] | None = None, **_: Any) -> str:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(_inference(bundle)),
        meta_file=str(_meta(bundle)),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="inference",
        bundle_root=str(bundle),
        **(properties_overrides or {}),
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"missing or wrong inference properties: {missing}")
    return "inference workflow properties complete"


RUNNERS: dict[str, Callable[..., str]] = {
    "files": check_files,
    "large_files": check_large_files,
    "version": check_version,
    "metadata": check_metadata,
    "fake_weights": produce_fake_weights,
    "net_in_out": check_net_in_out,
    "torchscript": check_torchscript,
    "properties": check_properties,
}


def verify(
    bundle: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    properties_overrides: dict[str, Any] | None = None,
    checks: tuple[str, ...] = CHECKS,
) -> dict[str, tuple[bool, str]]:
    """Run the Zoo's checks on one bundle folder; ``{check: (passed, message)}`` in the Zoo's order.

    ``fake_weights`` runs before ``files`` so that a bundle whose weights are not in the folder (this repository's
    bundles) is checked as the Zoo checks it with its weights in place.
    """
    bundle = Path(bundle).resolve()
    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))  # as the Zoo does, so a bundle's scripts/ imports
    order = [c for c in ("fake_weights", *CHECKS) if c in checks]
    results: dict[str, tuple[bool, str]] = {}
    for name in dict.fromkeys(order):
        try:
            msg = RUNNERS[name](
                bundle, schema=Path(schema) if schema else None, properties_overrides=properties_overrides
            )
            results[name] = (True, msg)
        except Exception as e:  # every failure is reported, the other checks still run
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            cause = e.__cause__ or e.__context__
            if cause is not None:
                last += f" (caused by {type(cause).__name__}: {cause})"
            results[name] = (False, last)
    return {c: results[c] for c in CHECKS if c in results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="bundle folder (configs/, models/, docs/, LICENSE)")
    ap.add_argument("--schema", help="metadata schema file (meta_schema_20240725.json)")
    ap.add_argument("--properties_overrides", help="JSON file of config overrides for the properties check")
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = ap.parse_args(argv)
    overrides = json.loads(Path(args.properties_overrides).read_text()) if args.properties_overrides else None
    results = verify(args.bundle, args.schema, overrides, tuple(c for c in args.checks.split(",") if c))
    for name, (ok, msg) in results.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}: {msg}")
    print("ZOO_RESULTS " + json.dumps({k: v[0] for k, v in results.items()}))
    return 0 if all(ok for ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
