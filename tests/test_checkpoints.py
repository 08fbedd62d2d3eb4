"""Student files, the OSEDiff converter and the allow-listed unpickler."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ctsr_infer
from ctsr_infer.families.sd_onestep.convert import OSEDIFF_LORA_ALPHA, convert_osediff
from ctsr_infer.student_file import load_student, save_student
from ctsr_infer.safe_pickle import read_pickled_checkpoint
from ctsr_infer.errors import IncompatibleWeightsError, UnsafeCheckpointError, WeightsNotFoundError
from tiny import prompt_embeds


def test_converter_preserves_every_tensor_and_the_peft_scale(osediff_pkl: Path) -> None:
    raw = torch.load(osediff_pkl, weights_only=True)
    student = convert_osediff(osediff_pkl, prompt_embeds=prompt_embeds(), base={"path": "x"})
    names = {"default_encoder": "unet_encoder", "default_decoder": "unet_decoder", "default_others": "unet_others"}
    count = 0
    for key, tensor in raw["state_dict_unet"].items():
        if ".lora_" in key:
            module, rest = key.split(".lora_")
            which, adapter, _ = rest.split(".")
            ours = student.tensors[f"lora.{names[adapter]}.unet.{module}.{which}"]
        else:
            ours = student.tensors[f"base.unet.{key.replace('.base_layer', '')}"]
        assert torch.equal(ours, tensor)
        count += 1
    for key, tensor in raw["state_dict_vae"].items():
        module, rest = key.split(".lora_")
        which = rest.split(".")[0]
        assert torch.equal(student.tensors[f"lora.vae_encoder.vae.{module}.{which}"], tensor)
        count += 1
    assert count + 1 == len(student.tensors)  # + prompt_embeds
    for adapter in student.meta.adapters:
        assert adapter.rank == raw["rank_unet"] == 4
        assert adapter.scale == OSEDIFF_LORA_ALPHA / 4 == 2.0
    assert {a.name for a in student.meta.adapters} == {"unet_encoder", "unet_decoder", "unet_others", "vae_encoder"}


def test_student_file_round_trip(tmp_path: Path, osediff_pkl: Path) -> None:
    student = convert_osediff(osediff_pkl, prompt_embeds=prompt_embeds(), base={"repo_id": "a/b", "revision": "c"})
    path = save_student(student, tmp_path / "s.safetensors")
    again = load_student(path)
    assert again.meta == student.meta
    assert again.tensors.keys() == student.tensors.keys()
    assert all(torch.equal(again.tensors[k], v) for k, v in student.tensors.items())
    assert not list(tmp_path.glob(".*tmp*"))


class _RunsCode:
    marker = "ctsr-pwned"

    def __reduce__(self):  # what a malicious checkpoint does: call os.system on load
        return (os.system, (f"echo pwned > {self.marker}",))


def test_unpickler_refuses_a_pickle_that_would_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_RunsCode, "marker", str(tmp_path / "ctsr-pwned"))
    path = tmp_path / "evil.pkl"
    torch.save({"rank_unet": 4, "payload": _RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_pickled_checkpoint(path)
    assert not (tmp_path / "ctsr-pwned").exists()
    plain = tmp_path / "plain.pkl"
    with plain.open("wb") as handle:
        pickle.dump({"x": _RunsCode()}, handle)
    with pytest.raises(UnsafeCheckpointError):
        read_pickled_checkpoint(plain)


def test_unpickler_accepts_tensors_and_containers(tmp_path: Path) -> None:
    path = tmp_path / "ok.pth"
    torch.save({"a": torch.ones(2), "b": [1, 2.5, "s", None], "c": (torch.zeros(1),)}, path)
    data = read_pickled_checkpoint(path)
    assert torch.equal(data["a"], torch.ones(2)) and data["b"] == [1, 2.5, "s", None]


def test_truncated_and_foreign_files_fail_clearly(tmp_path: Path, student_path: Path) -> None:
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(student_path.read_bytes()[:200])
    with pytest.raises(IncompatibleWeightsError, match="not a readable safetensors"):
        load_student(truncated)
    foreign = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(IncompatibleWeightsError, match="no `ctsr.meta`"):
        load_student(foreign)
    with pytest.raises(WeightsNotFoundError):
        load_student(tmp_path / "missing.safetensors")
    garbage = tmp_path / "g.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises((IncompatibleWeightsError, UnsafeCheckpointError)):
        read_pickled_checkpoint(garbage)


def test_malformed_metadata_and_stray_tensors(tmp_path: Path) -> None:
    bad_meta = tmp_path / "m.safetensors"
    save_file({"prompt_embeds": torch.zeros(1, 77, 32)}, str(bad_meta), metadata={"ctsr.meta": json.dumps({"no_family": 1})})
    with pytest.raises(IncompatibleWeightsError, match="malformed"):
        load_student(bad_meta)
    stray = tmp_path / "s.safetensors"
    meta = json.dumps({"family": "sd-onestep", "adapters": []})
    save_file({"lora.ghost.unet.conv_in.A": torch.zeros(2, 4, 3, 3), "lora.ghost.unet.conv_in.B": torch.zeros(8, 2, 1, 1)}, str(stray), metadata={"ctsr.meta": meta})
    with pytest.raises(IncompatibleWeightsError, match="ghost"):
        load_student(stray)


def test_lora_that_does_not_fit_names_the_key_and_the_expected_base(tmp_path: Path, student_path: Path, base_dir: Path) -> None:
    student = load_student(student_path)
    key = next(k for k in student.tensors if k.startswith("lora.unet_decoder.unet.up_blocks") and k.endswith(".A"))
    student.tensors[key.replace("up_blocks", "nowhere_blocks")] = student.tensors.pop(key)
    student.tensors[key.replace("up_blocks", "nowhere_blocks")[:-1] + "B"] = student.tensors.pop(key[:-1] + "B")
    path = save_student(student, tmp_path / "bad.safetensors")
    with pytest.raises(IncompatibleWeightsError, match=r"nowhere_blocks.*SD 2.1-base.*cross-attention"):
        ctsr_infer.load(path, device="cpu", dtype="fp32")
    # a LoRA of the wrong width
    student = load_student(student_path)
    a_key = next(k for k in student.tensors if k.startswith("lora.unet_others.") and k.endswith(".A"))
    a = student.tensors[a_key]
    student.tensors[a_key] = torch.zeros((a.shape[0], a.shape[1] + 1, *a.shape[2:]))
    path = save_student(student, tmp_path / "bad2.safetensors")
    with pytest.raises(IncompatibleWeightsError, match=a_key[:-2].replace(".", r"\.")):
        ctsr_infer.load(path, device="cpu", dtype="fp32")
