"""Temporal sampling, frame and video reading, spatial transforms and clip gathering (docs/method.md §8–9)."""

from __future__ import annotations

import pickle
import types
import warnings

import av
import numpy as np
import pytest
import torch

import tpt_aqa.data.transforms as transforms_module
import tpt_aqa.data.video as video_module
from tpt_aqa.benchmarks.frames import benchmark_frame_loading, textured_frames
from tpt_aqa.data.clips import ClipSampler, unique_frames
from tpt_aqa.data.transforms import (
    CropParams,
    VideoTransform,
    frames_to_clips,
)
from tpt_aqa.data.video import (
    VideoReadError,
    count_frames,
    list_frames,
    load_clips,
    read_frame_folder,
    read_frames,
    read_video_file,
    write_frame_folder,
)

# ---------------------------------------------------------------------------------------- helpers


def smooth_frames(num: int, height: int = 48, width: int = 64) -> torch.Tensor:
    """Distinct, JPEG-friendly frames: a gradient plus a per-frame colour ``(F, 3, H, W)``."""
    y = torch.linspace(0, 60, height)[:, None]
    x = torch.linspace(0, 60, width)[None, :]
    frames = torch.empty(num, 3, height, width)
    for f in range(num):
        colour = torch.tensor([(f * 37) % 130, (f * 71) % 130, (f * 13) % 130], dtype=torch.float32)
        frames[f] = colour[:, None, None] + y + x
    return frames.round().to(torch.uint8)


def flat_colour(i: int) -> tuple[int, int, int]:
    """Clearly distinct colours for the frames of the synthetic video."""
    return (20 + (i * 47) % 200, 20 + (i * 89) % 200, 20 + (i * 113) % 200)


