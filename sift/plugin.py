"""`sift.compress`: apply a compressor to a stock transformers Qwen2.5-Omni, with hooks only.

No modeling file is copied. Three hooks on the thinker do the work and are removed on exit:

- a pre-hook on the thinker parses the token layout of a prefill call, sets aside `labels`, and on later
  calls that continue a compressed KV cache translates the full-length attention mask (which `generate`
  and multi-turn users keep growing) into the compressed one;
- a pre-hook on the language model (after the encoders ran and their features were scattered in, and
  after the model computed the 3D rope positions of the FULL sequence) asks the compressor which tokens
  survive, drops the others from embeddings, attention mask and positions, and re-pads the batch.
  Survivors keep their original 3D positions, so decoding continues at max position + 1 as usual;
- a post-hook on the thinker computes the loss over the kept sequence with labels shrunk the same way.

The returned logits and hidden states cover the kept sequence; `session.stats.kept_positions` lists the
input positions kept and `session.stats.slots_of(rows, positions)` finds input positions in the output.
Dropping, re-padding and continuing a compressed cache are pure functions of tensors (`sift.sequence`).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from sift import hf_internals as hf
from sift.compressors import CompressionBatch, Compressor, Selection, get_compressor
from sift.layout import TokenLayout
from sift.masked_attention import key_gates
from sift.models import adapter_for, registered_adapters
from sift.sequence import CacheState, Slots, continue_sequence, identity_slots, shrink_sequence

__all__ = ["compress", "CompressionSession", "CompressionStats", "SUPPORTED_MODELS", "MODES"]

#: The model classes `sift.compress` accepts: those of every registered adapter (`sift.models`).
SUPPORTED_MODELS = tuple(c for a in registered_adapters() for c in a.thinker_classes + a.wrapper_classes)
#: "shrink": dropped tokens leave the sequence (inference, and the default); "mask": the full sequence runs
#: and dropped tokens are masked out of every attention layer with straight-through gates (training).
MODES = ("shrink", "mask")


@dataclass
class CompressionStats:
    """What one compressed prefill call did, per batch row."""

    audio_before: list[int]
    audio_after: list[int]
    video_before: list[int]
    video_after: list[int]
    tokens_before: list[int]  # non-padding tokens of the row (text included)
    tokens_after: list[int]
    selection_time_s: float  # the compressor's `select` plus the re-indexing
    kept_positions: list[torch.Tensor] = field(repr=False)  # per row, input positions of the kept tokens
    slots: Slots | None = field(default=None, repr=False)  # where each kept token sits in the decoder input
    input_shape: tuple[int, int] = (0, 0)  # (B, L) of the prefill input

    @property
    def retention(self) -> float:
        """Achieved fraction of audio+video tokens kept over the batch."""
        before = sum(self.audio_before) + sum(self.video_before)
        return 1.0 if before == 0 else (sum(self.audio_after) + sum(self.video_after)) / before

    def row_retention(self, row: int) -> float:
        before = self.audio_before[row] + self.video_before[row]
        return 1.0 if before == 0 else (self.audio_after[row] + self.video_after[row]) / before

    def slots_of(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Where input positions (rows, positions) sit in the output logits / hidden states; raises if dropped."""
        if self.slots is None:
            raise RuntimeError("these CompressionStats were not made by sift.compress: they record no slots")
        return self.slots.lookup(self.input_shape, rows, positions)


@dataclass
class PrefillState:
    """State of the prefill call in flight, from the thinker pre-hook to its post-hook."""

    layout: TokenLayout
    input_ids: torch.Tensor
    labels: torch.Tensor | None
    loss_kwargs: dict[str, Any]
    full_mask: torch.Tensor | None = None  # (B, L) the input attention mask
    kept_mask: torch.Tensor | None = None  # (B, K) attention mask after selection and re-padding
    slots: Slots | None = None  # where each kept token sits in the decoder input
    rope_deltas: torch.Tensor | None = None  # (B, 1) max position + 1 - length, full-sequence convention
    stats: CompressionStats | None = None
    router_loss: bool = False  # a mixture-of-experts load-balancing loss to compute over the kept tokens


