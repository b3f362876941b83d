"""train.data: manifest readers (generic / Daily-Omni / WorldSense), prompts, dataset items, collate,
skipping of unusable videos and the Lightning data module, on tiny synthetic clips and the tiny thinker."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("datasets")

from sift.hf_internals import THINKER_INPUT_KEYS  # noqa: E402
from sift.testbed.media import synth_clip, write_clip  # noqa: E402
from sift.testbed.tiny import omni_inputs  # noqa: E402
from train.data import (  # noqa: E402
    ANSWER_INSTRUCTION,
    IGNORE_INDEX,
    AVQADataModule,
    AVQADataset,
    AVQASample,
    build_prompt,
    collate,
    read_manifest,
)

FRAME = 112  # the tiny processor's pixel budget: 16 LLM tokens per temporal grid step


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Short clips: two with audio (different lengths), one silent, one corrupt file, one missing path."""
    d = tmp_path_factory.mktemp("media")
    write_clip(synth_clip(2.0, size=(FRAME, FRAME), seed=0), d / "av_short.mp4")
    write_clip(synth_clip(4.0, size=(FRAME, FRAME), seed=1, tone_hz=660.0), d / "av_long.mp4")
    write_clip(synth_clip(2.0, size=(FRAME, FRAME), seed=2, with_audio=False), d / "silent.mp4")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return d


def _write_json(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _sample(media, name="av_short.mp4", sid="s", answer="B", options=("a cat", "a dog", "a bird")):
    return AVQASample(id=sid, video=str(media / name), question="Which animal is shown?", options=list(options),
                      answer=answer, category="animals")


# --------------------------------------------------------------------------------------------- readers


def test_read_generic_json_and_jsonl(tmp_path):
    (tmp_path / "vids").mkdir()
    recs = [
        {"id": "q1", "video": "vids/x.mp4", "question": " What moves? ", "options": ["A. a square", "B. a circle"],
         "answer": "A", "category": "motion"},
        {"video": "/abs/y.mp4", "question": "What sound?", "options": ["a tone", "speech", "silence"],
         "answer": "speech"},
    ]
    for path in (_write_json(tmp_path / "m.json", recs), _write_jsonl(tmp_path / "m.jsonl", recs)):
        a, b = read_manifest(path, schema="generic")
        assert a == AVQASample("q1", str(tmp_path / "vids" / "x.mp4"), "What moves?", ["a square", "a circle"], "A", "motion")
        assert (b.id, b.video, b.options, b.answer, b.category) == (f"{path.stem}-1", "/abs/y.mp4", ["a tone", "speech", "silence"], "B", None)
        assert read_manifest(path) == [a, b]  # auto-detected
    # video_root replaces the manifest's folder for relative paths
    (a, _) = read_manifest(tmp_path / "m.json", video_root="/data/root")
    assert a.video == "/data/root/vids/x.mp4"


def test_read_dailyomni(tmp_path):
    root = tmp_path / "Videos"
    (root / "vidB").mkdir(parents=True)
    (root / "vidB" / "vidB_video.mp4").write_bytes(b"")  # Daily-Omni's release layout
    recs = [
        {"Question": "What happens when the bell rings?", "Choice": ["A. A dog barks", "B. A man waves", "C. Nothing",
         "D. Rain starts"], "Answer": "B", "video_id": "vidA", "Type": "AV Event Alignment",
         "video_category": "Pets", "video_duration": "30s"},
        {"Question": "Which sound comes first?", "Choice": ["A. bell", "B. horn", "C. voice", "D. music"],
         "Answer": "D", "video_id": "vidB", "Type": "Event Sequence", "video_duration": "60s"},
        {"Question": "Q3?", "Choice": ["A. x", "B. y"], "Answer": "y", "video_id": "vidC", "Type": "Reasoning",
         "video_path": "/elsewhere/c.mp4"},
    ]
    path = _write_json(tmp_path / "qa.json", recs)
    a, b, c = read_manifest(path, schema="dailyomni", video_root=root)
    assert a.options == ["A dog barks", "A man waves", "Nothing", "Rain starts"] and a.answer == "B"
    assert a.video == str(root / "vidA.mp4") and a.category == "AV Event Alignment" and a.id == "vidA-0"
    assert b.video == str(root / "vidB" / "vidB_video.mp4") and b.answer == "D"
    assert c.video == "/elsewhere/c.mp4" and c.answer == "B"
    assert read_manifest(path, video_root=root) == [a, b, c]  # auto-detected
    assert "Which sound comes first?\nA. bell\nB. horn\nC. voice\nD. music\n" in build_prompt(b)


def test_read_worldsense_flat_and_nested(tmp_path):
    flat = [
        {"index": 7, "video": "Zh3", "video_path": "./videos/Zh3.mp4", "question": "What is heard?",
         "candidates": ["A. a drum", "B. a flute", "C. a violin", "D. a choir"], "answer": "C",
         "task_type": "Audio Recognition", "task_domain": "Recognition", "domain": "Music", "duration": "<1min"},
        # VLMEvalKit's TSV rows store candidates as the string form of a list; category falls back to the domain
        {"index": 8, "video": "Ab1", "question": "Who speaks?", "candidates": "['A. the man', 'B. the woman']",
         "answer": "B", "task_domain": "Understanding"},
    ]
    path = _write_jsonl(tmp_path / "worldsense.jsonl", flat)
    a, b = read_manifest(path, schema="worldsense", video_root=tmp_path)
    assert (a.id, a.video, a.options, a.answer, a.category) == (
        "7", str(tmp_path / "videos" / "Zh3.mp4"), ["a drum", "a flute", "a violin", "a choir"], "C", "Audio Recognition")
    assert (b.id, b.video, b.options, b.answer, b.category) == (
        "8", str(tmp_path / "Ab1.mp4"), ["the man", "the woman"], "B", "Understanding")
    assert read_manifest(path, video_root=tmp_path) == [a, b]

    nested = {"Zh3": {"duration": "<1min", "domain": "Music", "sub_category": "Band", "audio_class": ["music"],
                      "video_caption": "...",
                      "task1": {"question": "Q1?", "candidates": ["A. x", "B. y", "C. z", "D. w"], "answer": "D",
                                "task_domain": "Recognition", "task_type": "Audio Recognition"},
                      "task2": {"question": "Q2?", "candidates": ["A. x", "B. y", "C. z", "D. w"], "answer": "A",
                                "task_domain": "Reasoning", "task_type": "Causal Reasoning"}}}
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "Zh3.mp4").write_bytes(b"")
    s1, s2 = read_manifest(_write_json(tmp_path / "worldsense_qa.json", nested), video_root=tmp_path)
    assert (s1.id, s1.answer, s1.category, s2.id, s2.answer) == ("Zh3/task1", "D", "Audio Recognition", "Zh3/task2", "A")
    assert s1.video == s2.video == str(tmp_path / "videos" / "Zh3.mp4")


