"""`t5pipe convert` against transformers: import, export, round trips and bad input.

Reference models are random-weight `transformers.T5ForConditionalGeneration`s
saved with `save_pretrained`; the converted checkpoint must give HF's logits, and
transformers must load the exported folder (model and tokenizer).
"""

import json
import os
import shutil
import subprocess
import sys

import gin
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_testlib import T5_1_0, T5_1_1, batch, hf_logits, hf_model, hf_state, relative_error
from safetensors import safe_open
from safetensors.numpy import save_file
from testlib import REPO_ROOT, tiny_config

from t5pipe import checkpoint_format, cli
from t5pipe.hf import t5 as hf_mapping
from t5pipe.hf import tensor_io, tokenizers
from t5pipe.model import T5, shift_right

# T5's real vocabulary (32000 pieces + 100 extra ids) needs 32128 embedding rows.
VOCAB_ROWS = 32128
FAMILIES = {"t5_1_0": T5_1_0, "t5_1_1": T5_1_1}


def family_config(family):
    return tiny_config(vocab_size=VOCAB_ROWS, **FAMILIES[family])


def save_hf_folder(hf, path, spm_path, **save_kwargs):
    hf.save_pretrained(path, **save_kwargs)
    shutil.copy(spm_path, path / "spiece.model")
    return path


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, spm_path):
    """{family: (HF model, folder with model.safetensors + spiece.model)}."""
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for family in FAMILIES:
        hf = hf_model(family_config(family))
        folders[family] = hf, save_hf_folder(hf, root / family, spm_path)
    return folders


def run_convert(*args):
    return cli.main(["convert", *map(str, args)])


def assert_checkpoint_matches_hf(ckpt, hf):
    """The checkpoint's params, run by t5pipe, give HF's logits on a padded batch."""
    config = checkpoint_format.load_model_config(ckpt)
    params = checkpoint_format.load_params(ckpt)
    enc, targets, enc_mask, dec_mask = batch(config.vocab_size)
    dec_in = np.asarray(shift_right(jnp.asarray(targets)))
    ours = T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in))
    assert relative_error(ours, hf_logits(hf, enc, enc_mask, dec_in), dec_mask) <= 1e-5


