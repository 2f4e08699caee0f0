"""The Python API: the two classes a user of a trained Libra needs, registered with transformers.

    from libra import LibraForCausalLM, LibraProcessor
    model = LibraForCausalLM.from_pretrained(folder)      # any checkpoint kind of libra.pretrained
    processor = LibraProcessor.from_pretrained(folder)

``from libra import ...`` lands here. Importing this module registers the config, the model and the
processor with transformers' ``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` (done by
``libra.model``) and ``AutoProcessor`` (done here: the tokenizer package may not import the model's
config, so the two are joined in this module, above both).
"""

from transformers import AutoProcessor

from libra.model import LibraConfig, LibraForCausalLM
from libra.tokenizer.processor import LibraProcessor

AutoProcessor.register(LibraConfig, LibraProcessor, exist_ok=True)

__all__ = ["LibraForCausalLM", "LibraProcessor"]
