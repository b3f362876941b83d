"""sift.synthav: the procedural audio-visual QA benchmark (specs, questions, rendering, mp4 + manifests, CLI)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict

import av
import numpy as np
import pytest

from sift.cli import main
from sift.manifest import read_manifest
from sift.media import load_clip
from sift.synthav import (
    CATEGORIES,
    COLORS,
    FPS,
    QUESTIONS,
    SAMPLE_RATE,
    SHAPES,
    SOUNDS,
    ClipSpec,
    describe,
    generate,
    make_spec,
    questions_for,
    render_clip,
    vocabulary_texts,
    caption,
    CAPTION_PROMPT,
)

LETTERS = "ABCD"


def _color_pixels(frame: np.ndarray, rgb, tol: int = 40) -> int:
    """Pixels within ``tol`` (per channel) of ``rgb``."""
    return int((np.abs(frame.astype(np.int16) - np.asarray(rgb, dtype=np.int16)).max(-1) <= tol).sum())


def _frame_index_in(lo: float, hi: float) -> int:
    """The first 2 fps frame index k with lo <= k / FPS < hi."""
    k = math.ceil(lo * FPS)
    assert lo <= k / FPS < hi, (lo, hi)
    return k


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def _dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)[int(np.argmax(spec))])


def _segment(audio: np.ndarray, e, pad: float = 0.05) -> np.ndarray:
    return audio[int((e.sound_start + pad) * SAMPLE_RATE) : int((e.sound_end - pad) * SAMPLE_RATE)]


def _find_spec(pred, split: str = "test", **kw) -> ClipSpec:
    for i in range(200):
        s = make_spec(0, split, i, **kw)
        if pred(s):
            return s
    raise AssertionError("no spec satisfies the predicate")


# ------------------------------------------------------------------------------------------ specs


def test_make_spec_is_deterministic_per_seed_split_index():
    """A spec is a pure function of (seed, split, index): the same call gives the same spec; another index,
    split or seed gives a different one (splits use disjoint random streams)."""
    a = make_spec(0, "train", 5)
    assert asdict(make_spec(0, "train", 5)) == asdict(a)
    assert describe(a) == asdict(a)
    for other in (("train", 6, 0), ("validation", 5, 0), ("test", 5, 0), ("train", 5, 1)):
        split, index, seed = other
        assert asdict(make_spec(seed, split, index)) != asdict(a), other
    # the first clips of the three splits are not the same clips
    firsts = {json.dumps(asdict(make_spec(0, s, i))) for s in ("train", "validation", "test") for i in range(20)}
    assert len(firsts) == 60


def test_make_spec_layout_invariants():
    """Over many specs: whole-second durations in [min, max] (every value reached), 2-4 events in disjoint,
    ordered time slots inside the clip, each on screen for >= 1 s; distinct colors, shapes and sounds; the
    high tone exactly once; every sound inside its shape's on-screen interval, covering at least one 2 fps
    frame; shapes fully inside the frame."""
    seen_seconds, seen_n = set(), set()
    for split in ("train", "test"):
        for i in range(150):
            s = make_spec(3, split, i, min_seconds=6, max_seconds=12, size=112)
            assert isinstance(s.seconds, int) and 6 <= s.seconds <= 12
            assert s.size == 112
            seen_seconds.add(s.seconds)
            n = len(s.events)
            seen_n.add(n)
            assert 2 <= n <= 4
            colors = [e.color for e in s.events]
            shapes = [e.shape for e in s.events]
            sounds = [e.sound for e in s.events]
            assert len(set(colors)) == n and set(colors) <= set(COLORS)
            assert len(set(shapes)) == n and set(shapes) <= set(SHAPES)
            assert len(set(sounds)) == n and set(sounds) <= set(SOUNDS)
            assert sounds.count("high tone") == 1
            assert s.high_tone_event.sound == "high tone"
            for k, e in enumerate(s.events):
                assert 0.0 <= e.start < e.end <= s.seconds
                assert e.end - e.start >= 1.0
                if k:
                    assert s.events[k - 1].end <= e.start  # disjoint, in order
                assert e.start <= e.sound_start < e.sound_end <= e.end
                assert 0.5 - 1e-9 <= e.sound_end - e.sound_start <= 0.9 + 1e-9
                _frame_index_in(e.sound_start, e.sound_end)  # some frame sees the shape while it sounds
                assert 0.17 * 112 <= e.radius <= 0.22 * 112
                assert e.radius < e.x0 < 112 - e.radius and e.radius < e.y0 < 112 - e.radius
    assert seen_seconds == set(range(6, 13))
    assert seen_n == {2, 3, 4}
    # min == max fixes the duration
    assert {make_spec(0, "train", i, min_seconds=7, max_seconds=7).seconds for i in range(10)} == {7}


def test_sound_inside_shape_interval_for_shortest_clips():
    """Each sound plays while its shape is on screen also for the shortest (4 s, two 2 s slots) clips,
    where a sound's length is clamped to fit (index 15196 used to start 0.016 s early)."""
    for i in [15196, 28090, *range(2000)]:
        s = make_spec(0, "train", i, min_seconds=4, max_seconds=4)
        for e in s.events:
            assert e.start <= e.sound_start < e.sound_end <= e.end


