"""int8 ONNX (lenet.use.onnx_int8, `lenet export --int8`): a QDQ graph onnxruntime runs on raw
uint8 pixels, classifying as the integer reference does, for every layer kind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from int8_models import KINDS, random_images, trained
from lenet.cli import main
from lenet.use.onnx_int8 import check_onnx_int8, int8_onnx, onnx_int8_logits, write_int8_onnx
from lenet.use.export import read_metadata
from lenet.use.quantize import ptq


@pytest.mark.parametrize("activation, pool, batch_norm", KINDS)
def test_onnxruntime_classifies_as_the_reference_for_every_layer_kind(tmp_path, activation, pool, batch_norm):
    model = trained(tmp_path / "run", activation=activation, pool=pool, batch_norm=batch_norm, init="kaiming",
                    conv_channels=[4, 6], dense=[16], pool_size=3, pool_stride=2, pool_padding=1)
    int8, _ = ptq(model, random_images(100))
    path = write_int8_onnx(int8, tmp_path / "model-int8.onnx")
    images = random_images(500, seed=9).numpy()
    result = check_onnx_int8(path, int8, images, "random")
    assert result.agree >= 499
    # Its logits are the reference's scores in real units, apart from a rare step of rounding.
    logits = onnx_int8_logits(path, images)
    reference = int8.scores(torch.from_numpy(images)).numpy() * int8.score_scale
    spread = float(np.mean(reference.max(1) - reference.min(1)))
    assert np.median(np.abs(logits - reference)) <= 1e-4 * spread
    assert np.abs(logits - reference).max() <= 0.05 * spread


def test_other_channel_counts_sizes_and_classes(tmp_path):
    model = trained(tmp_path / "run", in_channels=2, input_size=24, num_classes=3, conv_channels=[4, 4, 4],
                    kernel_size=3, padding="same", activation="tanh", pool="max", dense=[8])
    int8, _ = ptq(model, random_images(100, (2, 24, 24)))
    path = write_int8_onnx(int8, tmp_path / "m.onnx")
    assert check_onnx_int8(path, int8, random_images(200, (2, 24, 24), seed=1).numpy(), "random").agree >= 199


def test_the_graph_takes_raw_pixels_in_any_batch_and_says_what_it_is(tmp_path):
    model = trained(tmp_path / "run", activation="relu", pool="max", batch_norm=True)
    int8, _ = ptq(model, random_images(100))
    int8.info.update({"dataset": "fashion-mnist", "class_names": [f"c{i}" for i in range(10)], "int8_accuracy": 0.5})
    path = write_int8_onnx(int8, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MaxPool"} <= ops
    meta = read_metadata(path)
    assert meta["format"] == "lenet-onnx-int8/1" and meta["class_names"][3] == "c3"
    assert meta["input_shape"] == ["batch", 1, 28, 28] and meta["int8_accuracy"] == 0.5
    images = random_images(64, seed=4).numpy()
    whole = onnx_int8_logits(path, images)
    for batch in (1, 3):
        np.testing.assert_array_equal(onnx_int8_logits(path, images[:batch]), whole[:batch])


def test_cli_export_int8_onnx_and_its_errors(tmp_path, capsys, tiny_data_dir):
    trained(tmp_path / "run", activation="gelu", pool="avg")
    code = main(["export", str(tmp_path / "run"), "--int8", "--data-dir", str(tiny_data_dir)])
    out = capsys.readouterr().out
    assert code == 0 and f"wrote {tmp_path / 'run' / 'model-int8.onnx'}" in out
    assert "int8 QDQ" in out and "same class on" in out and "/200" in out
    code = main(["export", str(tmp_path / "run"), "--int8", "--opset", "12", "--data-dir", str(tiny_data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "opset 13 or later" in err and err.count("\n") == 1
    with pytest.raises(Exception, match="opset 13"):
        int8_onnx(ptq(trained(tmp_path / "other"), random_images(10))[0], opset=11)
