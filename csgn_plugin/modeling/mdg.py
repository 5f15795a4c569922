"""MDG, the Multi-Description Generator: learnable per-identity prompts for RGB and grayscale.

Each identity owns, per modality, ``n_ctx`` learnable token vectors that replace the ``X``
positions of a template such as ``"A photo of a X X X X person."`` (CLIP-ReID's prompt, here
configurable). The template's other tokens are embedded once with CLIP's token embedding and kept
as buffers, so the (large) token-embedding table is not part of the model. The frozen CLIP text
transformer (:class:`TextEncoder`) encodes the filled-in prompts; its output at the end-of-text
token, projected, is the identity's text feature in the joint space.
"""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
from torch import nn

__all__ = ["PromptLearner", "TextEncoder"]


class TextEncoder(nn.Module):
    """CLIP's text transformer applied to prompt embeddings instead of token ids."""

    def __init__(
        self,
        positional_embedding: nn.Parameter,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection: nn.Parameter | nn.Linear,
        attn_mask: torch.Tensor,
    ) -> None:
        super().__init__()
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.register_buffer("attn_mask", attn_mask.clone(), persistent=False)
        # CLIP's mask is causal: no position after the end-of-text token can reach it
        future = torch.ones_like(attn_mask, dtype=torch.bool).triu(1)
        self.causal = bool(
            torch.isneginf(attn_mask[future]).all() and (attn_mask[~future] == 0).all()
        )
        self.output_dim = (
            text_projection.out_features
            if isinstance(text_projection, nn.Linear)
            else text_projection.shape[1]
        )

    def forward(
        self, prompts: torch.Tensor, eot_index: int, up_to_eot: bool = False
    ) -> torch.Tensor:
        """``prompts`` (B, L, width) -> (B, E): features at the end-of-text position.

        ``up_to_eot``: run the transformer over the positions up to the end-of-text token only.
        Under the causal mask the positions after it never reach it, so the features are the
        same (up to float rounding) for a fraction of the work (13 of 77 positions for
        CLIP-ReID's prompt)."""
        length = eot_index + 1 if up_to_eot and self.causal else prompts.shape[1]
        x = prompts[:, :length] + self.positional_embedding[:length].to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x[:, eot_index])
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class PromptLearner(nn.Module):
    """Per-identity, per-modality context vectors inserted into a fixed template.

    Parameters are ``ctx[<modality>]`` of shape ``(num_ids, n_ctx, width)``, initialised
    N(0, ``init_std``) as in CLIP-ReID. ``forward(pids, modality)`` returns the prompt embeddings
    ``(len(pids), context_length, width)`` for the text encoder.
    """

    def __init__(
        self,
        token_embedding: nn.Embedding,
        context_length: int,
        num_ids: int,
        modalities: Sequence[str],
        template: str,
        n_ctx: int,
        init_std: float,
    ) -> None:
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"the prompt learner needs at least one identity, got {num_ids}")
        if n_ctx < 1:
            raise ValueError(f"csgn.prompt_n_ctx must be >= 1, got {n_ctx}")
        if template.count("{}") != 1:
            raise ValueError(
                f"csgn.prompt_template must contain exactly one '{{}}' (where the learnable "
                f"tokens go), got '{template}'"
            )
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct and non-empty, got {list(modalities)}")
        tokens, start = _tokenize_template(template, n_ctx, context_length)
        with torch.no_grad():
            embedded = token_embedding(tokens).float()
        # Persistent: a checkpoint carries the template it was trained with.
        self.register_buffer("token_prefix", embedded[:, :start].clone())
        self.register_buffer("token_suffix", embedded[:, start + n_ctx :].clone())
        self.eot_index = int(tokens.argmax(dim=-1).item())  # EOT has the largest token id
        self.template = template
        self.n_ctx = n_ctx
        self.num_ids = num_ids
        width = token_embedding.embedding_dim
        self._modalities = tuple(modalities)  # ParameterDict sorts plain-dict keys
        self.ctx = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(num_ids, n_ctx, width) * init_std) for m in modalities}
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        return self._modalities

    def forward(self, pids: torch.Tensor, modality: str) -> torch.Tensor:
        if modality not in self.ctx:
            raise KeyError(f"no prompts for modality '{modality}'; have {self.modalities}")
        ctx = self.ctx[modality][pids]
        batch = ctx.shape[0]
        prefix = self.token_prefix.expand(batch, -1, -1).to(ctx.dtype)
        suffix = self.token_suffix.expand(batch, -1, -1).to(ctx.dtype)
        return torch.cat([prefix, ctx, suffix], dim=1)


def _tokenize_template(template: str, n_ctx: int, context_length: int) -> tuple[torch.Tensor, int]:
    """Token ids of the template with ``n_ctx`` ``X`` placeholders, and where they start."""
    text = template.format(" ".join(["X"] * n_ctx))
    tokens = open_clip.tokenize([text], context_length=context_length)
    x_id = int(open_clip.tokenize(["X"], context_length=context_length)[0, 1])
    positions = (tokens[0] == x_id).nonzero().flatten().tolist()
    start = positions[0] if positions else -1
    if positions != list(range(start, start + n_ctx)):
        raise ValueError(
            f"csgn.prompt_template '{template}' must not contain the word 'X' itself; its "
            f"placeholder tokens were found at {positions}"
        )
    # every BPE token covers at least one character: this length never truncates
    untruncated = open_clip.tokenize([text], context_length=context_length + len(text) + 2)
    if int(untruncated.argmax(dim=-1)) >= context_length:
        raise ValueError(
            f"csgn.prompt_template '{template}' with {n_ctx} learnable tokens does not fit the "
            f"text context of {context_length} tokens"
        )
    return tokens, start