def test_generate_refuses_a_folder_made_with_other_settings(tmp_path):
    """Resuming into a folder of another seed would pair old videos with new labels: refused, nothing written."""
    generate(tmp_path, {"test": 1}, seed=0, workers=1, progress=False)
    before = (tmp_path / "test.jsonl").read_text()
    with pytest.raises(ValueError, match="other settings"):
        generate(tmp_path, {"test": 1}, seed=1, workers=1, progress=False)
    assert (tmp_path / "test.jsonl").read_text() == before
    generate(tmp_path, {"train": 1}, seed=0, workers=1, progress=False)  # same settings, another split: fine
    assert json.loads((tmp_path / "synthav.json").read_text())["splits"] == {"test": 1, "train": 1}


def test_questions_answers_and_option_order():
    """Three questions per clip, in CATEGORIES order; options in QUESTIONS' fixed order; the cross-modal
    answer is the color of the shape on screen during the high tone, the audio answer the first event's
    sound, the video answer the first event's color; a subset of categories gives just those."""
    assert CATEGORIES == ("cross-modal", "audio", "video")
    for i in range(50):
        s = make_spec(0, "validation", i)
        qs = questions_for(s)
        assert [q["category"] for q in qs] == list(CATEGORIES)
        by = {q["category"]: q for q in qs}
        for cat, q in by.items():
            assert q["question"] == QUESTIONS[cat][0]
            assert q["options"] == list(QUESTIONS[cat][1])
            assert set(q) == {"question", "options", "answer", "category"}
        assert by["cross-modal"]["options"] == ["red", "green", "blue", "yellow"]
        assert by["audio"]["options"] == ["low tone", "high tone", "chirp", "noise burst"]
        assert by["video"]["options"] == ["red", "green", "blue", "yellow"]
        ht = s.high_tone_event
        assert by["cross-modal"]["options"][LETTERS.index(by["cross-modal"]["answer"])] == ht.color
        assert by["audio"]["options"][LETTERS.index(by["audio"]["answer"])] == s.events[0].sound
        assert by["video"]["options"][LETTERS.index(by["video"]["answer"])] == s.events[0].color
    s = make_spec(0, "validation", 0)
    assert [q["category"] for q in questions_for(s, ["video", "audio"])] == ["video", "audio"]
    # a hand-built spec: the high tone is on the second (blue) shape
    s.events[0].color, s.events[0].sound, s.events[0].shape = "yellow", "chirp", "cross"
    s.events[1].color, s.events[1].sound = "blue", "high tone"
    for e in s.events[2:]:
        e.sound = "noise burst"
    assert [q["answer"] for q in questions_for(s)] == ["C", "C", "D"]  # blue, chirp, yellow


def test_answers_are_balanced_over_letters():
    """Over 400 specs each answer letter of each category has frequency in 0.18..0.32 (uniform design)."""
    specs = [make_spec(0, "train", i) for i in range(400)]
    for cat in CATEGORIES:
        counts = Counter(questions_for(s, [cat])[0]["answer"] for s in specs)
        assert set(counts) == set(LETTERS), (cat, counts)
        for letter in LETTERS:
            assert 0.18 <= counts[letter] / 400 <= 0.32, (cat, counts)
    # the high tone is not always the first sound, nor always on the same slot
    positions = Counter(next(k for k, e in enumerate(s.events) if e.sound == "high tone") for s in specs)
    assert len(positions) >= 3


