"""The Libra network: config, routed visual expert with bridge attention, loss, generation.

Public API: `LibraConfig`, `LibraModel`, `LibraForCausalLM` (with `.generate` and `.from_llama`),
`LibraCache`. Importing this package registers the classes with `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM` (model_type "libra"), so `AutoModelForCausalLM.from_pretrained(folder)` loads a
Libra folder. `LibraForCausalLM.from_llama(llama_folder, **config_overrides)` builds a stage-1 model from
a LLaMA-2 HF folder (see `libra.model.from_llama`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import LibraCache
from .config import LibraConfig
from .modeling import LibraForCausalLM, LibraModel

AutoConfig.register("libra", LibraConfig, exist_ok=True)
AutoModel.register(LibraConfig, LibraModel, exist_ok=True)
AutoModelForCausalLM.register(LibraConfig, LibraForCausalLM, exist_ok=True)

__all__ = ["LibraCache", "LibraConfig", "LibraForCausalLM", "LibraModel"]
