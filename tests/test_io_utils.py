import sys

import pytest

from hf_efficient_lm.io_utils import atomic_dir, atomic_file


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temp folders left behind"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_atomic_dir_keeps_the_old_folder_when_the_swap_fails_or_is_killed(tmp_path, monkeypatch):
    """The old folder is moved aside before the new one moves in: a failure of the second rename deleted the new one
    and left the old one hidden (the destination gone); a process killed in between left the same state."""
    import os

    import hf_efficient_lm.io_utils as io_utils

    target = tmp_path / "final"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("OLD")
    real_replace, calls = os.replace, []

    def failing_second_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", failing_second_replace)
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("NEW")
    monkeypatch.undo()
    assert (target / "w").read_text() == "OLD" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    os.replace(target, tmp_path / ".final.old-12345")  # killed between the renames: only the aside copy is left
    with pytest.raises(FileExistsError, match="not empty"):  # the next write finds the old folder restored
        with atomic_dir(target, overwrite=False):
            pass
    assert (target / "w").read_text() == "OLD" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_atomic_dir_refuses_to_overwrite_when_asked(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(tmp_path / "x", overwrite=False):
            pass


def test_atomic_file_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "table.bin"
    with atomic_file(path) as handle:
        handle.write(b"complete")
    with pytest.raises(ValueError):
        with atomic_file(path) as handle:
            handle.write(b"partial")
            raise ValueError
    assert path.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["table.bin"]
    path.chmod(0o640)  # a replaced file keeps its mode (a fresh one gets what open() would give)
    with atomic_file(path) as handle:
        handle.write(b"again")
    assert path.stat().st_mode & 0o777 == 0o640


def test_save_figure_writes_a_png_atomically(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_efficient_lm.io_utils import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "plot.png", dpi=50)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_benchmark_figures_without_matplotlib_name_the_extra(monkeypatch):
    from hf_efficient_lm.eval.benchmarking import new_figure

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (an import of it then fails as when it is not installed)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hf-efficient-lm\[plots\]'"):
        new_figure()


def test_benchmark_figures_and_options(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    import torch

    from hf_efficient_lm.eval.benchmarking import benchmark_parser, new_figure, parse_benchmark_args, write_figure

    fig, ax = new_figure(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    path = write_figure(fig, tmp_path / "made" / "plot.png", dpi=50)  # the folder does not exist yet
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number), "a benchmark's figure is closed once written"
    assert f"wrote {path}" in capsys.readouterr().out

    before = torch.get_num_threads()
    try:
        parser = benchmark_parser("doc", threads=3)
        parser.add_argument("--steps", type=int, default=4)
        args = parse_benchmark_args(parser, ["--threads", "1", "--steps", "2"])
        assert (args.threads, args.steps, torch.get_num_threads()) == (1, 2, 1)
        assert parse_benchmark_args(parser, []).threads == 3
        with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
            parse_benchmark_args(parser, ["--threads", "0"])
    finally:
        torch.set_num_threads(before)