def test_vocabulary_texts_cover_prompts():
    """vocabulary_texts holds the answer instruction, every question and every lettered option."""
    from sift.manifest import ANSWER_INSTRUCTION

    texts = vocabulary_texts()
    assert ANSWER_INSTRUCTION in texts
    for question, options in QUESTIONS.values():
        assert question in texts
        for i, o in enumerate(options):
            assert f"{LETTERS[i]}. {o}" in texts
    assert CAPTION_PROMPT in texts
    words = {w for t in texts for w in t.replace(".", " ").split()}
    assert set(caption(make_spec(0, "test", 0)).replace(".", " ").split()) <= words


def test_caption_names_every_event_in_order():
    """The caption lists each shape (color, kind) with its sound, in time order."""
    spec = make_spec(0, "test", 0)
    spec.events = spec.events[:2]
    spec.events[0].color, spec.events[0].shape, spec.events[0].sound = "red", "circle", "chirp"
    spec.events[1].color, spec.events[1].shape, spec.events[1].sound = "blue", "cross", "high tone"
    assert caption(spec) == "A red circle appears with a chirp. A blue cross appears with a high tone."


# ------------------------------------------------------------------------------------------ rendering


def test_render_clip_frames_show_the_right_shape():
    """Frames are (2*seconds, size, size, 3) uint8 at 2 fps; during each sound exactly that event's color is
    on screen (a shape-sized blob) and no other shape color; frames outside every slot show no shape
    color; rendering is deterministic."""
    for i in range(4):
        s = make_spec(0, "test", i, min_seconds=6, max_seconds=10, size=96)
        clip = render_clip(s)
        assert clip.frames.shape == (2 * s.seconds, 96, 96, 3) and clip.frames.dtype == np.uint8
        assert clip.fps == FPS == 2.0 and clip.sample_rate == SAMPLE_RATE
        for e in s.events:
            k = _frame_index_in(e.sound_start, e.sound_end)
            counts = {c: _color_pixels(clip.frames[k], rgb) for c, rgb in COLORS.items()}
            assert counts[e.color] >= 1.5 * e.radius**2, counts  # smallest shape area ~1.8 r^2
            assert all(v == 0 for c, v in counts.items() if c != e.color), counts
        for k in range(clip.num_frames):
            t = k / FPS
            if not any(e.start <= t < e.end for e in s.events):
                assert all(_color_pixels(clip.frames[k], rgb) == 0 for rgb in COLORS.values())
    again = render_clip(s)
    assert np.array_equal(again.frames, clip.frames) and np.array_equal(again.audio, clip.audio)


def test_render_clip_shapes_move():
    """Shapes move: the on-screen blob of an event is not at the same place in two of its frames."""
    s = make_spec(0, "train", 1, min_seconds=12, max_seconds=12)
    clip = render_clip(s)
    e = s.events[0]
    ks = [k for k in range(clip.num_frames) if e.start <= k / FPS < e.end]
    assert len(ks) >= 2
    masks = [(np.abs(clip.frames[k].astype(int) - COLORS[e.color]).max(-1) <= 40) for k in (ks[0], ks[-1])]
    assert masks[0].sum() > 0 and masks[1].sum() > 0
    assert not np.array_equal(masks[0], masks[1])


def test_render_clip_audio_events_and_frequencies():
    """The 16 kHz waveform is seconds*16000 float32 samples; it is loud (RMS > 0.2) during every sound and
    near-silent (RMS < 0.01) away from them; the high tone's dominant frequency is 1760 Hz and the low
    tone's 330 Hz."""
    s = _find_spec(lambda s: any(e.sound == "low tone" for e in s.events), min_seconds=6, max_seconds=10)
    clip = render_clip(s)
    audio = clip.audio
    assert audio.dtype == np.float32 and audio.shape == (s.seconds * SAMPLE_RATE,)
    silent = np.ones(len(audio), dtype=bool)
    for e in s.events:
        assert _rms(_segment(audio, e)) > 0.2, e.sound
        silent[max(0, int((e.sound_start - 0.05) * SAMPLE_RATE)) : int((e.sound_end + 0.05) * SAMPLE_RATE)] = False
    assert silent.sum() > SAMPLE_RATE  # more than a second of silence
    assert 0 < _rms(audio[silent]) < 0.01
    assert float(np.abs(audio).max()) <= 1.0
    by_sound = {e.sound: e for e in s.events}
    assert _dominant_hz(_segment(audio, by_sound["high tone"])) == pytest.approx(1760, abs=5)
    assert _dominant_hz(_segment(audio, by_sound["low tone"])) == pytest.approx(330, abs=5)


