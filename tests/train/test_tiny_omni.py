"""tiny-omni: the training script (train/tiny_omni.py), its config, and the shipped checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sift.manifest import read_manifest
from sift.testbed.synthav import generate

pytest.importorskip("lightning")  # train.data is the training app's (the train extra)

from train.data import AVQADataset  # noqa: E402
from train.tiny_omni import CAPTION_TURN, ClipCache, TinyOmniConfig, build_tokenizer_and_processor, load_config, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints" / "tiny-omni"


@pytest.fixture(scope="module")
def synthav(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthav")
    generate(root, {"train": 2, "validation": 1, "test": 1}, min_seconds=6, max_seconds=8, workers=1, progress=False)
    return root


#: A tiny-omni small enough for a training step in a test.
SMALL = dict(
    hidden_size=32,
    num_layers=1,
    intermediate_size=64,
    audio={"d_model": 16, "encoder_ffn_dim": 32, "encoder_attention_heads": 2, "encoder_layers": 1},
    vision={"hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "depth": 1},
    batch_size=2,
    warmup_steps=1,
    threads=1,
)


@pytest.fixture(scope="module")
def processor():
    return build_tokenizer_and_processor()[1]


def test_committed_config_parses_and_unknown_keys_are_refused(tmp_path):
    cfg = load_config(str(REPO / "configs" / "tiny-omni.yaml"))
    assert isinstance(cfg, TinyOmniConfig) and cfg.out_dir == "checkpoints/tiny-omni"
    assert cfg.hidden_size == 128 and cfg.num_layers == 4
    stage2 = load_config(str(REPO / "configs" / "tiny-omni-continue.yaml"))
    assert stage2.init_from and stage2.out_dir == cfg.out_dir and stage2.epochs < cfg.epochs
    assert {k: v for k, v in vars(stage2).items() if k not in ("init_from", "epochs", "warmup_steps")} == {
        k: v for k, v in vars(cfg).items() if k not in ("init_from", "epochs", "warmup_steps")
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "tiny-omni.yaml").read_text().replace("batch_size:", "batchsize:"))
    with pytest.raises(ValueError, match="batchsize"):
        load_config(str(bad))


def test_tokenizer_makes_synthav_words_single_tokens(processor):
    tok = processor.tokenizer
    for word in [" yellow", " triangle", " noise", " burst", " chirp", " sounded", "assistant"]:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert tok.convert_tokens_to_ids("<|VIDEO|>") != tok.unk_token_id
    assert len(tok("any text, even ünïcode", add_special_tokens=False)["input_ids"]) > 0  # byte fallback


def test_cached_eval_item_equals_the_data_module_item(synthav, processor):
    """The cached path (decode + lay out once, render text per turn) feeds exactly what AVQADataset does."""
    manifest = synthav / "test.jsonl"
    cache = ClipCache(manifest, processor, progress=False)
    ds = AVQADataset(read_manifest(manifest), processor, train=False)
    by_id = {ds.sample(k).id: k for k in range(len(ds))}
    for sample in cache.clips[0]["samples"]:
        a, b = cache.item(0, [sample], train=False), ds[by_id[sample.id]]
        for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "input_features"):
            assert torch.equal(a[key], b[key]), key
        assert a["answer"] == sample.answer and a["category"] == sample.category


def test_training_item_labels_every_answer_and_the_caption(synthav, processor):
    cache = ClipCache(synthav / "train.jsonl", processor, progress=False)
    tok = processor.tokenizer
    samples = cache.clips[0]["samples"]
    item = cache.item(0, [samples[2], CAPTION_TURN, samples[0]], train=True)
    supervised = tok.decode(item["input_ids"][item["labels"] != -100])
    caption = cache.caption(0)
    assert caption and caption.startswith("A ")
    assert supervised == f"{samples[2].answer}<|im_end|>{caption}<|im_end|>{samples[0].answer}<|im_end|>"
    # the first turn is the single-question prompt: the eval item is a prefix of the training item
    first = cache.item(0, [samples[2]], train=False)["input_ids"]
    assert torch.equal(item["input_ids"][: len(first)], first)


def test_per_token_labels_follow_the_clip_spec(synthav, processor):
    """Dense labels sit on the right tokens: sounds on audio tokens for each sound's duration (25 tokens/s),
    shape colors only on video tokens, the first-event flag on the first sound and the first shape's cells."""
    from sift.testbed.synthav import COLORS, SOUNDS, spec_for_video
    from train.tiny_omni import AUX_TASKS, build_model, load_config

    tok = processor.tokenizer
    config = build_model(load_config(None, {"hidden_size": 32, "num_layers": 1}), tok).config
    cache = ClipCache(synthav / "train.jsonl", processor, config=config, progress=False)
    clip = cache.clips[0]
    aux, ids = clip["aux"], clip["prefix"]
    spec = spec_for_video(clip["video"])
    assert aux.shape == (AUX_TASKS, ids.shape[0])
    audio = ids == tok.convert_tokens_to_ids("<|AUDIO|>")
    video = ids == tok.convert_tokens_to_ids("<|VIDEO|>")
    assert ((aux[0] >= 0) == video).all() and ((aux[2] >= 0) == audio).all() and ((aux[4] >= 0) == audio).all()
    for e in spec.events:
        n = int((aux[2] == SOUNDS.index(e.sound) + 1).sum())
        assert abs(n - 25 * (e.sound_end - e.sound_start)) <= 1.5, (e.sound, n)
        assert int((aux[0] == list(COLORS).index(e.color) + 1).sum()) > 0  # every shape is seen
    first = spec.events[0]
    flagged = aux[3] == 1
    assert (aux[2][flagged & audio] == SOUNDS.index(first.sound) + 1).all()
    assert (aux[0][flagged & video] == list(COLORS).index(first.color) + 1).all()
    assert int((flagged & audio).sum()) > 0 and int((flagged & video).sum()) > 0


