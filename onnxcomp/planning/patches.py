"""A 2-D convolution as matrices, for GPTQ (`onnxcomp.planning.gptq`).

A Conv with kernel W [O, C/g, kh, kw] and g groups computes, for each group, patches P [n, K]
(K = C/g * kh * kw, one row per output position, im2col) times the matrix W_g [K, O/g] (the
group's output channels, transposed). So its layer output error is tr((W_g - Q_g)^T H_g
(W_g - Q_g)) with H_g = P^T P / n, the same form as a MatMul's, once per group: `matrices` turns
a kernel into its g matrices [g, K, O/g] and back, and `ConvPatches` accumulates H [g, K, K]
from input activations. A depthwise convolution is C matrices of kh * kw rows.

Patches are sampled: at most `ROWS` output positions per layer over all calibration samples
(split between batches by their share of the samples), since H costs rows * K^2 to build
(a 3x3 convolution over 256 channels: K = 2,304).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

ROWS = 8192  # sampled output positions per convolution, over all calibration samples


def matrices(values: np.ndarray, groups: int) -> np.ndarray:
    """A kernel [O, C/g, ...] as its groups' matrices [g, C/g * prod(kernel), O/g]."""
    out = values.shape[0]
    return np.ascontiguousarray(values.reshape(groups, out // groups, -1).transpose(0, 2, 1))


def kernel(stack: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `matrices`: [g, K, O/g] back to the kernel's `shape`."""
    return np.ascontiguousarray(stack.transpose(0, 2, 1)).reshape(shape)


@dataclasses.dataclass(frozen=True)
class ConvPatches:
    """What a 2-D Conv node does to its input, enough to cut the patches its kernel sees."""

    groups: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int] | None  # top, left, bottom, right; None: auto_pad SAME_*
    same_upper: bool = True

    @classmethod
    def of(cls, node: ir.Node) -> ConvPatches | None:
        """The layout of a Conv reading a constant 4-D kernel, or None (other ranks, unknown pads)."""
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or weight is None or weight.const_value is None:
            return None
        shape = tuple(weight.const_value.shape)
        if len(shape) != 4:
            return None
        attrs = {k: a.value for k, a in node.attributes.items()}
        groups = int(attrs.get("group", 1))
        auto = attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if groups < 1 or shape[0] % groups:
            return None
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = None
        elif auto == "VALID":
            pads = (0, 0, 0, 0)
        elif auto != "NOTSET" or len(pads) != 4:
            return None
        return cls(groups, (shape[2], shape[3]), tuple(int(s) for s in attrs.get("strides", (1, 1))),
                   tuple(int(d) for d in attrs.get("dilations", (1, 1))), pads, auto != "SAME_LOWER")

    def _padded(self, x: np.ndarray) -> np.ndarray:
        pads = self.pads
        if pads is None:  # SAME: output size ceil(in / stride), the extra pad at the end (UPPER) or start
            pads_hw = []
            for size, k, s, d in zip(x.shape[2:], self.kernel, self.strides, self.dilations):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small = total // 2
                pads_hw.append((small, total - small) if self.same_upper else (total - small, small))
            pads = (pads_hw[0][0], pads_hw[1][0], pads_hw[0][1], pads_hw[1][1])
        if not any(pads):
            return x
        return np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))

    def hessian_sums(self, x: np.ndarray, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
        """(sum of P_g^T P_g over `rows` sampled positions [g, K, K] float64, rows used) for a
        batch of inputs x [N, C, H, W]; None where x does not fit the kernel."""
        if x.ndim != 4 or x.shape[1] % self.groups:
            return None
        padded = self._padded(np.asarray(x, np.float32))
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
        if padded.shape[2] < span[0] or padded.shape[3] < span[1]:
            return None
        windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))[..., ::dh, ::dw]
        windows = windows[:, :, ::sh, ::sw]  # [N, C, Ho, Wo, kh, kw]
        count, heights, widths = windows.shape[0], windows.shape[2], windows.shape[3]
        positions = count * heights * widths
        chosen = np.arange(positions) if positions <= rows else np.sort(rng.choice(positions, rows, replace=False))
        n, rest = np.divmod(chosen, heights * widths)
        y, xpos = np.divmod(rest, widths)
        patches = windows[n, :, y, xpos]  # [R, C, kh, kw]
        patches = patches.reshape(len(chosen), self.groups, -1).transpose(1, 0, 2)  # [g, R, K]
        return np.matmul(patches.transpose(0, 2, 1), patches).astype(np.float64), len(chosen)