def safetensors_state(path):
    with safe_open(str(path), framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_matches_transformers_and_export_round_trips_bit_exact(
    family, hf_folders, tmp_path, capsys
):
    hf, folder = hf_folders[family]
    ckpt, exported = tmp_path / "ckpt", tmp_path / "exported"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(ckpt)

    config = checkpoint_format.load_model_config(ckpt)
    assert config == family_config(family).replace(dropout_rate=0.0)
    vocab = checkpoint_format.load_vocabulary(ckpt)
    assert vocab.vocab_size == 32100 and vocab.encode("Hello world") == [8774, 296]
    assert_checkpoint_matches_hf(ckpt, hf)

    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(exported)
    original = safetensors_state(folder / "model.safetensors")
    back = safetensors_state(exported / "model.safetensors")
    # Only the output layer of the untied T5.1.1 is a tensor of its own.
    assert ("lm_head.weight" in back) == (family == "t5_1_1")
    assert set(back) <= set(original)
    for name, array in back.items():
        assert array.dtype == original[name].dtype and np.array_equal(array, original[name]), name

    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(exported).eval()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    enc, targets, enc_mask, _ = batch(config.vocab_size, seed=5)
    dec_in = np.asarray(shift_right(jnp.asarray(targets)))
    np.testing.assert_array_equal(
        hf_logits(reloaded, enc, enc_mask, dec_in), hf_logits(hf, enc, enc_mask, dec_in)
    )

    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert tokenizer("Hello world").input_ids == [8774, 296, 1]
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == 32099
    assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == 32000


def test_sharded_safetensors_are_read_one_shard_at_a_time(
    hf_folders, tmp_path, spm_path, monkeypatch
):
    hf, _ = hf_folders["t5_1_1"]
    folder = save_hf_folder(hf, tmp_path / "sharded", spm_path, max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 3 and (folder / "model.safetensors.index.json").is_file()

    opened, open_now, most_open = [], [0], [0]
    real_reader = tensor_io.read_safetensors

    def counting_reader(path):
        """The reader holds its file open from first tensor to last."""
        opened.append(path.name)
        open_now[0] += 1
        most_open[0] = max(most_open[0], open_now[0])
        yield from real_reader(path)
        open_now[0] -= 1

    monkeypatch.setattr(tensor_io, "read_safetensors", counting_reader)
    ckpt = tmp_path / "ckpt"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    assert sorted(opened) == [s.name for s in shards] and most_open[0] == 1
    assert_checkpoint_matches_hf(ckpt, hf)


def test_pytorch_bin_with_legacy_tensor_imports(hf_folders, tmp_path, spm_path):
    """pytorch_model.bin as older transformers wrote it: a torch.save'd state dict,
    tied copies included, plus the unused cross-attention bias of the original t5-small."""
    hf, _ = hf_folders["t5_1_0"]
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(hf.config.to_json_string())
    shutil.copy(spm_path, folder / "spiece.model")
    state = dict(hf.state_dict())
    bias = state["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = bias.clone()
    torch.save(state, folder / "pytorch_model.bin")
    ckpt = tmp_path / "ckpt"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    assert_checkpoint_matches_hf(ckpt, hf)
    # Self-describing: the vocabulary survives the Hugging Face folder.
    shutil.rmtree(folder)
    vocab = checkpoint_format.load_vocabulary(ckpt)
    assert vocab.vocab_size == 32100 and vocab.encode("Hello <extra_id_0>") == [8774, 32099]


def test_scanned_import_and_export(hf_folders, tmp_path):
    hf, folder = hf_folders["t5_1_1"]
    ckpt, exported = tmp_path / "ckpt", tmp_path / "exported"
    assert run_convert("--from_hf", folder, "--out", ckpt, "--scan_layers", "--dtype=bfloat16") == 0
    config = checkpoint_format.load_model_config(ckpt)
    assert config.scan_layers and config.dtype == "bfloat16"
    params = checkpoint_format.load_params(ckpt)
    unscanned = config.replace(scan_layers=False)
    unscanned_params = hf_mapping.params_from_hf(hf_state(hf).items(), unscanned)
    expected = hf_mapping.scan_layout(unscanned_params, unscanned)
    assert set(params["encoder"]) == {"layers", "relpos_bias", "encoder_norm"}
    for (path, got), (_, want) in zip(
        jax_leaves_with_path(params), jax_leaves_with_path(expected), strict=True
    ):
        np.testing.assert_array_equal(got, want, err_msg=path)

    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported) == 0
    back = safetensors_state(exported / "model.safetensors")
    for name, tensor in hf.state_dict().items():
        if name in back:
            assert np.array_equal(back[name], tensor.numpy()), name


def jax_leaves_with_path(tree):
    import jax

    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def test_bfloat16_export_is_loaded_by_transformers(hf_folders, tmp_path):
    hf, folder = hf_folders["t5_1_0"]
    ckpt, exported = tmp_path / "ckpt", tmp_path / "exported"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported, "--dtype=bfloat16") == 0
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(exported)
    shared = reloaded.state_dict()["shared.weight"]
    assert shared.dtype == torch.bfloat16
    assert torch.equal(shared, hf.state_dict()["shared.weight"].to(torch.bfloat16))


def test_byte_vocabulary_round_trip(tmp_path):
    """ByT5: no spiece.model, a ByT5Tokenizer config; exported tokenizer matches seqio's bytes."""
    config = tiny_config(vocab_size=384)
    hf = hf_model(config)
    folder = tmp_path / "byt5"
    hf.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "ByT5Tokenizer", "extra_ids": 125})
    )
    ckpt, exported = tmp_path / "ckpt", tmp_path / "exported"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    vocab = checkpoint_format.load_vocabulary(ckpt)
    assert vocab.encode("Hëllo") == list(np.frombuffer("Hëllo".encode(), np.uint8) + 3)
    assert_checkpoint_matches_hf(ckpt, hf)

    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported) == 0
    assert not (exported / "spiece.model").exists()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert tokenizer("Hëllo").input_ids == [*vocab.encode("Hëllo"), 1]
    assert len(tokenizer) == config.vocab_size


def test_mt5_folder_imports(tmp_path, spm_path):
    """model_type mt5 (transformers >= 5 writes tie_word_embeddings: true for it even
    though mT5 has its own output layer), sentinels inside the model file (extra_ids 0)."""
    config = family_config("t5_1_1")
    hf_config = hf_mapping.t5config_to_hf(config)
    for key in ("model_type", "architectures", "scale_decoder_outputs"):
        hf_config.pop(key)
    torch.manual_seed(1)
    hf = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**hf_config)).eval()
    hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.05)
    folder = save_hf_folder(hf, tmp_path / "mt5", spm_path)
    (folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 0}))
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mt5"
    ckpt = tmp_path / "ckpt"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    assert not checkpoint_format.load_model_config(ckpt).tie_word_embeddings
    assert checkpoint_format.load_vocabulary(ckpt).vocab_size == 32000
    assert_checkpoint_matches_hf(ckpt, hf)


def test_vocabulary_detection(tmp_path, spm_path):
    """Extra ids: tokenizer_config.json wins; else 100 when they fit the embedding (T5),
    0 when the model file already fills it (mT5-style)."""
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(spm_path, folder / "spiece.model")
    t5 = tiny_config(vocab_size=VOCAB_ROWS)
    assert tokenizers.detect_vocabulary(folder, t5).extra_ids == 100
    assert tokenizers.detect_vocabulary(folder, tiny_config(vocab_size=32064)).extra_ids == 0
    (folder / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 0}))
    assert tokenizers.detect_vocabulary(folder, t5).extra_ids == 0
    assert tokenizers.detect_vocabulary(folder, t5, extra_ids=7).vocab_size == 32007
    assert tokenizers.detect_vocabulary(folder, t5, vocab="byte").vocab_size == 259
    with pytest.raises(tensor_io.ConversionError, match="only 128 rows"):
        tokenizers.detect_vocabulary(folder, tiny_config())
    (folder / "spiece.model").unlink()
    with pytest.raises(tensor_io.ConversionError, match="no spiece.model.*--vocab"):
        tokenizers.detect_vocabulary(folder, t5)