def test_smoke_training_writes_a_loadable_checkpoint(synthav, tmp_path):
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    cfg = TinyOmniConfig(data_dir=str(synthav), eval_every=2, out_dir=str(tmp_path / "ckpt"), **SMALL)
    result = train(cfg, max_steps=2, progress=False)
    assert result["steps"] == 2 and result["test"]["n"] == 3
    out = Path(cfg.out_dir)
    history = json.loads((out / "training.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2] and "val" in history[-1]
    assert "tiny-omni" in (out / "README.md").read_text()
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out)
    proc = Qwen2_5OmniProcessor.from_pretrained(out)
    assert model.config.text_config.hidden_size == 32
    assert proc.tokenizer("A red circle", add_special_tokens=False)["input_ids"] == build_tokenizer_and_processor()[
        0
    ]("A red circle", add_special_tokens=False)["input_ids"]


def test_version_2_config_continues_tiny_omni_with_the_same_dimensions():
    v1 = load_config(str(REPO / "configs" / "tiny-omni.yaml"))
    v2 = load_config(str(REPO / "configs" / "tiny-omni-v2.yaml"))
    assert v2.synthav_version == 2 and v2.init_from == v1.out_dir and v2.out_dir == "checkpoints/tiny-omni-v2"
    same = ("hidden_size", "num_layers", "intermediate_size", "audio", "vision", "train_clips", "batch_size")
    assert {k: getattr(v2, k) for k in same} == {k: getattr(v1, k) for k in same}
    assert v2.data_dir != v1.data_dir  # a version 1 folder is refused by version 2 settings


def test_version_2_training_refuses_v1_data_and_saves_the_v2_pixel_budget(synthav, tmp_path):
    from transformers import Qwen2_5OmniProcessor

    from sift.testbed.processing import video_size
    from sift.testbed.synthav import read_settings

    with pytest.raises(ValueError, match="version 1 clips but synthav_version=2"):
        train(TinyOmniConfig(data_dir=str(synthav), synthav_version=2, **SMALL), max_steps=1, progress=False)
    root = tmp_path / "v2"
    generate(root, {"train": 1, "test": 1}, min_seconds=6, max_seconds=6, workers=1, progress=False, version=2)
    cfg = TinyOmniConfig(
        data_dir=str(root), synthav_version=2, validation_clips=0, out_dir=str(tmp_path / "ckpt"), **SMALL
    )
    result = train(cfg, max_steps=1, progress=False)
    assert result["test"]["n"] == 3
    saved = Qwen2_5OmniProcessor.from_pretrained(cfg.out_dir)
    assert video_size(saved)["longest_edge"] >= read_settings(root)["video_max_pixels"]


# ----------------------------------------------------------------------------------- shipped checkpoints


def _full_token_row(checkpoint: Path, data: Path) -> dict:
    """`sift eval` of `checkpoint` with all tokens on `data`/test.jsonl (its processor path): the one result row."""
    from sift.apps.evaluate import run_eval

    result = run_eval(
        manifest=str(data / "test.jsonl"),
        model=str(checkpoint),
        methods=["none"],
        max_new_tokens=2,
        out=str(data.parent / "eval"),
        quiet=True,
        threads=1,
    )
    (row,) = result["results"]
    return row


@pytest.mark.slow
def test_shipped_tiny_omni_loads_and_answers_fresh_synthav_clips(tmp_path):
    """checkpoints/tiny-omni is a real from_pretrained folder (< 25 MB) that answers SynthAV questions it never
    saw (another seed than its training data) with all tokens, through `sift eval`'s processor path."""
    weights = CHECKPOINT / "model.safetensors"
    assert weights.is_file(), "checkpoints/tiny-omni is missing: python -m train tiny-omni --config configs/tiny-omni.yaml"
    assert weights.stat().st_size < 25e6
    generate(tmp_path / "data", {"test": 8}, seed=123, workers=1, progress=False)
    row = _full_token_row(CHECKPOINT, tmp_path / "data")
    assert row["n"] == 24 and row["no_letter"] == 0
    assert row["accuracy"] >= 0.75, row


@pytest.mark.slow
def test_shipped_tiny_omni_v2_answers_fresh_v2_clips_with_its_pixel_budget(tmp_path):
    """checkpoints/tiny-omni-v2 reads SynthAV v2 frames whole (its processor carries v2's pixel budget: 64
    video tokens per second, over 70% of the media) and answers questions it never saw."""
    from transformers import Qwen2_5OmniProcessor

    from sift.testbed.processing import video_size
    from sift.testbed.synthav import read_settings

    checkpoint = REPO / "checkpoints" / "tiny-omni-v2"
    assert (checkpoint / "model.safetensors").is_file(), "python -m train tiny-omni --config configs/tiny-omni-v2.yaml"
    generate(tmp_path / "data", {"test": 6}, seed=123, workers=1, progress=False, version=2)
    processor = Qwen2_5OmniProcessor.from_pretrained(checkpoint)
    assert video_size(processor)["longest_edge"] >= read_settings(tmp_path / "data")["video_max_pixels"]
    row = _full_token_row(checkpoint, tmp_path / "data")
    assert row["n"] == 18 and row["no_letter"] == 0
    assert row["accuracy"] >= 0.75, row
    prefix = ClipCache(tmp_path / "data" / "test.jsonl", processor, progress=False).clips[0]["prefix"]
    video = int((prefix == processor.tokenizer.convert_tokens_to_ids("<|VIDEO|>")).sum())
    audio = int((prefix == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum())
    assert video > 0.7 * (video + audio), (video, audio)


@pytest.mark.parametrize("config, model, selector", [
    ("demo.yaml", "tiny-omni-v2", "omnisift-synthav-v2"),
    ("synthav-v2-selector.yaml", "tiny-omni-v2", "omnisift-synthav-v2"),
    ("demo-v1.yaml", "tiny-omni", "omnisift-synthav"),
])
def test_demo_configs_point_at_the_shipped_model_and_selector(config, model, selector):
    """Each demo config trains in front of a committed tiny-omni; the committed selector it made fits that model."""
    import yaml
    from transformers import Qwen2_5OmniThinkerConfig

    import sift

    cfg = yaml.safe_load((REPO / "configs" / config).read_text())
    assert cfg["model"]["model"] == cfg["data"]["processor"] == f"checkpoints/{model}"
    hidden = Qwen2_5OmniThinkerConfig.from_pretrained(REPO / "checkpoints" / model).get_text_config().hidden_size
    sift.OmniSIFTSelector.from_pretrained(REPO / "checkpoints" / selector).check_hidden_size(hidden)


def test_demo_trains_what_the_committed_v2_selector_was_trained_with():
    """configs/demo.yaml is configs/synthav-v2-selector.yaml with its own folders and fewer steps, nothing else."""
    import yaml

    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    full = yaml.safe_load((REPO / "configs" / "synthav-v2-selector.yaml").read_text())
    assert demo["trainer"].pop("max_steps") < full["trainer"].pop("max_steps")
    text = yaml.safe_dump(full).replace("runs/selector/run", "runs/demo").replace("runs/selector/synthav", "runs/demo/synthav")
    assert yaml.safe_dump(demo) == text
