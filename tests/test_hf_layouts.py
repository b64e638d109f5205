"""The output-layer layouts of Hugging Face T5 folders, old and new transformers.

- hub T5.1.1: `tie_word_embeddings: false`, no `scale_decoder_outputs`, lm_head.weight;
- transformers >= 5.24 (and this 5.23), a T5.1.1 made from scratch: `tie_word_embeddings:
  true`, `scale_decoder_outputs: false`, shared.weight only (the output layer is the
  embedding, unscaled);
- the same, fine-tuned from the hub: both tensors, with different values, config tied;
- T5 1.0: tied and scaled, shared.weight only.

Each imports to transformers' logits, and the export round trips bit-identically (the
exported folder loads in transformers to the same logits; re-imported, the same bits).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from hf_testlib import T5_1_0, T5_1_1, batch, hf_logits, hf_model, relative_error
from safetensors import safe_open
from testlib import tiny_config

from t5pipe import checkpoint_format, cli
from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import T5, shift_right

BYTE_VOCAB = dict(vocab_size=384)


def _folder(path, hf, config_changes=None):
    hf.save_pretrained(path)
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "ByT5Tokenizer", "extra_ids": 125})
    )
    if config_changes is not None:
        config = json.loads((path / "config.json").read_text())
        config.update(config_changes)
        config = {k: v for k, v in config.items() if v is not None}
        (path / "config.json").write_text(json.dumps(config))
    return path


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{layout: folder} as described in the module docstring."""
    root = tmp_path_factory.mktemp("layouts")
    untied = hf_model(tiny_config(**BYTE_VOCAB, **T5_1_1))  # lm_head of its own
    from_scratch = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(tiny_config(**BYTE_VOCAB, **T5_1_1)))
    ).eval()  # tied at construction, unscaled
    return {
        "hub_t5_1_1": _folder(
            root / "hub", untied, {"tie_word_embeddings": False, "scale_decoder_outputs": None}
        ),
        "tied_unscaled": _folder(root / "scratch", from_scratch),
        "fine_tuned_tied_config": _folder(root / "fine_tuned", untied),
        "t5_1_0": _folder(root / "t5_1_0", hf_model(tiny_config(**BYTE_VOCAB, **T5_1_0))),
    }


def test_the_fixtures_are_the_layouts_they_stand_for(layouts):
    def described(layout):
        config = json.loads((layouts[layout] / "config.json").read_text())
        tensors = _tensors(layouts[layout])
        separate = "lm_head.weight" in tensors and not np.array_equal(
            tensors["lm_head.weight"], tensors["shared.weight"]
        )
        return config["tie_word_embeddings"], config.get("scale_decoder_outputs"), separate

    assert described("hub_t5_1_1") == (False, None, True)
    assert described("tied_unscaled") == (True, False, False)
    assert "lm_head.weight" not in _tensors(layouts["tied_unscaled"])
    assert described("fine_tuned_tied_config") == (True, False, True)
    assert described("t5_1_0") == (True, True, False)


@pytest.mark.parametrize(
    "layout", ["hub_t5_1_1", "tied_unscaled", "fine_tuned_tied_config", "t5_1_0"]
)
def test_import_gives_transformers_logits_and_round_trips_bit_identical(layouts, layout, tmp_path):
    folder = layouts[layout]
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    ckpt, exported, again = tmp_path / "ckpt", tmp_path / "exported", tmp_path / "again"
    assert cli.main(["convert", "--from_hf", str(folder), "--out", str(ckpt)]) == 0
    config = checkpoint_format.load_model_config(ckpt)
    assert config.tie_word_embeddings == (layout == "t5_1_0")  # scaled and shared: T5 1.0
    params = checkpoint_format.load_params(ckpt)
    enc, targets, enc_mask, dec_mask = batch(config.vocab_size)
    dec_in = np.asarray(shift_right(jnp.asarray(targets)))
    ours = T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec_in))
    assert relative_error(ours, hf_logits(hf, enc, enc_mask, dec_in), dec_mask) <= 1e-5

    assert cli.main(["convert", "--to_hf", "--checkpoint", str(ckpt), "--out", str(exported)]) == 0
    original, back = _tensors(folder), _tensors(exported)
    if "lm_head.weight" not in original and "lm_head.weight" in back:
        # Tied and unscaled: the export writes the output layer out (the embedding's bits).
        original["lm_head.weight"] = original["shared.weight"]
    assert set(back) == set(original) - set(hf_mapping._IGNORED_HF_NAMES)
    for name, array in back.items():
        assert np.array_equal(array, original[name]), name
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(exported).eval()
    np.testing.assert_array_equal(
        hf_logits(reloaded, enc, enc_mask, dec_in), hf_logits(hf, enc, enc_mask, dec_in)
    )
    assert cli.main(["convert", "--from_hf", str(exported), "--out", str(again)]) == 0
    jax.tree.map(np.testing.assert_array_equal, checkpoint_format.load_params(again), params)


def test_scaled_config_with_a_separate_output_layer_is_refused(layouts, tmp_path, capsys):
    """Tied, no `scale_decoder_outputs` (transformers reads: scaled), yet lm_head.weight
    differs: t5pipe cannot run that model, and says how the config may be meant."""
    folder = _folder(
        tmp_path / "scaled_separate",
        transformers.T5ForConditionalGeneration.from_pretrained(layouts["hub_t5_1_1"]),
        {"tie_word_embeddings": True, "scale_decoder_outputs": None},
    )
    assert cli.main(["convert", "--from_hf", str(folder), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "lm_head.weight differs from shared.weight, but the config scales" in err
    assert not (tmp_path / "c").exists()