def write_video(path, num_frames: int = 30, width: int = 64, height: int = 48) -> None:
    """H.264 video of flat-coloured frames, a keyframe every 5 frames so seeking is exercised."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 5
        for i in range(num_frames):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[:] = flat_colour(i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "flat.mp4"
    write_video(path)
    return path


NEEDS_SIMPLEJPEG = pytest.mark.skipif(
    video_module.simplejpeg is None, reason="simplejpeg not installed"
)
DECODERS = ["pil", pytest.param("simplejpeg", marks=NEEDS_SIMPLEJPEG)]


# ------------------------------------------------------------------------------- clip sampling


STRIDED = ClipSampler("strided", num_clips=20, clip_len=8, stride=5)


def linspace(num_clips=20, clip_len=8, allow_repeats=False):
    return ClipSampler("linspace", num_clips, clip_len, allow_repeats=allow_repeats)


def test_strided_clips_mtl_aqa_scheme():
    index = STRIDED.indices(103)
    assert STRIDED.frames_needed == 103 and index.shape == (20, 8)
    assert index[:, 0].tolist() == list(range(0, 100, 5))  # 0, 5, …, 95
    assert index[0].tolist() == list(range(8))
    assert index[-1].tolist() == list(range(95, 103))  # the 103 frames are used exactly
    clip, frame = np.meshgrid(np.arange(20), np.arange(8), indexing="ij")
    assert (index == 5 * clip + frame).all()


def test_strided_clips_offset_and_too_short():
    index = STRIDED.indices(109, offset=6)
    assert index[0, 0] == 6 and index[-1, -1] == 108
    with pytest.raises(ValueError, match=r"need 109 frames, but the video has 108"):
        STRIDED.indices(108, offset=6)
    with pytest.raises(ValueError, match=r"need 103 frames, but the video has 102"):
        STRIDED.indices(102)
    with pytest.raises(ValueError, match=r"offset must be a non-negative integer"):
        STRIDED.indices(200, offset=-1)


def test_linspace_clips_hand_checked():
    # linspace(0, 9, 4) = 0, 3, 6, 9
    assert linspace(2, 2).indices(10).tolist() == [[0, 3], [6, 9]]
    # linspace(0, 7, 4) = 0, 2.33, 4.67, 7: rounded down
    assert linspace(2, 2).indices(8).tolist() == [[0, 2], [4, 7]]
    # with an offset, sampling covers [offset, last]: linspace(2, 11, 4) = 2, 5, 8, 11
    assert linspace(2, 2).indices(12, offset=2).tolist() == [[2, 5], [8, 11]]
    index = linspace().indices(1000)
    assert linspace().frames_needed == 160
    assert index.shape == (20, 8) and index[0, 0] == 0 and index[-1, -1] == 999
    assert (np.diff(index.reshape(-1)) > 0).all()  # non-overlapping, in order


def test_linspace_clips_too_short_and_repeats():
    with pytest.raises(ValueError, match=r"160 frames.*has 100"):
        linspace().indices(100)
    with pytest.raises(ValueError, match=r"has 150"):
        linspace().indices(150)
    index = linspace(allow_repeats=True).indices(100)
    assert index.shape == (20, 8) and index.min() == 0 and index.max() == 99


def test_clip_sampler_checks_its_fields():
    with pytest.raises(ValueError, match=r"scheme='uniform': use one of strided, linspace"):
        ClipSampler("uniform")
    with pytest.raises(ValueError, match=r"clip_len must be a positive integer"):
        ClipSampler("strided", clip_len=0)


def test_unique_frames_maps_back():
    index = STRIDED.indices(103)
    frames, local = unique_frames(index)
    assert frames.tolist() == list(range(103))
    assert (frames[local] == index).all()


# ------------------------------------------------------------------------------- frame folders


@pytest.mark.parametrize("decoder", ["auto", *DECODERS])
def test_frame_folder_round_trip(tmp_path, decoder):
    frames = smooth_frames(8)
    write_frame_folder(tmp_path, frames, quality=95)
    got = read_frame_folder(tmp_path, [3, 0, 7, 3], decoder=decoder)
    assert got.dtype == torch.uint8 and got.shape == (4, 3, 48, 64)
    expected = frames[[3, 0, 7, 3]]
    assert (got.int() - expected.int()).abs().float().mean() < 2  # JPEG at quality 95
    assert torch.equal(got[0], got[3])
    assert count_frames(tmp_path) == 8


def test_pil_and_simplejpeg_agree(tmp_path):
    pytest.importorskip("simplejpeg")
    write_frame_folder(tmp_path, textured_frames(5, 40, 56, seed=3))
    pil = read_frame_folder(tmp_path, range(5), decoder="pil").int()
    fast = read_frame_folder(tmp_path, range(5), decoder="simplejpeg").int()
    assert (pil - fast).abs().max() <= 2


def test_auto_decoder_without_simplejpeg(tmp_path, monkeypatch):
    frames = smooth_frames(3)
    write_frame_folder(tmp_path, frames)
    monkeypatch.setattr(video_module, "simplejpeg", None)
    assert read_frame_folder(tmp_path, [2]).shape == (1, 3, 48, 64)
    with pytest.raises(ImportError, match=r"pip install"):
        read_frame_folder(tmp_path, [2], decoder="simplejpeg")


def test_natural_order_pattern_and_listing_cache(tmp_path):
    frames = smooth_frames(12)
    write_frame_folder(tmp_path / "plain", frames, pattern="img_{}.jpg")  # img_0 … img_11
    assert list_frames(tmp_path / "plain")[:3] == ("img_0.jpg", "img_1.jpg", "img_2.jpg")
    by_order = read_frame_folder(tmp_path / "plain", [10])
    by_name = read_frame_folder(tmp_path / "plain", [10], pattern="img_{}.jpg")
    assert torch.equal(by_order, by_name)
    write_frame_folder(tmp_path / "aqa7", frames[:5], pattern="img_{:05d}.jpg", start=1)
    first = read_frame_folder(tmp_path / "aqa7", [0], pattern="img_{:05d}.jpg", start=1)
    assert torch.equal(first, read_frame_folder(tmp_path / "aqa7", [0]))
    assert count_frames(tmp_path / "aqa7", pattern="img_{:05d}.jpg", start=1) == 5
    # The cached listing notices new frames.
    write_frame_folder(tmp_path / "aqa7", frames[5:7], pattern="img_{:05d}.jpg", start=6)
    assert count_frames(tmp_path / "aqa7") == 7


def test_missing_and_short_folder_errors(tmp_path):
    with pytest.raises(VideoReadError, match=r"nowhere.*does not exist.*prepar"):
        read_frame_folder(tmp_path / "nowhere", [0])
    write_frame_folder(tmp_path / "short", smooth_frames(5))
    with pytest.raises(VideoReadError, match=r"short has 5 JPEG frames.*index 102.*103 frames"):
        read_frame_folder(tmp_path / "short", range(103))
    with pytest.raises(VideoReadError, match=r"has 5 frames named like '00000.jpg'"):
        read_frame_folder(tmp_path / "short", [7], pattern="{:05d}.jpg")
    (tmp_path / "short" / "00002.jpg").unlink()  # a hole in a numbered sequence
    with pytest.raises(VideoReadError, match=r"00002.jpg is missing"):
        read_frame_folder(tmp_path / "short", [1, 2, 3], pattern="{:05d}.jpg")


@pytest.mark.parametrize("decoder", ["auto", *DECODERS])
def test_corrupt_jpeg_errors_name_the_file(tmp_path, decoder):
    paths = write_frame_folder(tmp_path, smooth_frames(4))
    paths[1].write_bytes(b"this is not a jpeg")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(VideoReadError, match=r"00001.jpg is not a readable JPEG"):
        read_frame_folder(tmp_path, [0, 1], decoder=decoder)
    with pytest.raises(VideoReadError, match=r"00002.jpg is not a readable JPEG"):
        read_frame_folder(tmp_path, [2], decoder=decoder)


def test_frames_of_different_sizes(tmp_path):
    write_frame_folder(tmp_path, smooth_frames(2))
    write_frame_folder(tmp_path, smooth_frames(1, 32, 64), start=2)
    with pytest.raises(VideoReadError, match=r"00002.jpg is 32×64.*00000.jpg is 48×64"):
        read_frame_folder(tmp_path, range(3))


def test_repeat_last_fallback(tmp_path):
    write_frame_folder(tmp_path, smooth_frames(5))
    with pytest.warns(RuntimeWarning, match=r"has 5 JPEG frames, 7 needed"):
        got = read_frame_folder(tmp_path, [3, 4, 5, 6], on_missing="repeat_last")
    last = read_frame_folder(tmp_path, [4])[0]
    assert torch.equal(got[1], last) and torch.equal(got[2], last) and torch.equal(got[3], last)
    assert not torch.equal(got[0], last)
    with pytest.raises(ValueError, match=r"on_missing='zeros': use one of error, repeat_last"):
        read_frame_folder(tmp_path, [0], on_missing="zeros")


# --------------------------------------------------------------------------------- video files


@pytest.mark.parametrize("seek", [True, False])
def test_video_round_trip(video_path, seek):
    indices = [29, 0, 7, 20, 21, 7]
    got = read_video_file(video_path, indices, seek=seek)
    assert got.dtype == torch.uint8 and got.shape == (6, 3, 48, 64)
    for frame, i in zip(got, indices, strict=True):
        expected = torch.tensor(flat_colour(i), dtype=torch.float32)[:, None, None]
        assert (frame.float() - expected).abs().mean() < 10, f"frame {i}"
    assert count_frames(video_path) == 30
    assert count_frames(video_path, exact=True) == 30


def test_video_seek_matches_full_decode(video_path, monkeypatch):
    calls = []
    opened = video_module._open_video
    monkeypatch.setattr(video_module, "_open_video", lambda *a: calls.append(1) or opened(*a))
    late = [18, 19, 25, 26, 27]
    seeked = read_video_file(video_path, late)
    assert calls == [1]  # served by the seek: the fallback would open the file again
    assert torch.equal(seeked, read_video_file(video_path, late, seek=False))


def test_video_errors(video_path, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video at all\n" * 10)
    with pytest.raises(VideoReadError, match=r"notes.mp4 is not a readable video"):
        read_video_file(not_video, [0])
    with pytest.raises(VideoReadError, match=r"missing.mp4 does not exist"):
        read_video_file(tmp_path / "missing.mp4", [0])
    with pytest.raises(VideoReadError, match=r"flat.mp4 has 30 frames.*index 40"):
        read_video_file(video_path, [5, 40])
    with pytest.raises(VideoReadError, match=r"neither a frame folder nor a video"):
        count_frames(tmp_path / "missing.mp4")


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = np.zeros((1, 800), np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoReadError, match=r"tone.wav has no video stream"):
        read_video_file(path, [0])


def test_video_repeat_last(video_path):
    with pytest.warns(RuntimeWarning, match=r"has 30 frames, 33 needed"):
        got = read_video_file(video_path, [28, 32], on_missing="repeat_last")
    assert torch.equal(got[1], read_video_file(video_path, [29])[0])


# --------------------------------------------------------------------------------- transforms


def test_one_draw_per_video():
    base = torch.randint(0, 200, (3, 60, 80), dtype=torch.uint8)
    frames = torch.stack([base + f for f in range(5)])  # frame f = base + f
    transform = VideoTransform(resize=None, crop_size=32, train=True, seed=0)
    for _ in range(10):  # whatever the crop and flip, they are the same on every frame
        out = transform(frames)
        assert out.shape == (5, 3, 32, 32)
        assert ((out.int() - out[:1].int()) == torch.arange(5)[:, None, None, None]).all()
    same = base.expand(4, -1, -1, -1)  # identical frames stay identical, through resize too
    out = VideoTransform(resize=(64, 96), crop_size=48, train=True, seed=1)(same)
    assert (out == out[:1]).all()


def test_train_draws_reproduce_per_seed():
    def draws(seed):
        transform = VideoTransform(train=True, seed=seed)
        return [transform.draw(256, 455) for _ in range(6)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    generator = torch.Generator().manual_seed(5)
    explicit = VideoTransform(train=True).draw(256, 455, generator)
    assert explicit == VideoTransform(train=True).draw(256, 455, torch.Generator().manual_seed(5))
    transform = VideoTransform(train=True, seed=0)
    transform.draw(256, 455)
    copy = pickle.loads(pickle.dumps(transform))  # DataLoader workers get copies like this
    assert copy.draw(256, 455) == transform.draw(256, 455)


def test_workers_do_not_repeat_each_other(monkeypatch):
    def first_draws(worker_seed):
        info = types.SimpleNamespace(seed=worker_seed)
        monkeypatch.setattr(transforms_module, "get_worker_info", lambda: info)
        transform = VideoTransform(train=True, seed=0)
        return [transform.draw(256, 455) for _ in range(4)]

    assert first_draws(100) == first_draws(100)
    assert first_draws(100) != first_draws(101)


def test_train_draws_stay_inside_and_flip_sometimes():
    transform = VideoTransform(train=True, seed=3)
    params = [transform.draw(256, 455) for _ in range(60)]
    assert all(0 <= p.top <= 32 and 0 <= p.left <= 231 for p in params)
    assert {p.flip for p in params} == {True, False}
    no_flip = VideoTransform(train=True, flip=False, seed=3)
    assert not any(no_flip.draw(256, 455).flip for _ in range(30))


def test_center_crop_hand_checked():
    frames = torch.arange(2 * 3 * 10 * 12, dtype=torch.int64).reshape(2, 3, 10, 12)
    frames = (frames % 251).to(torch.uint8)
    transform = VideoTransform(resize=None, crop_size=4, train=False, flip=True)
    assert transform.draw(10, 12) == CropParams(top=3, left=4, height=4, width=4, flip=False)
    assert torch.equal(transform(frames), frames[:, :, 3:7, 4:8])


def test_train_flip_mirrors():
    frames = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    transform = VideoTransform(resize=None, crop_size=8, train=True)
    outs = [transform(frames, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(torch.equal(o, frames) for o in outs)
    assert any(torch.equal(o, frames.flip(-1)) for o in outs)


def test_resize_quirk_swaps_the_size():
    frames = torch.randint(0, 255, (2, 3, 90, 160), dtype=torch.uint8)
    intended = VideoTransform(crop_size=None)
    quirk = VideoTransform(crop_size=None, reference_resize_quirk=True)
    assert intended.resize_size == (256, 455) and quirk.resize_size == (455, 256)
    assert intended(frames).shape == (2, 3, 256, 455)
    assert quirk(frames).shape == (2, 3, 455, 256)
    assert VideoTransform()(frames).shape == (2, 3, 224, 224)
    assert VideoTransform()(frames).dtype == torch.uint8


def test_jigsaws_center_crop_without_resize():
    frames = torch.randint(0, 255, (2, 3, 240, 320), dtype=torch.uint8)
    transform = VideoTransform(resize=None, crop_size=224, train=False)
    assert torch.equal(transform(frames), frames[:, :, 8:232, 48:272])
    with pytest.raises(ValueError, match=r"smaller than the 224² crop"):
        transform(frames[:, :, :200])


def test_frames_to_clips_hand_checked():
    frames = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 3, 2, 2)
    frames = frames + torch.tensor([0, 10, 20], dtype=torch.uint8)[None, :, None, None]
    index = np.array([[0, 1, 2], [2, 3, 4]])
    clips = frames_to_clips(frames, index)
    assert clips.shape == (2, 3, 3, 2, 2) and clips.is_contiguous()
    for t in range(2):
        for c in range(3):
            for j in range(3):
                assert (clips[t, c, j] == index[t, j] + 10 * c).all()
    with pytest.raises(ValueError, match=r"only 6 frames"):
        frames_to_clips(frames, np.array([[0, 6]]))


# ------------------------------------------------------------------------------ the whole path


def test_load_clips_from_folder_and_video(tmp_path, video_path):
    frames = smooth_frames(14)
    write_frame_folder(tmp_path, frames)
    sampler = ClipSampler("strided", num_clips=3, clip_len=4, stride=4)  # frames 0 … 11 (+ 2)
    index = sampler.indices(count_frames(tmp_path), offset=2)
    transform = VideoTransform(resize=None, crop_size=32, train=False)
    clips = load_clips(tmp_path, index, transform)
    assert clips.shape == (3, 3, 4, 32, 32) and clips.dtype == torch.uint8
    decoded = transform(read_frames(tmp_path, range(14)))
    assert torch.equal(clips[2, :, 1], decoded[index[2, 1]])

    jigsaws = ClipSampler("linspace", num_clips=2, clip_len=4)
    index = jigsaws.indices(count_frames(video_path))
    clips = load_clips(video_path, index, VideoTransform(resize=None, crop_size=40))
    assert clips.shape == (2, 3, 4, 40, 40)
    assert torch.equal(clips[1, :, 3], read_frames(video_path, [29])[0, :, 4:44, 12:52])


def test_benchmark_runs_single_threaded(tmp_path):
    write_frame_folder(tmp_path, smooth_frames(6))
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fps = benchmark_frame_loading(tmp_path, num_frames=6, repeats=2, crop_size=32)
    assert fps > 0 and torch.get_num_threads() == threads
