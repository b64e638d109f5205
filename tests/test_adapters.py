"""LoRA adapters on the command line and in `t5pipe.api`, against Hugging Face PEFT:
`convert --to_hf --adapter_only` / merged `--to_hf` / `--from_hf_adapter`, several
`infer --adapter`s on one base, `LoadedModel.with_adapter`; bad adapters exit 2."""

import copy
import json

import hf_testlib
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import seqio
import torch
from lora_testlib import lora_init, randomize_b
from safetensors.numpy import load_file
from testlib import INPUTS, command_error, hf_greedy_texts, tiny_config

from t5pipe import api, cli, lora
from t5pipe.checkpoint_format import load_params, save_checkpoint
from t5pipe.hf import peft as hf_peft
from t5pipe.hf.convert import import_hf
from t5pipe.model import T5, init_params

CONFIG = tiny_config(vocab_size=384)  # the byte vocabulary
DECODE = 10


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A Hugging Face base imported as a t5pipe checkpoint; a LoRA run's checkpoint on it
    (base + adapters, meta "lora", as `t5pipe train` writes); a PEFT-made adapter."""
    root = tmp_path_factory.mktemp("adapters")
    hf = hf_testlib.hf_model(CONFIG)
    with torch.no_grad():  # confident outputs: greedy decodes are not near-ties
        hf.lm_head.weight.mul_(20.0)
    hf.save_pretrained(root / "hf")
    base = import_hf(root / "hf", root / "base", vocab="byte")
    params = load_params(base)

    ours = lora.LoraConfig(rank=4, alpha=8.0, targets=r"(^|/)(query|value|wo)$")
    _, adapter = lora.split_adapter(lora_init(CONFIG, ours))
    adapter = randomize_b(adapter, scale=0.2)
    state = {"params": lora.insert_adapter(params, adapter), "step": np.int32(5)}
    save_checkpoint(root / "lora_run", state, CONFIG, seqio.ByteVocabulary(), lora=ours.to_dict())

    theirs = peft.get_peft_model(
        copy.deepcopy(hf),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["k", "o", "wi_1"]),
    )
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    theirs.save_pretrained(str(root / "peft"))
    return {
        "root": root, "hf": hf, "base": base, "params": params, "adapter": adapter,
        "lora_config": ours, "lora_run": root / "lora_run", "peft": root / "peft",
        "peft_model": theirs.eval(),
    }  # fmt: skip


def our_logits(params, lora_config=None):
    enc, mask, dec = _batch()

    def run(params):
        return T5(CONFIG).apply({"params": params}, jnp.asarray(enc * mask), jnp.asarray(dec))

    fn = run if lora_config is None else lora.with_lora(run, lora_config)
    return np.asarray(jax.jit(fn)(params))


def _batch():
    rng = np.random.default_rng(0)
    mask = np.arange(9)[None] < np.array([9, 5, 7])[:, None]
    enc = rng.integers(3, CONFIG.vocab_size, mask.shape)
    dec = rng.integers(3, CONFIG.vocab_size, (3, 6))
    dec[:, 0] = 0
    return enc * mask, mask, dec


def convert(*flags):
    return cli.main(["convert", *map(str, flags)])


def test_convert_adapters_to_and_from_peft(folders):
    root, hf = folders["root"], folders["hf"]
    # --adapter_only: a folder PEFT loads onto the Hugging Face base, with our logits.
    assert convert("--to_hf", "--adapter_only", "--checkpoint", folders["lora_run"],
                   "--out", root / "exported") == 0  # fmt: skip
    assert sorted(p.name for p in (root / "exported").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(hf), str(root / "exported")).eval()
    enc, mask, dec = _batch()
    theirs = hf_testlib.hf_logits(loaded, enc, mask, dec)
    with_adapter = lora.insert_adapter(folders["params"], folders["adapter"])
    ours = our_logits(with_adapter, folders["lora_config"])
    assert np.abs(ours - our_logits(folders["params"])).max() > 0.5  # the adapter matters
    # Within 1e-5 of the largest logit (the sharpened output layer makes them up to ~10;
    # tests/test_hf_peft.py holds the absolute 1e-5 on logits of order 1).
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()

    # Plain --to_hf of the LoRA checkpoint: the adapters merged, as merge_and_unload().
    assert convert("--to_hf", "--checkpoint", folders["lora_run"], "--out", root / "merged") == 0
    exported = load_file(str(root / "merged" / "model.safetensors"))
    reference = {k: v.detach().numpy() for k, v in loaded.merge_and_unload().state_dict().items()}
    worst = max(float(np.abs(exported[k] - reference[k]).max()) for k in exported)
    identical = sum(np.array_equal(exported[k], reference[k]) for k in exported)
    # Float32 sums of r products in another order (XLA vs torch): within 1e-6, not bits.
    assert worst <= 1e-6, worst
    assert identical >= len(exported) - 3 * 2 * 2  # at most the adapted kernels differ
    assert np.abs(exported["encoder.block.0.layer.0.SelfAttention.q.weight"]
                  - hf.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"].numpy()
                  ).max() > 1e-3  # fmt: skip

    # --from_hf_adapter: the PEFT folder as a t5pipe adapter folder for the base.
    assert convert("--from_hf_adapter", folders["peft"], "--checkpoint", folders["base"],
                   "--out", root / "imported") == 0  # fmt: skip
    imported, config = lora.load_adapter(root / "imported")
    expected, expected_config = hf_peft.load_peft_adapter(folders["peft"], CONFIG)
    assert config == expected_config and (config.rank, config.alpha) == (2, 4.0)
    flat = lora.flat_adapter(expected)
    assert lora.flat_adapter(imported).keys() == flat.keys() and len(flat) == 2 * (
        6 + 6 + 4
    )  # k, o of 6 attentions, wi_1 of 4 MLPs
    for name, value in lora.flat_adapter(imported).items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)
    # Files are replaced only with --overwrite.
    assert convert("--from_hf_adapter", folders["peft"], "--checkpoint", folders["base"],
                   "--out", root / "imported") == 2  # fmt: skip


def test_several_adapters_on_one_base_in_infer_and_api(folders, tmp_path, capsys):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(INPUTS) + "\n")
    out = tmp_path / "out.jsonl"
    ours, theirs = str(folders["lora_run"]), str(folders["peft"])
    argv = [
        "infer", "--checkpoint", str(folders["base"]), "--input_file", str(inputs),
        "--output_file", str(out), "--adapter", ours, "--adapter", theirs,
        f"--gin.DecodingOptions.max_decode_length={DECODE}",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    assert "decoded 4 inputs (2 adapters, one line each)" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["adapter"] for r in rows] == [ours, theirs] * len(INPUTS)
    assert [r["inputs"] for r in rows] == [text for text in INPUTS for _ in range(2)]
    by_adapter = {
        name: [r["prediction"] for r in rows if r["adapter"] == name] for name in (ours, theirs)
    }
    # Each adapter's own outputs: PEFT's greedy decodes with that adapter applied.
    peft_ours = peft.PeftModel.from_pretrained(
        copy.deepcopy(folders["hf"]), str(_peft_export(folders))
    ).eval()
    assert by_adapter[ours] == hf_greedy_texts(peft_ours, INPUTS, DECODE)
    assert by_adapter[theirs] == hf_greedy_texts(folders["peft_model"], INPUTS, DECODE)
    base_texts = hf_greedy_texts(folders["hf"], INPUTS, DECODE)
    assert by_adapter[ours] != base_texts and by_adapter[theirs] != base_texts

    # The API: several adapters onto one loaded base; the base stays as it was.
    model = api.load(folders["base"], batch_size=4)
    tuned = {name: model.with_adapter(name) for name in (ours, theirs)}
    for name, adapted in tuned.items():
        assert adapted.adapter == name
        assert adapted.predict(INPUTS, max_decode_length=DECODE) == by_adapter[name]
    assert model.predict(INPUTS, max_decode_length=DECODE) == base_texts
    targets = ["Hallo.", "nothing", "a summary", "x"]
    np.testing.assert_allclose(
        tuned[theirs].score(INPUTS, targets),
        hf_testlib.hf_log_likelihood(folders["peft_model"], INPUTS, targets),
        atol=1e-4,
    )
    # A LoRA run's checkpoint loads with its adapters merged.
    run_model = api.load(folders["lora_run"], batch_size=4)
    assert run_model.predict(INPUTS, max_decode_length=DECODE) == by_adapter[ours]


def _peft_export(folders):
    folder = folders["root"] / "exported_for_infer"
    if not folder.exists():
        hf_peft.export_adapter(folders["lora_run"], folder)
    return folder


def test_bad_adapters_exit_2_naming_the_file(folders, tmp_path, capsys):
    base, root = str(folders["base"]), folders["root"]
    other = CONFIG.replace(d_model=48)
    with lora.attach(folders["lora_config"]):
        _, wrong = lora.split_adapter(init_params(other, jax.random.PRNGKey(0)))
    lora.save_adapter(tmp_path / "wrong", wrong, folders["lora_config"])
    (tmp_path / "inputs.txt").write_text("hello\n")
    infer = ("--checkpoint", base, "--input_file", str(tmp_path / "inputs.txt"))

    def error(command, *flags):
        return command_error(command, root, *flags, capsys=capsys)

    message = error("infer", *infer, "--adapter", str(tmp_path / "wrong"))
    assert str(tmp_path / "wrong" / "adapter.safetensors") in message
    assert "do not fit the kernel" in message and "d_model=32" in message
    message = error("infer", *infer, "--adapter", str(root / "hf"))
    assert f"adapter {root / 'hf'} is not an adapter" in message and "config.json" in message
    message = error("infer", *infer, "--adapter", str(tmp_path / "missing"))
    assert "no such folder" in message
    # A PEFT adapter onto a base of another shape.
    other_base = tmp_path / "other_base"
    save_checkpoint(
        other_base,
        {"params": init_params(CONFIG.replace(d_ff=48), jax.random.PRNGKey(0))},
        CONFIG.replace(d_ff=48),
        seqio.ByteVocabulary(),
    )
    message = error("convert", "--from_hf_adapter", str(folders["peft"]),
                    "--checkpoint", str(other_base), "--out", str(tmp_path / "x"))  # fmt: skip
    assert str(folders["peft"]) in message and "do not fit the kernel" in message
    message = error("convert", "--from_hf_adapter", base, "--checkpoint", base,
                    "--out", str(tmp_path / "x"))  # fmt: skip
    assert "is not a Hugging Face PEFT folder: no adapter_config.json" in message
    message = error("convert", "--to_hf", "--adapter_only", "--checkpoint", base,
                    "--out", str(tmp_path / "x"))  # fmt: skip
    assert f"checkpoint {folders['base']} holds no LoRA adapters" in message
    assert not (tmp_path / "x").exists()
