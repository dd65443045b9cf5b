"""Teacher -> ONNX: onnxruntime gives PyTorch's logits."""
import onnx
import pytest
import torch

from export.to_onnx import ATOL, compare, export_onnx, main
from train.checkpoint import save_checkpoint
from train.models import ResNet19, SmallCNN


def test_cli_exports_small_cnn_on_real_images(tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "teacher.pt", SmallCNN(), "teacher", dataset="mnist5k")
    main(["--run", str(tmp_path), "--samples", "64"])
    text = capsys.readouterr().out
    assert "on 64 test images" in text and "PASS" in text
    model = onnx.load(str(tmp_path / "teacher.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_resnet19_parity_with_any_batch(tmp_path):
    torch.manual_seed(1)
    model = ResNet19(widths=(8, 16, 32), blocks=(1, 1, 1)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    export_onnx(model, (3, 32, 32), tmp_path / "r.onnx")
    batches = [torch.rand(3, 3, 32, 32), torch.rand(5, 3, 32, 32)]
    report = compare(tmp_path / "r.onnx", model, batches)
    assert report["ok"] and report["samples"] == 8 and report["max_abs_diff"] < ATOL


def test_missing_teacher(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path)])
    msg = str(e.value)
    assert e.value.code == 2  # bad input
    assert str(tmp_path / "teacher.pt") in msg and "not found" in msg and "\n" not in msg


def test_mismatch_writes_nothing(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "teacher.pt", SmallCNN(), "teacher", dataset="mnist5k")
    monkeypatch.setattr("export.to_onnx.compare",
                        lambda path, model, batches: {"max_abs_diff": 1.0, "ok": False,
                                                      "samples": 1})
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path), "--samples", "1"])
    assert e.value.code == 1  # the check failed
    assert "FAIL" in str(e.value) and not (tmp_path / "teacher.onnx").exists()
