"""The T5 family (1.0, 1.1, mT5, ByT5, Flan-T5), registered by reference.

The model stays in `t5pipe.model`, its config in `t5pipe.model_config` and its
Hugging Face map in `t5pipe.hf.t5`; this module only names them for the registry.
"""

from __future__ import annotations

from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import T5
from t5pipe.model_config import T5Config
from t5pipe.models import Family


def _is_fixed_cache(path: tuple[str, ...]) -> bool:
    return "encoder_decoder_attention" in path


FAMILY = Family(
    name="t5",
    config_cls=T5Config,
    module_cls=T5,
    hf_architecture="T5ForConditionalGeneration",
    config_from_hf=hf_mapping.t5config_from_hf,
    config_to_hf=hf_mapping.t5config_to_hf,
    params_from_hf=hf_mapping.params_from_hf,
    params_to_hf=hf_mapping.params_to_hf,
    layer_counts=lambda config: {
        "encoder": config.num_encoder_layers,
        "decoder": config.num_decoder_layers,
    },
    hf_model_types=("t5", "mt5"),
    is_fixed_cache=_is_fixed_cache,
)