class CompressionSession:
    """Context manager returned by `sift.compress`; holds the hooks and the per-call statistics."""

    def __init__(self, model: torch.nn.Module, compressor: Compressor, mode: str = "shrink"):
        if mode not in MODES:
            raise ValueError(f"sift.compress: mode must be one of {MODES}, got {mode!r}")
        try:
            self.adapter = adapter_for(model)
        except TypeError as e:
            raise TypeError(f"sift.compress: {e}") from None
        if not isinstance(compressor, Compressor):
            raise TypeError(f"expected a sift Compressor, got {type(compressor).__name__}")
        self.model = model
        self.thinker = self.adapter.thinker(model)
        self.compressor = compressor
        self.mode = mode
        self._gates = contextlib.ExitStack()  # the masked-attention gates of the language-model call in flight
        self.stats: CompressionStats | None = None
        #: the last prefill's layout and selection (its `scores` carry gradient when a selector trains);
        #: what training losses on the selection read
        self.layout: TokenLayout | None = None
        self.selection: Selection | None = None
        self.history: list[CompressionStats] = []
        self.signals: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []
        self._prefill: PrefillState | None = None
        self._warned_no_ids = False
        self._generate_inputs: dict[str, Any] = {}

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "CompressionSession":
        if getattr(self.thinker, "_sift_session", None) is not None:
            raise RuntimeError("this model is already inside a sift.compress context")
        thinker = self.thinker
        try:
            self._handles = [
                thinker.register_forward_pre_hook(self._before_thinker, with_kwargs=True),
                self.adapter.language_model(thinker).register_forward_pre_hook(self._before_language_model, with_kwargs=True),
                self.adapter.language_model(thinker).register_forward_hook(self._after_language_model, always_call=True),
                thinker.register_forward_hook(self._after_thinker, with_kwargs=True),
            ]
            self._handles += self.compressor.attach(thinker, self.signals)
            session = self
            prepare, generate = type(thinker).prepare_inputs_for_generation, type(thinker).generate

            @functools.wraps(prepare)
            def prepare_inputs_for_generation(*args: Any, **kwargs: Any) -> dict[str, Any]:
                return prepare(thinker, *args, **session._fix_continuation_slice(args, kwargs))

            @functools.wraps(generate)
            def generate_with_layout(*args: Any, **kwargs: Any) -> Any:
                # generate() encodes images/videos up front and drops their grids (and an all-ones mask)
                # before the prefill forward: keep what the layout needs for the duration of the call.
                if session.mode == "mask":
                    raise RuntimeError('sift.compress(mode="mask") is for training forwards; generate in the default mode')
                session._generate_inputs = {k: kwargs.get(k) for k in session.adapter.layout_keys}
                session.signals.clear()
                try:
                    return generate(thinker, *args, **kwargs)
                finally:
                    session._generate_inputs = {}

            thinker.prepare_inputs_for_generation = prepare_inputs_for_generation
            thinker.generate = generate_with_layout
            thinker._sift_session = self
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for name in ("prepare_inputs_for_generation", "generate"):
            self.thinker.__dict__.pop(name, None)
        self.thinker.__dict__.pop("_sift_session", None)
        self._prefill = None
        self._gates.close()

    # ------------------------------------------------------------------ hooks
    def _before_thinker(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            if len(args) > 1:
                raise TypeError("inside sift.compress, pass model inputs as keyword arguments")
            kwargs = {"input_ids": args[0], **kwargs}
        self._prefill = None
        input_ids = kwargs.get("input_ids")
        cache = hf.cache_in(kwargs)
        past_len = cache.get_seq_length() if cache is not None else 0
        state = self._cache_state(cache)
        if state is not None and past_len > 0:
            return (), self._continue(kwargs, state, past_len)
        if past_len > 0:
            return (), kwargs  # a cache sift did not make: leave it alone
        if input_ids is None:
            if not self._warned_no_ids:
                warnings.warn("sift.compress: a call without input_ids cannot be parsed, nothing is compressed")
                self._warned_no_ids = True
            return (), kwargs
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            # The stock model computes 3D positions only with a mask; give it the trivial one.
            attention_mask = torch.ones_like(input_ids)
            kwargs["attention_mask"] = attention_mask
        # generate() drops the grids before the prefill forward: fall back to what its wrapper kept
        keys = self.adapter.layout_keys
        given = {k: kwargs.get(k) if kwargs.get(k) is not None else self._generate_inputs.get(k) for k in keys}
        layout = self.adapter.read_layout({**given, "input_ids": input_ids, "attention_mask": attention_mask}, self.thinker.config)
        if layout.is_empty:
            return (), kwargs
        if not self._generate_inputs:
            # A plain forward: its encoders run after this hook, so start from clean side signals. (Inside
            # generate(), images/videos were encoded before this call and the signals were reset earlier.)
            self.signals.clear()
        if self.mode == "mask":
            kwargs["use_cache"] = False  # a cache would hold the masked tokens: nothing may continue from it
        loss_keys = ("num_items_in_batch", "ignore_index")
        self._prefill = PrefillState(
            layout=layout,
            input_ids=input_ids,
            labels=kwargs.pop("labels", None),
            loss_kwargs={k: kwargs[k] for k in loss_keys if k in kwargs},
            full_mask=attention_mask,
        )
        self._prefill.router_loss = self.adapter.defer_router_loss(kwargs, self.thinker.config)
        return (), kwargs

    def _before_language_model(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        prefill = self._prefill
        if prefill is None:
            return args, kwargs
        embeds, positions, mask = kwargs.get("inputs_embeds"), kwargs.get("position_ids"), kwargs.get("attention_mask")
        if embeds is None or positions is None or not torch.is_tensor(mask) or mask.ndim != 2:
            raise RuntimeError(
                "sift.compress needs the language model to receive inputs_embeds, 3D position_ids and a 2D "
                "attention mask (static caches with prepared 4D masks are not supported)"
            )
        text_row, positions3 = self.adapter.split_positions(positions)
        if prefill.router_loss:
            kwargs["output_router_logits"] = True
        start = time.perf_counter()
        batch = CompressionBatch(
            embeds=embeds,
            layout=prefill.layout,
            input_ids=prefill.input_ids,
            attention_mask=mask,
            position_ids=positions3,
            signals=self.signals,
            config=self.thinker.config,
        )
        selection = self.compressor.select(batch)
        self._check(selection, batch)
        self.layout, self.selection = prefill.layout, selection
        if selection.embeds is not None:
            embeds = selection.embeds
        valid = mask.bool()
        keep = selection.keep & valid
        prefill.rope_deltas = self.adapter.rope_deltas(positions3, valid)
        if self.mode == "mask":
            self._gates.enter_context(key_gates(module.config, self._key_gate(selection, keep, valid)))
        elif selection.gate is not None:
            embeds = embeds * selection.gate[..., None].to(embeds.dtype)  # 1 on kept tokens, gradient to their scores
        if self.mode == "mask" or bool((keep == valid).all()):
            prefill.slots, prefill.kept_mask = identity_slots(valid), mask
            kwargs["inputs_embeds"] = embeds
        else:
            text_positions = self.adapter.with_text_positions if text_row is not None else None
            shrunk = shrink_sequence(embeds, positions3, mask, keep, text_positions)
            prefill.slots, prefill.kept_mask = shrunk.slots, shrunk.attention_mask
            kwargs.update(inputs_embeds=shrunk.inputs_embeds, attention_mask=shrunk.attention_mask, position_ids=shrunk.position_ids)
            self.adapter.shrink_decoder_extras(kwargs, keep, shrunk.slots, shrunk.attention_mask.shape[1])
        if selection.updates is not None:
            kwargs["inputs_embeds"] = self._apply_updates(kwargs["inputs_embeds"], selection.updates, keep, prefill.slots)
        if embeds.is_cuda:
            torch.cuda.synchronize(embeds.device)
        prefill.stats = _stats(prefill.layout, valid, keep, time.perf_counter() - start, prefill.slots)
        return args, kwargs

    def _key_gate(self, selection: Selection, keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L) attention-key gates for mask mode: the selection's straight-through gates, or the hard mask."""
        if selection.gate is None:
            return keep.float()
        gate = selection.gate * valid
        if not bool((gate.detach() == keep.float()).all()):
            raise RuntimeError(f"{self.compressor.name}: Selection.gate must equal the keep mask in value (1. kept, 0. dropped)")
        return gate

    def _after_language_model(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self._gates.close()

    def _after_thinker(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        prefill, self._prefill = self._prefill, None
        if prefill is None or prefill.stats is None:
            return output
        self.stats = prefill.stats
        self.history.append(prefill.stats)
        cache = hf.cache_out(output)
        if cache is not None and prefill.kept_mask is not None and self.mode == "shrink":
            # Stored on the cache itself so copies (copy.deepcopy for branching) carry it along.
            cache._sift_state = CacheState(
                full_len=prefill.full_mask.shape[1],
                full_mask=prefill.full_mask,
                kept_mask=prefill.kept_mask,
                rope_deltas=prefill.rope_deltas,
            )
        if prefill.labels is not None:
            slots = prefill.slots
            labels = torch.full(prefill.kept_mask.shape, -100, dtype=prefill.labels.dtype, device=prefill.labels.device)
            labels[slots.rows, slots.dst] = prefill.labels[slots.rows, slots.src]
            output.loss = self.thinker.loss_function(
                logits=output.logits,
                labels=labels,
                vocab_size=self.thinker.config.get_text_config().vocab_size,
                **prefill.loss_kwargs,
            )
        if prefill.router_loss:
            self.adapter.router_loss(self.thinker, output, prefill.kept_mask, with_labels=prefill.labels is not None)
        return output

    # ------------------------------------------------------------------ pieces
    def _check(self, selection: Selection, batch: CompressionBatch) -> None:
        keep = selection.keep
        if not isinstance(selection, Selection) or keep.dtype != torch.bool or keep.shape != batch.input_ids.shape:
            raise RuntimeError(
                f"{self.compressor.name}.select must return a Selection with a (B, L) bool keep-mask "
                f"of shape {tuple(batch.input_ids.shape)}"
            )
        protected = batch.attention_mask.bool() & ~batch.layout.media_mask(keep.device)
        if bool((protected & ~keep).any()):
            raise RuntimeError(f"{self.compressor.name} dropped text or special tokens; only audio/video may go")
        if selection.embeds is not None and selection.embeds.shape != batch.embeds.shape:
            raise RuntimeError(f"{self.compressor.name} returned embeds of a different shape")

    def _apply_updates(
        self, embeds: torch.Tensor, updates: tuple[torch.Tensor, torch.Tensor, torch.Tensor], keep: torch.Tensor, slots: Slots
    ) -> torch.Tensor:
        """Write a selection's sparse updates into the (possibly shrunk) decoder input."""
        rows, positions, values = (t.to(embeds.device) for t in updates)
        if not bool(keep[rows, positions].all()):
            raise RuntimeError(f"{self.compressor.name} updated embeddings of tokens it dropped")
        return embeds.index_put((rows, slots.lookup(tuple(keep.shape), rows, positions)), values.to(embeds.dtype))

    @staticmethod
    def _cache_state(cache: Any) -> CacheState | None:
        return getattr(cache, "_sift_state", None)

    def _continue(self, kwargs: dict, state: CacheState, past_len: int) -> dict:
        """A call continuing a compressed cache: decode steps, multi-turn follow-ups."""
        ids = kwargs.get("input_ids")
        cfg = self.thinker.config
        new_media = ids is not None and bool(torch.isin(ids, ids.new_tensor(self.adapter.media_token_ids(cfg))).any())
        if new_media and any(kwargs.get(k) is not None for k in hf.MEDIA_INPUT_KEYS):
            raise NotImplementedError(
                "new images, audio or video on top of a compressed KV cache are not supported; "
                "start a new conversation (no KV cache) for new media"
            )
        for key in hf.MEDIA_INPUT_KEYS:  # the history's media, passed again by a chat loop: already in the cache
            kwargs.pop(key, None)
        ref = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        new_tokens = ref.shape[1]
        kept_mask, full_mask = continue_sequence(state, past_len, new_tokens, ref.shape[0], kwargs.get("attention_mask"))
        if kept_mask is None:
            return kwargs  # no padding anywhere: the plain causal mask over the cache is right
        kwargs["attention_mask"] = kept_mask
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = self.adapter.continuation_positions(full_mask, state.rope_deltas, new_tokens)
        return kwargs

    def _fix_continuation_slice(self, args: tuple, kwargs: dict) -> dict:
        """`generate` on full history ids with a compressed cache would slice too many new tokens: fix the count."""
        input_ids = args[0] if args else kwargs.get("input_ids")
        cache, mask, n = hf.cache_in(kwargs), kwargs.get("attention_mask"), kwargs.get(hf.NEXT_SEQUENCE_LENGTH)
        state = self._cache_state(cache)
        if state is not None and n is not None and input_ids is not None:
            # generate drops an all-ones mask; then full-history ids are the only way it computes a count
            full_ids = mask is None or mask.shape[1] == input_ids.shape[1]
            if full_ids and n == input_ids.shape[1] - cache.get_seq_length():
                kwargs = {**kwargs, hf.NEXT_SEQUENCE_LENGTH: n - state.offset}
        return kwargs


def _stats(layout: TokenLayout, valid: torch.Tensor, keep: torch.Tensor, elapsed: float, slots: Slots) -> CompressionStats:
    audio, video = layout.audio_mask(keep.device), layout.video_mask(keep.device)
    return CompressionStats(
        audio_before=(audio & valid).sum(1).tolist(),
        audio_after=(audio & keep).sum(1).tolist(),
        video_before=(video & valid).sum(1).tolist(),
        video_after=(video & keep).sum(1).tolist(),
        tokens_before=valid.sum(1).tolist(),
        tokens_after=keep.sum(1).tolist(),
        selection_time_s=elapsed,
        kept_positions=[torch.nonzero(keep[b]).squeeze(1).cpu() for b in range(keep.shape[0])],
        slots=slots,
        input_shape=tuple(keep.shape),
    )


def compress(
    model: torch.nn.Module,
    compressor: Compressor | str,
    retention: float | None = None,
    *,
    mode: str = "shrink",
    **kwargs: Any,
) -> CompressionSession:
    """Compress the audio/video tokens a Qwen2.5-Omni model sees, inside a `with` block.

    >>> with sift.compress(thinker, sift.get_compressor("random", retention=0.35)) as session:
    ...     out = thinker.generate(**inputs, max_new_tokens=32)
    >>> session.stats.retention

    `compressor` may also be a registered name, with `retention` and method options as keywords; the name
    follows `get_compressor`'s rule (a retention is required except for `none` and OmniZip's rho options).
    `mode="mask"` trains a selector with a gradient for every media token (`sift.masked_attention`): the
    full sequence runs, dropped tokens are masked out of attention, logits cover every input position.
    """
    if isinstance(compressor, str):
        compressor = get_compressor(compressor, retention=retention, **kwargs)
    elif retention is not None or kwargs:
        raise TypeError("retention and method options go to get_compressor, not to compress, for a built compressor")
    return CompressionSession(model, compressor, mode=mode)