def test_clear_errors(hf_folders, tmp_path, capsys):
    hf, folder = hf_folders["t5_1_0"]

    def error_of(*args):
        assert run_convert(*args) == 2
        return capsys.readouterr().err

    assert "no such directory" in error_of("--from_hf", tmp_path / "nope", "--out", tmp_path / "c")
    assert "convert reads and writes local folders" in error_of(
        "--from_hf", tmp_path / "nope", "--out", "gs://bucket/ckpt"
    )

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "config.json", bare)
    shutil.copy(folder / "spiece.model", bare)
    assert "has no weights" in error_of("--from_hf", bare, "--out", tmp_path / "c")

    bert = tmp_path / "bert"
    shutil.copytree(folder, bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "model_type is 'bert'" in error_of("--from_hf", bert, "--out", tmp_path / "c")

    # A config that disagrees with the weights: the error names file, tensor and shapes.
    wide = tmp_path / "wide"
    shutil.copytree(folder, wide)
    (wide / "config.json").write_text(json.dumps({**config, "d_ff": 96}))
    err = error_of("--from_hf", wide, "--out", tmp_path / "c")
    assert "model.safetensors: tensor" in err and "DenseReluDense.w" in err
    assert "has shape" in err and "needs" in err

    # A tensor missing from the file: hf_mapping's list of missing names.
    state = safetensors_state(folder / "model.safetensors")
    del state["encoder.final_layer_norm.weight"]
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    save_file(state, partial / "model.safetensors", metadata={"format": "pt"})
    err = error_of("--from_hf", partial, "--out", tmp_path / "c")
    assert "missing tensors ['encoder.final_layer_norm.weight']" in err
    assert not (tmp_path / "c").exists()

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "model.safetensors: not a safetensors file" in error_of(
        "--from_hf", broken, "--out", tmp_path / "c"
    )
    assert not (tmp_path / "c").exists()
    # A header length of 2^40 (read as is: a MemoryError) is checked against the file size.
    (broken / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    err = error_of("--from_hf", broken, "--out", tmp_path / "c")
    assert "its header says it is 1099511627776 bytes long, but the file has 10 bytes" in err
    assert not (tmp_path / "c").exists()

    assert "not a t5pipe checkpoint" in error_of(
        "--to_hf", "--checkpoint", folder, "--out", tmp_path / "e"
    )


def test_gin_flags_set_runtime_fields_and_must_agree_on_shapes(hf_folders, tmp_path, capsys):
    _, folder = hf_folders["t5_1_1"]
    ckpt = tmp_path / "ckpt"
    try:
        assert (
            run_convert(
                "--from_hf",
                folder,
                "--out",
                ckpt,
                "--gin.T5Config.dtype='bfloat16'",
                "--gin.T5Config.remat_policy=full",
            )
            == 0
        )
        config = checkpoint_format.load_model_config(ckpt)
        assert (config.dtype, config.remat_policy, config.d_model) == ("bfloat16", "full", 32)

        gin.clear_config()
        assert (
            run_convert(
                "--from_hf",
                folder,
                "--out",
                tmp_path / "other",
                "--gin_file=models/t5_1_1/large.gin",
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "gin bindings contradict" in err
        assert "T5Config.d_model = 1024 (config.json: 32)" in err
    finally:
        gin.clear_config()


def test_existing_output_is_never_destroyed(hf_folders, tmp_path, capsys):
    _, folder = hf_folders["t5_1_0"]
    _, other = hf_folders["t5_1_1"]
    ckpt = tmp_path / "ckpt"
    assert run_convert("--from_hf", folder, "--out", ckpt) == 0
    assert run_convert("--from_hf", other, "--out", ckpt) == 2
    assert "already holds a checkpoint; pass --overwrite" in capsys.readouterr().err
    assert checkpoint_format.load_model_config(ckpt).feed_forward_proj == "relu"

    assert run_convert("--from_hf", other, "--out", ckpt, "--overwrite") == 0
    assert checkpoint_format.load_model_config(ckpt).feed_forward_proj == "gated-gelu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left over

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert run_convert("--from_hf", folder, "--out", notes, "--overwrite") == 2
    assert "not empty and not a t5pipe checkpoint" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine"

    exported = tmp_path / "exported"
    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported) == 0
    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported, "--overwrite") == 0
    (exported / "pytorch_model.bin").write_bytes(b"stale")
    assert run_convert("--to_hf", "--checkpoint", ckpt, "--out", exported, "--overwrite") == 2
    assert "pytorch_model.bin" in capsys.readouterr().err


def test_console_entry_runs_as_a_subprocess(hf_folders, tmp_path):
    _, folder = hf_folders["t5_1_1"]
    ckpt = tmp_path / "ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "t5pipe.cli", "convert", f"--from_hf={folder}", f"--out={ckpt}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(ckpt)
    assert "reading model.safetensors (1/1)" in done.stderr
    assert checkpoint_format.is_checkpoint(ckpt)
