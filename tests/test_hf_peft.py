"""LoRA adapters against Hugging Face PEFT (independent reference), float32, both ways."""

import json

import hf_testlib
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from testlib import tiny_config

from t5pipe import lora
from t5pipe.errors import UserInputError
from t5pipe.hf import peft as hf_peft
from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import T5, init_params

CONFIG = tiny_config()  # T5.1.1 shapes: gated MLP (wi_0, wi_1), untied output layer
ENC_LENGTHS, DEC_LEN = [11, 6, 9], 7
# Random B that changes the logits by O(1) yet keeps float32 error small: with B ~ N(0, 0.5)
# on every layer, PEFT's own merged and unmerged models already differ by 1.6e-4.
B_STDDEV = 0.2


def hf_base(seed=0):
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_mapping.t5config_to_hf(CONFIG))
    )
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    return model.eval()


def base_params(model):
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return hf_mapping.params_from_hf(state.items(), CONFIG)


def batch():
    rng = np.random.default_rng(0)
    mask = np.arange(max(ENC_LENGTHS))[None] < np.array(ENC_LENGTHS)[:, None]
    enc = rng.integers(2, CONFIG.vocab_size, mask.shape) * mask
    dec = rng.integers(2, CONFIG.vocab_size, (len(ENC_LENGTHS), DEC_LEN))
    dec[:, 0] = 0
    return enc, dec, mask


def hf_logits(model):
    enc, dec, mask = batch()
    return hf_testlib.hf_logits(model, enc, mask, dec)


def our_logits(params, lora_config=None, config=CONFIG):
    enc, dec, _ = batch()

    def run(params):
        return T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))

    return np.asarray(
        jax.jit(run if lora_config is None else lora.with_lora(run, lora_config))(params)
    )


def assert_close_logits(ours, theirs):
    assert np.abs(theirs).max() > 0.5  # logits of order 1, so the bound below is meaningful
    assert np.abs(ours - theirs).max() <= 1e-5


def test_our_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    model = hf_base()
    params = base_params(model)
    # Not a set of whole leaf names (query/value in encoder layer 0 only): a regex for PEFT.
    lora_config = lora.LoraConfig(
        rank=4,
        alpha=8.0,
        dropout=0.1,
        targets=r"(encoder/layers_0/attention/(query|value)|/(out|wi_0|wo))$",
    )
    with lora.attach(lora_config):
        _, adapter = lora.split_adapter(init_params(CONFIG, jax.random.PRNGKey(0)))
    flat = lora.flat_adapter(adapter)
    keys = jax.random.split(jax.random.PRNGKey(1), len(flat))
    adapter = lora.unflatten(
        {
            p: jax.random.normal(k, v.shape) * B_STDDEV if p.endswith("/b") else v
            for (p, v), k in zip(sorted(flat.items()), keys, strict=True)
        }
    )
    ours = our_logits(lora.insert_adapter(params, adapter), lora_config)
    assert np.abs(ours - our_logits(params)).max() > 0.5  # the adapter changes the model

    folder = hf_peft.save_peft_adapter(tmp_path / "peft", adapter, lora_config, CONFIG)
    written = json.loads((folder / "adapter_config.json").read_text())
    assert isinstance(written["target_modules"], str)
    loaded = peft.PeftModel.from_pretrained(model, str(folder)).eval()
    injected = [n for n, m in loaded.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    assert len(injected) == len(flat) // 2  # exactly the adapted layers, no others
    assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].lora_alpha == 8
    assert_close_logits(ours, hf_logits(loaded))


@pytest.fixture(scope="module")
def peft_made(tmp_path_factory):
    """A PEFT adapter on every T5 linear layer with random non-zero A and B, saved."""
    model = hf_base(seed=1)
    params = base_params(model)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
        task_type="SEQ_2_SEQ_LM",
    )
    wrapped = peft.get_peft_model(model, config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, B_STDDEV)
    folder = tmp_path_factory.mktemp("peft_made")
    wrapped.save_pretrained(str(folder))
    return params, wrapped.eval(), folder


def test_peft_adapter_imports_with_peft_logits(peft_made):
    params, wrapped, folder = peft_made
    adapter, lora_config = hf_peft.load_peft_adapter(folder, CONFIG)
    assert (lora_config.rank, lora_config.alpha, lora_config.dropout) == (4, 16.0, 0.05)
    assert lora_config.targets == r"(^|/)(key|out|query|value|wi_0|wi_1|wo)$"
    theirs = hf_logits(wrapped)
    ours = our_logits(lora.insert_adapter(params, adapter), lora_config)
    assert np.abs(theirs - our_logits(params)).max() > 0.5
    assert_close_logits(ours, theirs)
    # The same adapter read into the scanned layout gives the same model.
    scanned_config = CONFIG.replace(scan_layers=True)
    scanned_adapter, _ = hf_peft.load_peft_adapter(folder, scanned_config)
    scanned_base = hf_mapping.scan_layout(params, CONFIG)
    scanned = lora.insert_adapter(scanned_base, scanned_adapter)
    assert_close_logits(our_logits(scanned, lora_config, scanned_config), theirs)
    merged = lora.merge(scanned_base, scanned_adapter, lora_config)
    assert_close_logits(our_logits(merged, config=scanned_config), theirs)
    # And it exports back to the same tensors, bit for bit, and the same target modules.
    exported_config = hf_peft.peft_config_dict(adapter, lora_config, CONFIG)
    assert exported_config["target_modules"] == sorted(
        wrapped.peft_config["default"].target_modules
    )
    from safetensors.numpy import load_file

    saved = load_file(str(folder / "adapter_model.safetensors"))
    exported = hf_peft.peft_tensors(adapter, CONFIG)
    assert set(exported) == set(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_merged_export_equals_merge_and_unload(peft_made):
    params, wrapped, folder = peft_made
    adapter, lora_config = hf_peft.load_peft_adapter(folder, CONFIG)
    ours = dict(hf_peft.merged_hf_tensors(params, adapter, lora_config, CONFIG))
    import copy

    merged = copy.deepcopy(wrapped).merge_and_unload()
    theirs = {k: v.detach().numpy().copy() for k, v in merged.state_dict().items()}
    assert set(ours) <= set(theirs)
    worst, exact = 0.0, 0
    for name, value in ours.items():
        worst = max(worst, float(np.abs(value - theirs[name]).max()))
        exact += int(np.array_equal(value, theirs[name]))
    # Float32 sums of r products in another order (XLA vs torch matmul): equal to ~1 ulp.
    assert worst <= 1e-6, worst
    assert exact >= len(ours) // 2  # the unadapted tensors (and most adapted) are identical


def test_unsupported_peft_configs_are_named(peft_made, tmp_path):
    _, _, folder = peft_made
    config = json.loads((folder / "adapter_config.json").read_text())
    (tmp_path / "adapter_model.safetensors").write_bytes(
        (folder / "adapter_model.safetensors").read_bytes()
    )
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UserInputError, match="use_dora=True.*DoRA"):
        hf_peft.load_peft_adapter(tmp_path, CONFIG)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="do not fit the kernel"):
        hf_peft.load_peft_adapter(tmp_path, CONFIG.replace(d_ff=48))
