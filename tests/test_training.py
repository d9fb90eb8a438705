"""Shared training utilities: device augmentation equals the host reference, schedule, atomic save,
compile fallback, background writer, device pixels, load-aware threads."""

import os

import numpy as np
import pytest
import torch

from helpers.protocols import training as T


def _pixels(n=6, s=48, seed=0):
    return torch.randint(0, 256, (n, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_augment_pixels_equals_host_augment_on_a_fixed_generator():
    """Same generator, same draws, same images (up to the sampling grid's round-off), and the
    generator ends in the same state: the training stream continues identically."""
    u8 = _pixels()
    g_ref, g_new = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref = T.augment(u8.float().div_(255), g_ref)
    got = T.augment_pixels(u8, g_new, noise="host")
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    assert float((got - ref).abs().mean()) < 1e-6
    assert torch.equal(g_ref.get_state(), g_new.get_state())
    assert not torch.equal(T.augment_pixels(u8, torch.Generator().manual_seed(4)), got)  # the seed matters


def test_rotation_grid_equals_affine_grid():
    a, t = torch.tensor([0.05, -0.02]), torch.tensor([[0.03, -0.01], [0.0, 0.06]])
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), t[:, 0]], 1), torch.stack([a.sin(), a.cos(), t[:, 1]], 1)], 1)
    ref = torch.nn.functional.affine_grid(theta, (2, 1, 20, 30), align_corners=False)
    torch.testing.assert_close(T._rotation_grid(a, t, 20, 30), ref, rtol=0, atol=1e-6)


def test_device_noise_is_seeded_bounded_and_mild():
    ramp = torch.linspace(40, 215, 48).round().to(torch.uint8)
    u8 = (ramp.view(1, 1, 48) // 2 + ramp.view(1, 48, 1) // 2).expand(6, 48, 48).contiguous()  # smooth images
    a = T.augment_pixels(u8, torch.Generator().manual_seed(1), noise="device")
    b = T.augment_pixels(u8, torch.Generator().manual_seed(1), noise="device")
    host = T.augment_pixels(u8, torch.Generator().manual_seed(1), noise="host")
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, host)  # another noise image
    assert float((a - u8.float() / 255).abs().mean()) < 0.06  # a mild jitter of a smooth image, like the host one
    assert float((host - u8.float() / 255).abs().mean()) < 0.06
    with pytest.raises(ValueError, match="noise"):
        T.augment_pixels(u8, torch.Generator(), noise="gpu")


def test_normalize01_equals_model_input():
    from helpers.data.images import to_model_input

    u8 = _pixels(3, 16)
    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    torch.testing.assert_close(T.normalize01(u8.float().div_(255), mean, std), to_model_input(u8, mean, std))


def test_cosine_schedule_and_trim_tokens():
    assert T.cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert T.cosine_lr(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert T.cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-9)
    tok = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    assert T.trim_tokens(tok).tolist() == [[5, 6], [7, 0]]


def test_atomic_torch_save_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "x.pt"
    T.atomic_torch_save({"a": torch.ones(2)}, p)
    with pytest.raises(Exception):
        T.atomic_torch_save({"bad": lambda: 0}, p)  # not picklable
    assert torch.equal(torch.load(p)["a"], torch.ones(2))
    assert [f.name for f in tmp_path.iterdir()] == ["x.pt"]


def test_to_cpu_snapshots_are_independent():
    t = torch.zeros(3)
    snap = T.to_cpu({"w": t, "l": [t], "n": 1})
    t += 1
    assert snap["w"].sum() == 0 and snap["l"][0].sum() == 0 and snap["n"] == 1


def test_background_writer_writes_in_order_and_reports_errors(tmp_path):
    w = T.BackgroundWriter()
    w.submit([(tmp_path / "a.pt", {"v": 1}), (tmp_path / "a.json", {"v": 2})])
    w.submit([(tmp_path / "a.pt", {"v": 3})])
    w.close()
    assert torch.load(tmp_path / "a.pt")["v"] == 3 and (tmp_path / "a.json").is_file()
    bad = T.BackgroundWriter()
    (tmp_path / "file").write_text("")
    bad.submit([(tmp_path / "file" / "x.pt", {"v": 1})])  # a file where a folder should be
    with pytest.raises(RuntimeError, match="file/x.pt"):
        bad.close()
    T.BackgroundWriter(active=False).submit([(tmp_path / "never.pt", {})])
    assert not (tmp_path / "never.pt").exists()


def test_maybe_compile_off_and_fallback():
    f = lambda x: x * 2  # noqa: E731
    assert T.maybe_compile(f, "off")[0] is f
    assert T.maybe_compile(f, "auto", "cpu")[0] is f  # auto: CUDA only
    with pytest.raises(ValueError, match="compile"):
        T.maybe_compile(f, "always")

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler")

    import torch._dynamo

    torch._dynamo.reset()
    g, what = T.maybe_compile(f, "on", "cpu", backend=broken)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert torch.equal(g(torch.ones(2)), torch.full((2,), 2.0))
    assert what == "compiled" and g.state == "eager"
    torch._dynamo.reset()


def test_device_pixels_resident_or_not_serve_the_same_rows():
    class Cache:
        pixels = _pixels(10, 8).numpy()

    rows = [7, 2, 5, 2]
    a = T.DevicePixels(Cache, [2, 5, 7, 9], "cpu", resident=True)(rows)
    b = T.DevicePixels(Cache, [2, 5, 7, 9], "cpu", resident=False)(rows)
    assert torch.equal(a, b) and torch.equal(a, torch.from_numpy(Cache.pixels[rows]))


def test_cpu_threads_follow_the_load(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert T.cpu_threads_for_load(4) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert T.cpu_threads_for_load(4) == 4 and T.cpu_threads_for_load(2) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert T.cpu_threads_for_load(4) == 2


def test_autocast_and_rank():
    import contextlib

    assert isinstance(T.autocast("cpu"), contextlib.nullcontext)
    with T.autocast("cpu", cpu_bf16=True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert T.rank_and_world() == (0, 1)
    assert torch.equal(torch.randperm(9, generator=T.epoch_generator(1, 2)),
                       torch.randperm(9, generator=T.epoch_generator(1, 2)))
