"""Operators of ONNX and ORT-format models, and the check against the pre-built mobile package.

`write_operators_config` writes the reduced-build ``required_operators.config`` of .ort models;
`check_ops` checks a model's operators against the operator config of ONNX Runtime's
reduced-operator ("pre-built") `onnxruntime-mobile` package, where the installed onnxruntime
still ships that list (1.19 does, 1.32 does not: `package_config_path` is then None).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import onnx

from onnxcomp.runtime.inference import _ort

logger = logging.getLogger(__name__)

DEFAULT_DOMAIN = "ai.onnx"


@dataclasses.dataclass
class PackageCheck:
    """A model's operators checked against the pre-built mobile package's operator config.

    ONNX Runtime registers one kernel per operator version ("since version"), so an op is
    supported when the package holds the same version of it. `unsupported` lists
    `domain:version:op` for the ops it does not hold. `opset_supported` is the separate,
    stricter test of ONNX Runtime's own checker (`check_onnx_model_mobile_usability`): whether
    the model's opset is one the package was built for.
    """

    opset: int
    package_opsets: list[int]
    opset_supported: bool
    unsupported: list[str]

    @property
    def ok(self) -> bool:
        return self.opset_supported and not self.unsupported


def write_operators_config(ort_paths: list[Path], config_path: Path) -> dict[str, dict[int, list[str]]]:
    """Write the reduced-build operator config for the given .ort models; return its contents."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    # ORT's tools log an INFO line per config through their own handler; keep the CLI quiet.
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    create_config_from_models(ort_paths, config_path, enable_type_reduction=False)
    return read_operators_config(config_path)


def read_operators_config(config_path: Path) -> dict[str, dict[int, list[str]]]:
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    required, _ = parse_config(str(config_path), enable_type_reduction=False)
    return {domain: {opset: sorted(ops) for opset, ops in sorted(by_opset.items())} for domain, by_opset in required.items()}


PACKAGE_CHECKER = "onnxruntime.tools.mobile_helpers.check_model_can_use_ort_mobile_pkg"
PACKAGE_NAME = "the reduced-operator onnxruntime-mobile package"
PACKAGE_SCOPE = ("ended with ONNX Runtime 1.18; today's onnxruntime-android and iOS packages are full builds "
                 "that run every operator")
NO_PACKAGE_CHECK = ("no operator check against " + PACKAGE_NAME + ": onnxruntime {version} ships no operator list "
                    "for it (it " + PACKAGE_SCOPE + ")")
BUILD_ADVICE = ("which file for which build: full onnxruntime-android/iOS package: ship the .onnx (compact, "
                "decoded once at load);\n"
                "  minimal (ORT-format-only) build: --ort-weights packed where download size matters (decodes on "
                "every run), dense where latency does")


def ort_version() -> str:
    """The installed onnxruntime's version."""
    return _ort().__version__


def package_config_path() -> Path | None:
    """The operator config ONNX Runtime's pre-built (reduced-operator) mobile package was built with.

    Returns:
        The config file shipped with the installed onnxruntime, or None where it ships none (the
        reduced mobile packages ended with ONNX Runtime 1.18; 1.32 removed the list and its checker).
    """
    try:
        found = importlib.util.find_spec(PACKAGE_CHECKER) is not None
    except ModuleNotFoundError:  # onnxruntime.tools.mobile_helpers itself is gone
        found = False
    if not found:
        logger.debug("%s is not in this onnxruntime: no mobile package operator check", PACKAGE_CHECKER)
        return None
    from onnxruntime.tools.mobile_helpers.check_model_can_use_ort_mobile_pkg import get_default_config_path

    path = Path(get_default_config_path())
    return path if path.is_file() else None


def package_operators() -> dict[str, dict[int, list[str]]] | None:
    """The pre-built mobile package's operators (domain -> opset -> ops), or None where ORT ships no list."""
    path = package_config_path()
    return read_operators_config(path) if path is not None else None


def _since_version(domain: str, op: str, opset: int) -> int | None:
    """The version of `op` in effect at `opset` (what ORT kernels are registered by)."""
    try:
        return onnx.defs.get_schema(op, opset, "" if domain == DEFAULT_DOMAIN else domain).since_version
    except Exception:  # no ONNX schema: ORT-internal or contrib op; its listed opset is its version
        return None


def check_ops(used: dict[str, dict[int, set[str]]], opset: int,
              package: dict[str, dict[int, list[str]]]) -> PackageCheck:
    """Check ops used (domain -> op version -> op types) against the mobile package's operators.

    `opset` is the model's ai.onnx opset. Versions in `used` may be opsets or since-versions:
    both map to the same kernel version. `package` is a config as `read_operators_config` returns
    it (e.g. `package_operators()`).
    """
    # ORT's checker drops this entry: a contrib op registered under ai.onnx opset 1.
    package_opsets = sorted(o for o in package.get(DEFAULT_DOMAIN, {}) if o != 1)
    unsupported = set()
    for domain, by_version in used.items():
        available = package.get(domain, {})
        for version, ops in by_version.items():
            for op in ops:
                needed = _since_version(domain, op, version) or version
                held = {(_since_version(domain, op, o) or o) for o, listed in available.items() if op in listed}
                if needed not in held:
                    unsupported.add(f"{domain}:{needed}:{op}")
    return PackageCheck(opset, package_opsets, opset in package_opsets, sorted(unsupported))


def model_opset(proto: onnx.ModelProto) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", DEFAULT_DOMAIN)), 0)


def onnx_ops(proto: onnx.ModelProto) -> dict[str, dict[int, set[str]]]:
    """domain -> opset -> op types used by a model (subgraphs included; Constant is folded at load)."""
    opsets = {(entry.domain or DEFAULT_DOMAIN): entry.version for entry in proto.opset_import}
    used: dict[str, dict[int, set[str]]] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            domain = node.domain or DEFAULT_DOMAIN
            if not (domain == DEFAULT_DOMAIN and node.op_type == "Constant"):
                used.setdefault(domain, {}).setdefault(opsets.get(domain, 1), set()).add(node.op_type)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    walk(attribute.g)
                for subgraph in attribute.graphs:
                    walk(subgraph)

    walk(proto.graph)
    return used
