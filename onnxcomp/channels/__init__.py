"""Channel-dependency analysis: which channels of which layers must be removed together.

Every weight layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) starts an
*origin*: its output channels. Channels are followed forward through channel-preserving ops
(activations, BatchNormalization, pooling, Pad/Resize/Transpose/Reshape that keep the channel
axis, depthwise Conv), concatenated (Concat along the channel axis: offsets) and flattened
(Flatten: one channel becomes a block of ``inner`` consecutive features) until weight layers
read them. Origins whose channels meet in an element-wise op (residual Add, Mul, ...) must lose
the same channels: they are linked in a networkx graph, and each connected component is one
:class:`ChannelGroup`. Model inputs feeding a weight layer (possibly through Flatten) are origins
too; removing their features inserts a Gather on the input inside the graph.

Whatever the analysis cannot prove safe (a Reshape that splits the channel axis, Softmax over
channels, a graph output, an unknown op, a shared weight, a non-constant operand that varies
over channels) blocks the whole group, with a reason.

The analysis only reads the model. It records, per group, every edit that removing a channel
needs: tensor slices, shape-constant entries, ``group`` attributes and input gathers.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxcomp.channels.rules import RULES
from onnxcomp.channels.tracer import Tracer
from onnxcomp.channels.types import (AttributeEdit, ChannelAnalysis, ChannelGroup, ChannelRef, Dim, Layout, Origin,
                                     Segment, ShapeEdit, TensorEdit, Tracked, constant, layout_length, layout_units,
                                     segment_offsets)

__all__ = [
    "AttributeEdit",
    "ChannelAnalysis",
    "ChannelGroup",
    "ChannelRef",
    "Dim",
    "Layout",
    "Origin",
    "Segment",
    "ShapeEdit",
    "TensorEdit",
    "Tracked",
    "analyze_channels",
    "constant",
    "layout_length",
    "layout_units",
    "segment_offsets",
]


def analyze_channels(model: ir.Model) -> ChannelAnalysis:
    """Find the channel groups of ``model`` and everything that removing a channel touches.

    Shapes come from the model and from ONNX shape inference (run on the side; the model is
    not changed).
    """
    return Tracer(model, RULES).run()