def test_answers_and_option_prefixes_are_normalised(tmp_path):
    def one(options, answer):
        rec = {"id": "x", "video": "v.mp4", "question": "Q?", "options": options, "answer": answer}
        (s,) = read_manifest(_write_json(tmp_path / "one.json", [rec]))
        return s.options, s.answer

    assert one(["cat", "dog", "bird"], "dog") == (["cat", "dog", "bird"], "B")
    assert one(["cat", "dog", "bird"], " Bird. ") == (["cat", "dog", "bird"], "C")  # case / spaces / final period
    assert one(["cat", "dog", "bird"], "(C)") == (["cat", "dog", "bird"], "C")
    assert one(["cat", "dog", "bird"], "a") == (["cat", "dog", "bird"], "A")
    assert one(["cat", "dog", "bird"], 1) == (["cat", "dog", "bird"], "B")  # 0-based index
    assert one(["(A) cat", "(B) dog"], "(B) dog") == (["cat", "dog"], "B")
    assert one(["A) cat", "B) dog"], "B. dog") == (["cat", "dog"], "B")
    # out-of-order prefixes: re-lettered by position, letter answers follow the original prefix
    assert one(["B. dog", "A. cat"], "A") == (["dog", "cat"], "B")
    assert one(["B. dog", "A. cat"], "dog") == (["dog", "cat"], "A")
    # "A dog" is not a prefix; "I. x"/"Q. y" are not the first letters -> kept verbatim
    assert one(["A dog", "B cat"], "A dog") == (["A dog", "B cat"], "A")
    assert one(["I. x", "Q. y"], "Q. y") == (["I. x", "Q. y"], "B")
    sample = AVQASample("x", "v.mp4", " Q? ", ["cat", "dog"], "B", None)
    assert build_prompt(sample) == f"Q?\nA. cat\nB. dog\n{ANSWER_INSTRUCTION}"
    assert ANSWER_INSTRUCTION == "Answer with the option's letter from the given choices directly."


