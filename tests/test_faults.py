"""Faults a user meets: foreign or missing storage, passwords, unwritable results, bad files,
spec values that only waste a run. Each gets one clear line, and nothing is lost or half-written."""
import errno
import sqlite3

import pytest

from bench import spec
from bench.cli import main
from bench.errors import SpecError
from bench.study import trials
from bench.study.storage import explain, safe_url


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:secret@db-host/bench", "postgresql://u:***@db-host/bench"),
    ("postgresql://u:p@ss@word@db-host:5432/bench", "postgresql://u:***@db-host:5432/bench"),  # unencoded @
    ("postgresql:///bench?user=u&password=secret&host=db-host", "postgresql:///bench?user=u&password=***&host=db-host"),
    ("sqlite:///results/x/study.db", "sqlite:///results/x/study.db"),
])
def test_passwords_are_masked(url, shown):
    assert safe_url(url) == shown


def test_a_dead_server_never_prints_its_password(sweep_file, tmp_path, capsys):
    for url in ("postgresql://u:p@ss@127.0.0.1:9/db", "postgresql:///db?user=u&password=hunter2&host=127.0.0.1&port=9"):
        code = main(["run", str(sweep_file), "--storage", url, "--device", "cpu", "--results", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 1 and "p@ss" not in err and "hunter2" not in err and "***" in err


def test_report_on_a_foreign_sqlite_file_leaves_it_byte_identical(tmp_path, capsys):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("create table notes (text)")
        con.execute("insert into notes values ('mine')")
    before = other.read_bytes()
    code = main(["report", "tiny", "--storage", f"sqlite:///{other}", "--results", str(tmp_path)])
    assert code == 1 and "not a study's" in capsys.readouterr().err
    assert other.read_bytes() == before


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/nowhere/deeper/x.db", "journal:{tmp}/nowhere/j"])
def test_storage_in_a_missing_folder_is_refused_not_created(storage, sweep_file, tmp_path, capsys):
    code = main(["run", str(sweep_file), "--storage", storage.format(tmp=tmp_path), "--device", "cpu",
                 "--results", str(tmp_path / "r")])
    assert code == 1 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_sqlite_reasons_are_found_under_optuna_s_wrapper():
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("StorageInternalError: An exception is raised during the commit, e.g. exceeding "
                               "max length") from inner
    except RuntimeError as err:
        assert explain(err) == "database or disk is full"
    assert explain(ValueError("something else")) is None


def test_results_that_cannot_be_written_stop_the_run_before_any_work(sweep_file, tmp_path, capsys):
    blocked = tmp_path / "results"
    blocked.write_text("a file where the results folder should be")
    code = main(["run", str(sweep_file), "--results", str(blocked), "--device", "cpu", "--save-weights"])
    assert code == 1 and "cannot write results to" in capsys.readouterr().err


def test_weights_that_cannot_be_written_keep_the_trained_result(sweep_file, run, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(trials, "save_weights", full)
    r = run(sweep_file, {"grid.depth": [1], "grid.attention": ["self"], "compare": None}, save_weights=True)
    r = r["records"][0]
    assert r["status"] == "complete" and r["top1"] is not None and "No space left" in r["weights_error"]


@pytest.mark.parametrize("sets, key", [
    ({"train.lr": float("inf")}, "train.lr"), ({"train.grad_clip": float("nan")}, "train.grad_clip"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay"), ({"seeds": [2**32]}, "seeds"),
    ({"seeds": [-1]}, "seeds"), ({"model.mlp_ratio": float("nan")}, "model.mlp_ratio"),
    ({"model.mlp_ratio": float("inf")}, "model.mlp_ratio"), ({"name": "bad\x07name"}, "name"),
])
def test_values_that_can_only_waste_a_run_are_rejected(sets, key, sweep_file):
    with pytest.raises(SpecError) as err:
        spec.load(sweep_file, sets)
    assert err.value.key == key


def test_an_error_quotes_at_most_a_few_hundred_characters(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\ndescription: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n")
    with pytest.raises(SpecError) as err:
        spec.load(path)
    assert len(str(err.value)) < 400


def test_a_binary_sweep_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert main(["run", str(path)]) == 2 and "not a text file" in capsys.readouterr().err


def test_a_corrupt_image_stops_the_run_before_any_trial(tmp_path, capsys):
    from PIL import Image
    root = tmp_path / "images"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / cls / f"{i}.png")
    (root / "train" / "b" / "broken.png").write_bytes(b"not an image")
    path = tmp_path / "folder.yaml"
    path.write_text(f"""
name: folder
data: {{name: imagefolder, root: {root}}}
model: {{img_size: 16, patch_size: 4, embed_dim: 16, depth: 1, num_heads: 2, mlp_ratio: 2}}
train: {{epochs: 1, batch_size: 4}}
profile: {{batch_size: 2, warmup: 0, iters: 1}}
""")
    code = main(["run", str(path), "--results", str(tmp_path / "r"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err and err.count("error") == 1
    assert not (tmp_path / "r").exists()  # nothing queued, nothing left behind: no study.db, no folders
