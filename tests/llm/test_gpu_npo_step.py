"""benchmarks/gpu_npo_step.py, the one-GPU check, runs end to end on CPU at a tiny shape; its 2B shape is checked on
the meta device (no memory). It has not been run on a GPU yet (docs/llm.md, "The GPU check")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.llm
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_npo_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_npo_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_2b_shape_is_qwen3_vl_2b():
    from npo_lab.llm.model import build_tiny_tokenizer
    from transformers import Qwen3VLForConditionalGeneration

    mod = load_script()
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(mod.model_config("2b", build_tiny_tokenizer()))
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    assert (total, vision) == (2_127_532_032, 406_957_056)  # 2.13 B, tied embeddings counted once
    assert model.config.get_text_config().vocab_size == 151936


def test_the_gpu_check_runs_on_cpu_at_a_tiny_shape(tmp_path):
    mod = load_script()
    out = tmp_path / "result.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--batch", "8", "--group", "4", "--completion", "4", "--steps", "1"]
    argv += ["--micro-batch", "4", "--image-size", "64", "--delta", "1", "--scratch", str(tmp_path), "--out", str(out)]
    r = mod.main(argv)
    assert json.loads(out.read_text())["settings"] == r["settings"]
    grpo, npo = r["npo_lab"]["grpo"], r["npo_lab"]["npo"]
    assert grpo["generated_tokens"] == 8 * 4 and grpo["median_step_s"] > 0  # every completion forced to full length
    assert grpo["generation_tokens_per_s"] > 0 and grpo["peak_gib"] is None  # no CUDA memory on CPU
    assert npo["delta"] == 1 and 0 < npo["lookahead_s"] < npo["intervention_s"]
    assert npo["guide_rows"] > 0 and "time/guide" in npo["phases_s"]  # the cached answers of pi_t+Delta were merged
    assert r["skipped"]["vllm"]  # no GPU here (and usually no vLLM)
    if importlib.util.find_spec("trl") is None:
        assert r["skipped"]["trl"].startswith("trl is not installed")
    else:  # the [bench] extra: TRL ran at the same settings
        assert r["trl"]["mean_completion_tokens"] == 4 and r["trl"]["median_step_s"] > 0
    assert "| npo_lab GRPO step |" in mod.report(r)