# ------------------------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small SynthAV dataset: 3 train + 2 test clips of 6-8 s (single process, no progress bar)."""
    out = tmp_path_factory.mktemp("synthav")
    paths = generate(out, {"train": 3, "test": 2}, min_seconds=6, max_seconds=8, workers=1, progress=False)
    return out, paths


def test_generate_writes_videos_and_manifests(dataset):
    """generate writes videos/<split>-<index>.mp4 and <split>.jsonl per split plus synthav.json; each record
    is the clip's questions with id, relative video path and duration; read_manifest reads it as the generic
    schema with 3 records per clip and the three categories, and the answers match the specs."""
    out, paths = dataset
    assert set(paths) == {"train", "test"}
    assert paths["train"] == out / "train.jsonl" and paths["test"] == out / "test.jsonl"
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        "test-00000.mp4",
        "test-00001.mp4",
        "train-00000.mp4",
        "train-00001.mp4",
        "train-00002.mp4",
    ]
    info = json.loads((out / "synthav.json").read_text())
    assert info["splits"] == {"train": 3, "test": 2} and info["seed"] == 0
    assert (info["min_seconds"], info["max_seconds"], info["size"], info["fps"]) == (6, 8, 112, 2.0)
    assert info["categories"] == list(CATEGORIES)

    for split, count in (("train", 3), ("test", 2)):
        raw = [json.loads(line) for line in paths[split].read_text().splitlines()]
        assert len(raw) == 3 * count
        samples = read_manifest(paths[split])
        assert len(samples) == 3 * count
        assert Counter(x.category for x in samples) == {c: count for c in CATEGORIES}
        for i in range(count):
            spec = make_spec(0, split, i, min_seconds=6, max_seconds=8)
            expected = questions_for(spec)
            recs = raw[3 * i : 3 * i + 3]
            for rec, q, sample in zip(recs, expected, samples[3 * i : 3 * i + 3]):
                assert rec == {
                    "id": f"{split}-{i:05d}-{q['category']}",
                    "video": f"videos/{split}-{i:05d}.mp4",
                    **q,
                    "seconds": spec.seconds,
                    "caption": caption(spec),
                }
                assert sample.id == rec["id"] and sample.answer == q["answer"]
                assert sample.options == q["options"] and sample.question == q["question"]
                assert sample.video == str(out / "videos" / f"{split}-{i:05d}.mp4")


def test_generated_clip_round_trip(dataset):
    """A written clip decodes (load_clip) to 2*seconds frames of 112x112 and ~seconds of 16 kHz audio; after
    the H.264/AAC round trip the frame during the high tone still shows only the answer's color, the high
    tone is still at 1760 Hz, and the streams are h264 (mpeg4 fallback) + aac."""
    out, _ = dataset
    for i in range(3):
        spec = make_spec(0, "train", i, min_seconds=6, max_seconds=8)
        path = out / "videos" / f"train-{i:05d}.mp4"
        clip = load_clip(path)
        assert clip.frames.shape == (2 * spec.seconds, 112, 112, 3)
        assert clip.sample_rate == 16000
        assert len(clip.audio) / 16000 == pytest.approx(spec.seconds, abs=0.1)
        ref = render_clip(spec)
        assert np.abs(clip.frames.astype(int) - ref.frames.astype(int)).mean() < 6
        e = spec.high_tone_event
        k = _frame_index_in(e.sound_start, e.sound_end)
        counts = {c: _color_pixels(clip.frames[k], rgb) for c, rgb in COLORS.items()}
        assert counts[e.color] >= 1.2 * e.radius**2, counts
        assert all(v == 0 for c, v in counts.items() if c != e.color), counts
        answer = questions_for(spec, ["cross-modal"])[0]
        assert answer["options"][LETTERS.index(answer["answer"])] == e.color
        assert _dominant_hz(_segment(clip.audio, e)) == pytest.approx(1760, abs=5)
        assert _rms(_segment(clip.audio, e)) > 0.2
        with av.open(str(path)) as container:
            kinds = {s.type: s.codec_context.name for s in container.streams}
        assert kinds["video"] in ("h264", "mpeg4") and kinds["audio"] == "aac"


