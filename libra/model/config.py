"""`LibraConfig`: every hyper-parameter of the Libra network and the released 11B values (docs/design.md §1).

The defaults are those of the official `libra-11b-chat/config.json` (hidden 4096, 32 layers, 32 heads,
`contiguous_signal_size` 4096, `rms_norm_eps` 1e-6), so `LibraConfig()` describes the released model and
the official `config.json` parses unchanged (`model_type` "libra"; keys the official code ignores, such as
`rope_theta` or `num_key_value_heads`, are kept as plain attributes).

Note: this module imports transformers' `PreTrainedConfig`, and transformers 5.x imports torch from its
configuration module, so importing the config alone still pulls in torch.

Options the released checkpoints never use are either implemented (`use_bridge=False`,
`concat_signals=False`, `norm_signals=False`, `use_vision_position_embedding`) or refused here, when the
config is built (`addition_mode`, `unified_head`, `use_2d_rope`): the reference implements those
inconsistently (docs/design.md B1, B23, B24), so there is no behaviour worth reproducing.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class LibraConfig(PreTrainedConfig):
    """Configuration of `LibraModel` / `LibraForCausalLM`; field names as in the official config.json."""

    model_type = "libra"

    # --- language model (LLaMA-2-7B); RoPE base 10000 and full multi-head attention are fixed ---
    vocab_size: int = 32000  # text classes only; vision ids start at vocab_size
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    embd_pdrop: float = 0.0

    # --- routed visual expert (paper §3.1) ---
    vision_down_ratio: int = 4  # rank of vision q/k/v/o and MLP = out_features // vision_down_ratio
    vision_vocab_size: int = 514  # per codebook: 512 codes + boi + eoi
    vision_codebook_num: int = 2  # K, codebooks of the lookup-free quantiser
    max_vision_token_length: int = 578  # boi + 24*24 codes + eoi; also the "text" value of vision_indices
    image_feature_resolution: int = 24  # side of the code grid
    newline_token_id: int = 13  # forced after every eoi during generation
    vision_embd_pdrop: float = 0.0
    vision_resid_pdrop: float = 0.0
    # the released tokenizer concatenates 4 CLIP layers (4 x 1024); the official default 2048 is wrong
    # (docs/design.md B14)
    contiguous_signal_size: int = 4096
    vision_prediction_mode: str = "1d"  # "1d": head on the position's own state; "2d": [up ; left] states

    # --- cross-modal bridge (paper §3.2) ---
    use_bridge: bool = True
    bridge_rank: int = 8

    # --- image input embedding: Linear(RMSNorm([code embeddings ; CLIP features])) ---
    concat_signals: bool = True  # False: project the CLIP features alone and add them
    norm_signals: bool = True  # RMSNorm over the concatenation (only with concat_signals)
    use_vision_position_embedding: bool = False  # learned table over the 578 slots of an image

    # --- options of the official code that the released models do not use; refused below ---
    addition_mode: bool = False
    unified_head: bool = False
    use_2d_rope: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Validate the whole configuration; every error names the key and how to fix it."""
        refused = {
            "addition_mode": "the official code applies it to attention, not the MLP (docs/design.md B23)",
            "unified_head": "official code: logits leak across modalities in training (docs/design.md B24)",
            "use_2d_rope": "the official code cannot run it with a KV cache (docs/design.md B1)",
        }
        for key, why in refused.items():
            if getattr(self, key):
                raise ValueError(f"LibraConfig: {key}=True is not supported ({why}); set {key}=False.")
        if self.vision_prediction_mode not in ("1d", "2d"):
            raise ValueError(
                f"LibraConfig: vision_prediction_mode={self.vision_prediction_mode!r}; use '1d' or '2d'."
            )
        if self.hidden_act != "silu":
            raise ValueError(f"LibraConfig: hidden_act={self.hidden_act!r}; only 'silu' (SwiGLU) is built.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LibraConfig: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}."
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                "LibraConfig: the head dim (hidden_size / num_attention_heads) must be even for RoPE."
            )
        if self.hidden_size % self.vision_codebook_num:
            raise ValueError(
                f"LibraConfig: hidden_size {self.hidden_size} must split evenly over "
                f"vision_codebook_num {self.vision_codebook_num} code embeddings."
            )
        grid = self.image_feature_resolution**2 + 2
        if self.max_vision_token_length != grid:
            raise ValueError(
                f"LibraConfig: max_vision_token_length {self.max_vision_token_length} must equal "
                f"image_feature_resolution**2 + 2 = {grid} (boi + codes + eoi)."
            )
        if self.norm_signals and not self.concat_signals:
            raise ValueError(
                "LibraConfig: norm_signals=True needs concat_signals=True (set norm_signals=False)."
            )
        for key in ("vision_down_ratio", "bridge_rank", "vision_codebook_num", "contiguous_signal_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"LibraConfig: {key} must be >= 1, got {getattr(self, key)}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def boi_token_id(self) -> int:
        """Joint id of <boi> (local vision id vision_vocab_size - 2)."""
        return self.vocab_size + self.vision_vocab_size - 2

    @property
    def eoi_token_id(self) -> int:
        """Joint id of <eoi> (local vision id vision_vocab_size - 1)."""
        return self.vocab_size + self.vision_vocab_size - 1