def test_bad_records_raise_with_file_line_and_key(tmp_path):
    good = {"id": "a", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, {"id": "b", "video": "b.mp4", "question": "Q?", "answer": "A"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: missing key 'options'"):
        read_manifest(path)
    daily = {"Question": "Q?", "Choice": ["A. x", "B. y"], "Answer": "A", "video_id": "v"}
    path = _write_json(tmp_path / "daily.json", [daily, {k: v for k, v in daily.items() if k != "Answer"}])
    with pytest.raises(ValueError, match=r"daily\.json: index 1: missing key 'Answer'"):
        read_manifest(path)
    path = _write_json(tmp_path / "ws.json", [{"question": "Q?", "candidates": ["A. x", "B. y"], "answer": "A"}])
    with pytest.raises(ValueError, match=r"ws\.json: index 0: missing key 'video_path' \(or 'video', 'video_id'\)"):
        read_manifest(path)
    for answer, pattern in [("C", r"out of range for 2 options"), ("zebra", r"neither a letter A-B nor the text")]:
        path = _write_json(tmp_path / "ans.json", [good, {**good, "id": "c", "answer": answer}])
        with pytest.raises(ValueError, match=rf"ans\.json: index 1: answer .*{pattern}"):
            read_manifest(path)
    with pytest.raises(ValueError, match=r"index 0: need 2 to 26 options, got 1"):
        read_manifest(_write_json(tmp_path / "one.json", [{**good, "options": ["x"]}]))
    with pytest.raises(ValueError, match=r"duplicate id 'a'"):
        read_manifest(_write_json(tmp_path / "dup.json", [good, good]))
    with pytest.raises(ValueError, match=r"cannot detect the manifest schema"):
        read_manifest(_write_json(tmp_path / "what.json", [{"foo": 1}]))
    with pytest.raises(ValueError, match=r"line 1: invalid JSON"):
        (tmp_path / "broken.jsonl").write_text("{not json\n")
        read_manifest(tmp_path / "broken.jsonl")
    with pytest.raises(ValueError, match=r"unknown schema 'mmlu'"):
        read_manifest(path, schema="mmlu")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nope.json")


# --------------------------------------------------------------------------------------------- items


@pytest.fixture(scope="module")
def train_items(media, processor):
    ds = AVQADataset([_sample(media, "av_short.mp4", "short", "B"), _sample(media, "av_long.mp4", "long", "C")],
                     processor, train=True, frame_size=FRAME)
    return ds, [ds[0], ds[1]]


def test_train_item_labels_only_on_answer_tokens(train_items, processor):
    ds, (item, _) = train_items
    tok = processor.tokenizer
    ids, labels = item["input_ids"], item["labels"]
    assert ids.ndim == 1 and labels.shape == ids.shape and item["attention_mask"].all()
    supervised = labels != IGNORE_INDEX
    assert supervised.sum() == 2 and supervised[-2:].all()  # contiguous, at the end
    assert torch.equal(labels[supervised], ids[supervised])
    assert tok.decode(labels[supervised]) == "B<|im_end|>"
    assert tok.decode(ids[-5:]).endswith("<|im_start|>assistant\nB<|im_end|>")
    assert item["video_grid_thw"].tolist() == [[2, 8, 8]]  # 4 frames at 2 fps -> 2 temporal grids
    assert item["input_features"].shape[0] == 128 and item["input_features"].shape[1] == item["feature_attention_mask"].shape[0]
    assert item["feature_attention_mask"].all()  # trimmed to the clip's own audio
    assert (item["answer"], item["category"], item["num_options"], item["id"]) == ("B", "animals", 3, "short")
    assert item["use_audio_in_video"] is True
    assert ds.data.num_rows == 2 and ds.data.column_names == ["id", "video", "question", "options", "answer", "category"]


def test_eval_item_ends_with_generation_prompt_and_matches_omni_inputs(media, processor, thinker):
    from sift.testbed.media import load_clip

    sample = _sample(media)
    item = AVQADataset([sample], processor, train=False, frame_size=FRAME)[0]
    assert "labels" not in item
    tok = processor.tokenizer
    gen_prompt = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert item["input_ids"][-len(gen_prompt):].tolist() == gen_prompt
    # identical to the library's reference processing path, and to its model output
    ref = omni_inputs(processor, [load_clip(sample.video, size=(FRAME, FRAME))], [build_prompt(sample)])
    assert torch.equal(item["input_ids"], ref["input_ids"][0])
    assert torch.equal(item["pixel_values_videos"], ref["pixel_values_videos"])
    batch = collate([item], tok.pad_token_id)
    with torch.no_grad():
        ours = thinker(**{k: batch[k] for k in THINKER_INPUT_KEYS if k in batch}).logits
        theirs = thinker(**ref).logits
    torch.testing.assert_close(ours, theirs)


def test_collate_left_pads_two_items(train_items, processor):
    _, (short, long) = train_items
    pad = processor.tokenizer.pad_token_id
    n0, n1 = short["input_ids"].shape[0], long["input_ids"].shape[0]
    assert n1 > n0
    b = collate([short, long], pad)
    assert b["input_ids"].shape == b["attention_mask"].shape == b["labels"].shape == (2, n1)
    assert (b["input_ids"][0, : n1 - n0] == pad).all() and torch.equal(b["input_ids"][0, n1 - n0 :], short["input_ids"])
    assert b["attention_mask"][0].tolist() == [0] * (n1 - n0) + [1] * n0 and b["attention_mask"][1].all()
    assert (b["labels"][0, : n1 - n0] == IGNORE_INDEX).all()
    tok = processor.tokenizer
    assert [tok.decode(row[row != IGNORE_INDEX]) for row in b["labels"]] == ["B<|im_end|>", "C<|im_end|>"]
    assert b["pixel_values_videos"].shape[0] == short["pixel_values_videos"].shape[0] + long["pixel_values_videos"].shape[0]
    assert b["video_grid_thw"].tolist() == [[2, 8, 8], [4, 8, 8]]
    assert b["video_second_per_grid"].tolist() == [1.0, 1.0]
    t0, t1 = short["input_features"].shape[-1], long["input_features"].shape[-1]
    assert b["input_features"].shape == (2, 128, max(t0, t1)) and b["feature_attention_mask"].shape == (2, max(t0, t1))
    assert b["feature_attention_mask"].sum(-1).tolist() == [t0, t1]
    assert (b["input_features"][0, :, t0:] == 0).all()
    assert b["use_audio_in_video"] is True and b["skipped"] == 0
    assert (b["answer"], b["category"], b["num_options"], b["id"]) == (["B", "C"], ["animals"] * 2, [3, 3], ["short", "long"])
    assert collate([None, None], pad) == {"skipped": 2, "empty": True}


def test_missing_and_corrupt_videos_are_skipped(media, processor, tmp_path, caplog):
    recs = [
        {"id": "ok1", "video": str(media / "av_short.mp4"), "question": "Q?", "options": ["x", "y"], "answer": "A"},
        {"id": "broken", "video": str(media / "corrupt.mp4"), "question": "Q?", "options": ["x", "y"], "answer": "A"},
        {"id": "gone", "video": str(media / "missing.mp4"), "question": "Q?", "options": ["x", "y"], "answer": "B"},
        {"id": "ok2", "video": str(media / "av_short.mp4"), "question": "R?", "options": ["x", "y"], "answer": "B"},
    ]
    ds = AVQADataset(read_manifest(_write_jsonl(tmp_path / "m.jsonl", recs)), processor, train=True, frame_size=FRAME)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        items = [ds[i] for i in range(len(ds))]
    assert [it is None for it in items] == [False, True, True, False]
    assert "cannot decode" in ds.skip_reasons["broken"] and "not found" in ds.skip_reasons["gone"]
    logged = caplog.text
    assert "'broken'" in logged and "cannot decode" in logged and "'gone'" in logged and "not found" in logged
    batch = collate(items, processor.tokenizer.pad_token_id)
    assert batch["skipped"] == 2 and batch["id"] == ["ok1", "ok2"] and batch["input_ids"].shape[0] == 2


def test_skip_warnings_are_rate_limited(tmp_path, processor, caplog):
    samples = [AVQASample(f"m{i}", str(tmp_path / f"m{i}.mp4"), "Q?", ["x", "y"], "A") for i in range(25)]
    ds = AVQADataset(samples, processor, frame_size=FRAME)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        assert all(ds[i] is None for i in range(len(ds)))
    records = [r for r in caplog.records if r.name == "train.data"]
    assert len(records) == 10 and "'m0'" in records[0].getMessage() and "rate-limited" in records[-1].getMessage()
    assert len(ds.skip_reasons) == 25


def test_silent_video_needs_use_audio_in_video_false(media, processor, thinker, caplog):
    sample = _sample(media, "silent.mp4", "quiet", "A")
    with caplog.at_level(logging.WARNING, logger="train.data"):
        assert AVQADataset([sample], processor, frame_size=FRAME, use_audio_in_video=True)[0] is None
    assert "'quiet'" in caplog.text and "no audio track" in caplog.text
    item = AVQADataset([sample], processor, frame_size=FRAME, use_audio_in_video=False)[0]
    assert item is not None and "input_features" not in item and item["use_audio_in_video"] is False
    batch = collate([item], processor.tokenizer.pad_token_id)
    assert batch["use_audio_in_video"] is False and "input_features" not in batch
    with torch.no_grad():
        loss = thinker(**{k: batch[k] for k in THINKER_INPUT_KEYS if k in batch}, labels=batch["labels"]).loss
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------------------------- datamodule


def test_datamodule_batches_feed_the_tiny_thinker(media, tmp_path, thinker):
    train = [
        {"id": "t1", "video": "av_short.mp4", "question": "What moves?", "options": ["a square", "a circle"], "answer": "a square"},
        {"id": "t2", "video": "av_long.mp4", "question": "What sound?", "options": ["A. a tone", "B. speech", "C. silence"], "answer": "A"},
        {"id": "t3", "video": "missing.mp4", "question": "Q?", "options": ["x", "y"], "answer": "B"},
    ]
    val = [
        {"Question": "Which color?", "Choice": ["A. red", "B. blue"], "Answer": "B", "video_id": "av_short", "Type": "Color"},
        {"Question": "Second?", "Choice": ["A. red", "B. blue"], "Answer": "A", "video_id": "av_long", "Type": "Color"},
    ]
    dm = AVQADataModule(
        train_manifest=str(_write_json(tmp_path / "train.json", train)),
        val_manifest=str(_write_json(tmp_path / "val.json", val)),
        video_root=str(media),
        frame_size=FRAME,
        batch_size=3,
        val_limit=1,
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 1
    (batch,) = list(dm.train_dataloader())
    assert batch["skipped"] == 1 and sorted(batch["id"]) == ["t1", "t2"]
    thinker.train()
    try:
        out = thinker(**{k: batch[k] for k in THINKER_INPUT_KEYS if k in batch}, labels=batch["labels"])
    finally:
        thinker.eval()
    assert torch.isfinite(out.loss)
    out.loss.backward()
    thinker.zero_grad(set_to_none=True)

    (vbatch,) = list(dm.val_dataloader())
    assert "labels" not in vbatch and vbatch["skipped"] == 0
    assert (vbatch["answer"], vbatch["category"], vbatch["num_options"]) == (["B"], ["Color"], [2])
    inputs = {k: vbatch[k] for k in THINKER_INPUT_KEYS if k in vbatch}
    with torch.no_grad():
        gen = thinker.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert gen.shape == (1, vbatch["input_ids"].shape[1] + 1)
    assert dm.pad_token_id == dm.processor.tokenizer.pad_token_id