def test_generate_is_resumable(dataset):
    """Running generate again keeps the existing mp4s untouched and rewrites identical manifests; a deleted
    clip is re-rendered."""
    out, paths = dataset
    before = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    manifests = {s: p.read_bytes() for s, p in paths.items()}
    missing = out / "videos" / "test-00001.mp4"
    missing.unlink()
    again = generate(out, {"train": 3, "test": 2}, min_seconds=6, max_seconds=8, workers=1, progress=False)
    assert again == paths
    assert {s: p.read_bytes() for s, p in again.items()} == manifests
    after = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    assert set(after) == set(before)
    assert all(after[n] == before[n] for n in before if n != "test-00001.mp4")
    assert load_clip(missing).frames.shape[0] == 2 * make_spec(0, "test", 1, min_seconds=6, max_seconds=8).seconds
    assert not list((out / "videos").glob("*.tmp.mp4"))


def test_generate_subset_of_categories_and_parallel_workers(tmp_path):
    """``categories`` restricts the questions per clip; two worker processes write the same manifest as one."""
    kw = dict(min_seconds=6, max_seconds=6, categories=["video"], progress=False)
    one = generate(tmp_path / "one", {"validation": 2}, workers=1, **kw)
    two = generate(tmp_path / "two", {"validation": 2}, workers=2, **kw)
    recs = [json.loads(line) for line in one["validation"].read_text().splitlines()]
    assert [r["category"] for r in recs] == ["video", "video"]
    assert one["validation"].read_bytes() == two["validation"].read_bytes()
    written = sorted(p.name for p in (tmp_path / "two" / "videos").iterdir())
    assert written == ["validation-00000.mp4", "validation-00001.mp4"]


# ------------------------------------------------------------------------------------------ errors


def test_errors_name_the_problem(tmp_path):
    """Unknown split, unknown category, min_seconds > max_seconds (or < 4), a too small frame and a negative
    count raise ValueError naming the problem; generate validates before writing anything."""
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_spec(0, "dev", 0)
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        make_spec(0, "train", 0, min_seconds=10, max_seconds=8)
    with pytest.raises(ValueError, match="4 <= min_seconds"):
        make_spec(0, "train", 0, min_seconds=3, max_seconds=8)
    with pytest.raises(ValueError, match="size must be at least 56"):
        make_spec(0, "train", 0, size=32)
    with pytest.raises(ValueError, match="unknown SynthAV category 'color'"):
        questions_for(make_spec(0, "train", 0), ["color"])

    out = tmp_path / "never"
    cases = [
        (dict(splits={"dev": 1}), "unknown split 'dev'"),
        (dict(splits={"train": 1}, categories=["audio", "color"]), "unknown SynthAV category 'color'"),
        (dict(splits={"train": 1}, min_seconds=9, max_seconds=6), "min_seconds <= max_seconds"),
        (dict(splits={"train": 1}, size=40), "size must be at least 56"),
        (dict(splits={"train": -1}), "count must be >= 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(out, workers=1, progress=False, **kwargs)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_synthav(tmp_path, capsys):
    """``sift synthav OUT --test 1`` returns 0, writes test.jsonl (3 questions) and its clip and prints the
    manifest path; without any count, or with an unknown category, it exits with code 2 and an error."""
    out = tmp_path / "sa"
    assert main(["synthav", str(out), "--test", "1", "--workers", "1", "--max-seconds", "8"]) == 0
    assert len(read_manifest(out / "test.jsonl")) == 3
    assert (out / "videos" / "test-00000.mp4").is_file()
    assert not (out / "train.jsonl").exists()
    assert str(out / "test.jsonl") in capsys.readouterr().out

    with pytest.raises(SystemExit) as exc:
        main(["synthav", str(tmp_path / "none")])
    assert exc.value.code == 2
    assert "nothing to generate" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(["synthav", str(tmp_path / "bad"), "--test", "1", "--categories", "audio", "smell"])
    assert exc.value.code == 2
    assert "smell" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(["synthav", str(tmp_path / "short"), "--test", "1", "--min-seconds", "9", "--max-seconds", "6"])
    assert exc.value.code == 2
    assert "min_seconds" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "short").exists()
