"""report (onnxcomp.reporting.report): the per-weight rows of `inspect` and the compress report
(measured on the saved model), the allocator's rows, the text table, the one-line summary, and
the notes on outputs measured on generated inputs."""

from __future__ import annotations

import types

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from onnxcomp.planning.pricing import Candidate, LayerOptions
from onnxcomp.encodings.quantize import SortedWeights
from onnxcomp.reporting.compression_report import LayerRow
from onnxcomp.reporting.report import (COMPRESS_COLUMNS, compressed_rows, format_table, inspect_model, inspect_summary,
                                       layer_rows, uninformative_outputs)
from tests.conftest import single_matmul, to_proto
from tests.pass_helpers import prune_and_cluster

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_uninformative_outputs_name_flat_and_one_class_outputs():
    fidelity = {"outputs": {"boxes": {"flat_original": True}, "scores": {"original_top1_classes": 1},
                            "fine": {"original_top1_classes": 7}}}
    lines = uninformative_outputs(fidelity)
    assert len(lines) == 2
    assert lines[0].startswith("output 'boxes' is the same on every generated input")
    assert lines[1].startswith("output 'scores': the original gives one class to every generated input")
    assert uninformative_outputs({}) == []


def test_inspect_rows_of_dense_lookup_and_sparse_weights(rng):
    dense = single_matmul(rng.standard_normal((64, 64)).astype(np.float32))
    (row,) = inspect_model(dense)
    assert (row.name, row.role, row.shape, row.params, row.encoding, row.bits) == ("w", "weight", [64, 64], 4096,
                                                                                   "dense", 32)
    assert row.bytes_before == row.bytes_after == 4 * 4096 and row.sparsity == 0.0 and row.levels == 4096

    lookup = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), None, 3)
    InsertDequantizeLookupPass()(lookup)
    (row,) = inspect_model(lookup)
    assert row.encoding in ("lookup", "linear") and row.bits == 3 and row.levels == 8
    assert row.bytes_before == 4 * 4096 and 3 * 4096 / 8 <= row.bytes_after < 4 * 4096 / 8

    sparse = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), 0.9, 2)
    SubstituteSparseOpsPass()(sparse)
    (row,) = inspect_model(sparse)
    assert row.encoding == "sparse" and row.sparsity == pytest.approx(0.9, abs=0.002)
    assert row.levels == 4 and row.bits == encoding.bits_for(4)  # three values and zero


def test_compressed_rows_add_what_the_allocator_planned(rng):
    model = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), None, 3)
    InsertDequantizeLookupPass()(model)
    data = to_proto(model).SerializeToString()
    (measured,) = inspect_model(ir.serde.deserialize_model(onnx.ModelProto.FromString(data)))
    # rows are matched by the name the saved model gives the weight (here its decode's output)
    layer = types.SimpleNamespace(name=measured.name, sensitivity=2.5)
    allocation = types.SimpleNamespace(choices={measured.name: Candidate("lookup", 1600, 0.0004)})
    (row,) = compressed_rows(data, [layer], allocation)
    assert (row.relative_error, row.sensitivity) == (0.02, 2.5)
    assert (row.bytes_after, row.encoding, row.bits) == (measured.bytes_after, measured.encoding, measured.bits)
    (unplanned,) = compressed_rows(data, [], allocation)
    assert unplanned.relative_error is None and unplanned.sensitivity is None


def test_layer_rows_from_the_allocators_choices(rng):
    values = rng.standard_normal((8, 16)).astype(np.float32)
    quant = SortedWeights(values).quantize(0.5, 7)
    dense = Candidate("dense", 600, 0.0)
    chosen = Candidate("sparse", 120, 0.0025, 0.5, 3, quant)
    layers = [LayerOptions("w", (8, 16), "weight", [chosen, dense], sensitivity=1.5),
              LayerOptions("b", (16,), "bias", [Candidate("dense", 80, 0.0)], itemsize=2)]
    allocation = types.SimpleNamespace(choices={"w": chosen, "b": layers[1].dense})
    first, second = layer_rows(layers, allocation)
    assert first == LayerRow(name="w", role="weight", shape=[8, 16], params=128, encoding="sparse", bits=3,
                             levels=quant.codebook.size, sparsity=0.5, bytes_before=600, bytes_after=120,
                             relative_error=0.05, sensitivity=1.5)
    assert (second.encoding, second.bits, second.levels, second.bytes_after) == ("dense", 16, None, 80)


def test_format_table_aligns_and_formats_cells():
    rows = [LayerRow(name="encoder.layer.0.attention.self.query.weight.long.name", shape=[384, 384],
                     params=147456, encoding="lookup", bits=4, bytes_before=589824, bytes_after=73728, sparsity=0.25),
            LayerRow(name="b", shape=[10], params=10, encoding="dense", bits=32, bytes_before=40, bytes_after=40,
                     levels=None, sparsity=None)]
    lines = format_table(rows, COMPRESS_COLUMNS).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # every line as wide
    assert lines[0].split() == ["layer", "shape", "params", "encoding", "bits", "sparsity", "before", "after"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    first = lines[2].split()
    assert first[0] == "..." + rows[0].name[-37:] and len(first[0]) == 40  # long names keep their end
    assert first[1:] == ["384x384", "147456", "lookup", "4", "25%", "590", "KB", "73.7", "KB"]
    assert lines[3].split() == ["b", "10", "10", "dense", "32", "-", "40", "B", "40", "B"]
    assert format_table([LayerRow(name="x\x1b[31m", shape=[1], params=1, encoding="dense", bits=0.5,
                                  bytes_before=4, bytes_after=4)],
                        [("name", "layer"), ("bits", "bits")]).splitlines()[2].split()[1] == "0.5"


def test_format_table_makes_control_characters_printable():
    row = LayerRow(name="evil\x1b[2Jname", shape=[1], params=1, encoding="dense", bits=32, bytes_before=4, bytes_after=4)
    table = format_table([row], [("name", "layer")])
    assert "\x1b" not in table


def test_inspect_summary_counts_weights_parameters_and_bits():
    rows = [LayerRow(name="a", shape=[100], params=1000, encoding="lookup", bits=4, bytes_before=4000, bytes_after=500),
            LayerRow(name="b", shape=[10], params=1000, encoding="dense", bits=32, bytes_before=4000, bytes_after=4000)]
    assert inspect_summary(rows, 5000) == ("2 weights, 2,000 parameters, stored in 4.5 KB; file 5 KB "
                                           "(20.00 bits per parameter)")
    assert inspect_summary([], 100) == ("0 weights, 0 parameters, stored in 0 B; file 100 B (no weights: the bytes are "
                                        "graph structure, other tensors or operator attributes, e.g. a tree ensemble's)")


def test_quality_measures_name_what_was_measured():
    from onnxcomp.reporting.report import quality_measures

    assert quality_measures({"top1_agreement": 0.98765, "cosine": 0.99912, "max_abs_error": 0.0123}) == [
        "top-1 agreement 98.77%", "cosine 0.9991", "max abs error 0.0123"]
    assert quality_measures({"position_top1_agreement": 1 / 3, "cosine": 0.9817, "max_abs_error": 0.79}) == [
        "top-1 agreement at labelled positions 33.33%", "cosine 0.9817", "max abs error 0.79"]
    assert quality_measures({"top1_agreement": None, "cosine": None, "max_abs_error": 0.0}) == ["max abs error 0"]
