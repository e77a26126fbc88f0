"""The data cache never touches what is not its own, and never trains on what it did not
write: prune removes only provable caches, partial builds and lock files of bench's naming
(never one in use), a cache changed after its build is refused, labels outside the classes
are found at load, and a full disk is an error naming the folder (issue 17)."""
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import string
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bench.cli import main
from bench.config import DataConfig
from bench.data import cache, sources as data
from bench.errors import BenchError

OLD = time.time() - 40 * 86400  # 40 days ago
OWN = {"train.images.npy", "train.labels.npy", "test.images.npy", "test.labels.npy", "meta.json", "last-used",
       "verified.json"}  # every file bench writes in a cache (the test's own list, not bench's)


def _folder(root: Path, per_class: int = 3) -> Path:
    """Two classes of small random PNGs (train and val): a cache of it decodes them."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _arrays_cache(cache_dir: Path, name: str = "t", key: str = "f" * 20) -> cache.Cached:
    """A cache built from arrays already at size (no decoding): 6 + 3 images of 4 px, 3 classes."""
    rng = np.random.default_rng(1)
    splits = {"train": (rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2])),
              "test": (rng.integers(0, 256, (3, 3, 4, 4), dtype=np.uint8), np.array([2, 1, 0]))}
    return cache.cached(cache.Entry(cache_dir, name, 4, key), splits, ["a", "b", "c"], {"root": "nowhere"}, quiet=True)


def _built(cache_dir: Path, **kwargs) -> Path:
    """The arrays cache, built (or opened) and let go of, as when a run ends: its folder."""
    return _arrays_cache(cache_dir, **kwargs).path


def _age(path: Path) -> None:
    """Everything under ``path`` (links themselves, not their targets) last touched 40 days ago."""
    for here, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(here, name), (OLD, OLD), follow_symlinks=False)


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): a file's sha256, a link's target, "dir"."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(here) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- 1. prune removes only bench's own --------------------------------------------------------

def test_prune_leaves_folders_that_are_not_caches_alone(tmp_path, capsys):
    v = tmp_path / "v"  # the reproduction, to the letter
    (v / "projectA").mkdir(parents=True)
    (v / "notes.partial-1").mkdir()
    (v / "projectA" / "meta.json").write_text("{}\n")
    (v / "projectA" / "important.txt").write_text("precious\n")
    os.utime(v / "projectA" / "meta.json", (OLD, OLD))
    before = _tree(v)
    assert main(["cache", "--dir", str(v), "--prune", "30"]) == 0
    assert _tree(v) == before
    err = capsys.readouterr().err
    assert f"{v / 'projectA'}: not a bench cache" in err and f"{v / 'notes.partial-1'}: not a bench cache" in err
    assert "removed 0 cache(s)" in err


def test_prune_removes_a_stale_cache_but_not_one_holding_foreign_files_or_named_for_another(tmp_path, capsys):
    root = tmp_path / "c"
    plain = _built(root, key="a" * 20)
    extra = _built(root, key="b" * 20)
    (extra / "important.txt").write_text("precious")  # someone's file inside a cache folder
    moved = root / ("t-4px-" + "c" * 20)
    _built(tmp_path / "elsewhere", key="d" * 20).rename(moved)  # its meta.json names another folder
    sub = _built(root, key="e" * 20)
    (sub / "nested").mkdir()  # a folder inside: bench never makes one
    _age(root)
    keep = {k: v for k, v in _tree(root).items() if not k.startswith(plain.name)}
    assert main(["cache", "--dir", str(root), "--prune", "30"]) == 0
    assert not plain.exists() and not Path(f"{plain}.lock").exists()
    assert _tree(root) == keep  # the rest byte for byte, and no lock file of the removed one left
    err = capsys.readouterr().err
    assert f"{extra}: not a bench cache (holds 'important.txt', which bench never writes); left alone" in err
    assert f"{moved}: not a bench cache (its meta.json names another folder); left alone" in err
    assert f"{sub}: not a bench cache (holds 'nested', which bench never writes); left alone" in err
    assert "removed 1 cache(s)" in err


@pytest.mark.parametrize("days", ["nan", "-1", "inf", "-inf", "NaN"])
def test_prune_days_must_be_a_finite_number_at_least_zero(tmp_path, capsys, days):
    _built(tmp_path / "c")
    _age(tmp_path / "c")
    before = _tree(tmp_path / "c")
    assert main(["cache", "--dir", str(tmp_path / "c"), f"--prune={days}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--prune" in err and "finite number, at least 0" in err
    assert _tree(tmp_path / "c") == before
    with pytest.raises(ValueError):
        cache.prune(float(days), tmp_path / "c")


_SAFE = string.ascii_letters + string.digits + "._- "
_NAMES = st.text(_SAFE, min_size=1, max_size=16).filter(lambda n: n not in (".", ".."))
_BENCHLIKE = st.builds(lambda base, px, key, tail: f"{base}-{px}px-{key}{tail}",
                       st.sampled_from(["d", "cifar10", "a b"]), st.sampled_from(["8", "32", "0"]),
                       st.sampled_from(["0" * 20, "0123456789abcdef0123", "0" * 19, "XYZ"]),
                       st.sampled_from(["", ".lock", ".partial-1-ab", ".partial-12", ".partial-7-zz", ".partial-"]))
_OWN_NAMES = st.sampled_from(sorted(OWN) + ["verified.json.1-ab"])
_FOREIGN_CHILD = _NAMES.filter(lambda n: n not in OWN and not n.startswith("verified.json."))


def _metas(name: str) -> st.SearchStrategy:
    """meta.json contents: garbage, empty, foreign JSON, or a real cache's naming this very folder."""
    real = {"format": "bench-cache", "version": 2, "name": name.rsplit("-", 2)[0], "size": 8,
            "key": "0" * 20}
    return st.sampled_from([b"", b"{}", b"\xff\xfe not json", b"[1, 2]", json.dumps(real).encode(),
                            json.dumps({**real, "version": 1, "format": None}).encode()])


@st.composite
def _entries(draw):
    """Foreign entries of a cache folder, each made so that no rule could prove it bench's own:
    a folder always holds something bench never writes, a file of a lock's name is not empty."""
    out = {}
    for name in draw(st.lists(st.one_of(_NAMES, _BENCHLIKE), max_size=6, unique=True)):
        if draw(st.booleans()):
            out[name] = draw(st.binary(min_size=1, max_size=64))
            continue
        children = {n: draw(st.binary(max_size=32)) for n in draw(st.lists(_OWN_NAMES, max_size=4, unique=True))}
        if draw(st.booleans()):
            children["meta.json"] = draw(_metas(name))
        foreign = draw(_FOREIGN_CHILD)
        children[foreign] = None if draw(st.booleans()) else draw(st.binary(max_size=32))  # None: a folder
        out[name] = children
    return out


def test_prune_never_touches_anything_not_bench_own_property(tmp_path):
    template = _built(tmp_path / "template")
    outside = _built(tmp_path / "outside", key="1" * 20)  # a real cache a link points to

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(entries=_entries(), link=st.booleans())
    def check(entries, link):
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        real = root / template.name
        real.mkdir()
        for f in os.listdir(template):
            (real / f).write_bytes((template / f).read_bytes())
        for name, content in entries.items():
            if isinstance(content, bytes):
                (root / name).write_bytes(content)
                continue
            (root / name).mkdir()
            for child, body in content.items():
                if body is None:
                    (root / name / child).mkdir()
                else:
                    (root / name / child).write_bytes(body)
        if link:  # named as a cache, pointing at one: never followed
            (root / outside.name).symlink_to(outside)
        _age(root)
        _age(outside)
        before, target = _tree(root), _tree(outside)
        result = cache.prune(30, root)
        assert _tree(root) == {k: v for k, v in before.items() if not k.startswith(real.name)}
        assert _tree(outside) == target
        removed, kept = result
        assert [r["cache"] for r in removed] == [real.name]  # the one real stale cache, and only it
        assert {k["cache"] for k in kept} == set(entries) | ({outside.name} if link else set())
        assert all(k["why"].startswith("not a bench cache") for k in kept)

    check()


# --- 2. a cache is what was built, labels within the classes ---------------------------------

def test_a_cache_overwritten_in_place_is_refused_naming_the_folder(tmp_path, cache_dir):
    root = _folder(tmp_path / "d")
    c = data.imagefolder(DataConfig(name="imagefolder", root=str(root)), 8)
    path = c.source
    del c
    mm = np.load(path / "train.images.npy", mmap_mode="r+")  # the issue: zero the memmap
    mm[:] = 0
    mm.flush()
    del mm
    with pytest.raises(BenchError) as err:
        data.imagefolder(DataConfig(name="imagefolder", root=str(root)), 8)
    assert str(err.value) == (f"the data cache {path} was changed after it was built (train.images.npy does not "
                              "match its checksum); remove that folder and run again to rebuild it")


def test_an_overwrite_with_the_times_set_back_is_still_refused(tmp_path):
    path = _built(tmp_path / "c")
    f = path / "test.labels.npy"
    st_before = os.stat(f)
    raw = bytearray(f.read_bytes())
    raw[-8:] = np.array([1], dtype=np.int64).tobytes()  # a label changed, still within the classes
    with open(f, "r+b") as fh:
        fh.write(raw)
    os.utime(f, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))  # mtime back as it was; ctime cannot be
    assert os.stat(f).st_mtime_ns == st_before.st_mtime_ns and os.stat(f).st_size == st_before.st_size
    with pytest.raises(BenchError, match=rf"{path} was changed after it was built \(test.labels.npy does not match"):
        _arrays_cache(tmp_path / "c")


def test_checksums_are_verified_once_per_host_and_state_of_the_files(tmp_path, monkeypatch):
    c = _arrays_cache(tmp_path / "c")
    expected = np.array(c.train_images)
    meta = json.loads((c.path / "meta.json").read_text())
    assert meta.get("format") == "bench-cache" and set(meta.get("checksums", ())) == set(cache.ARRAYS)
    assert meta["checksums"]["train.images.npy"] == cache.checksum(c.path / "train.images.npy")
    del c
    hashed = []
    real = cache.checksum
    monkeypatch.setattr(cache, "checksum", lambda p: hashed.append(Path(p).name) or real(p))
    for _ in range(3):  # verified at build on this host: no hashing at all
        again = _arrays_cache(tmp_path / "c")
        assert again.built_s is None and np.array_equal(again.train_images, expected)
    assert hashed == []
    monkeypatch.setattr(cache, "_host", lambda: "another-host")  # the same files seen from another machine
    for _ in range(2):
        _built(tmp_path / "c")
    assert sorted(hashed) == sorted(cache.ARRAYS)  # hashed once there, then remembered
    stamps = json.loads((again.path / cache.VERIFIED).read_text())
    assert set(stamps) == {os.uname().nodename, "another-host"}


def test_labels_outside_the_classes_are_found_at_load(tmp_path):
    path = _built(tmp_path / "c")
    np.save(path / "train.labels.npy", np.array([0, 1, 2, 7, 1, -1]))  # 3 classes
    with pytest.raises(BenchError) as err:
        _arrays_cache(tmp_path / "c")
    assert str(err.value) == (f"the data cache {path} is damaged (ValueError: train.labels.npy holds label 7, "
                              "outside 0…2 for 3 classes (2 such labels)); remove that folder and run again to "
                              "rebuild it")


def test_labels_outside_the_classes_are_never_cached(tmp_path):
    splits = {"train": (np.zeros((2, 3, 4, 4), np.uint8), np.array([0, 5])),
              "test": (np.zeros((1, 3, 4, 4), np.uint8), np.array([0]))}
    with pytest.raises(BenchError, match=r"^t: train label 5 is outside 0…1 \(2 classes\); no cache written$"):
        cache.cached(cache.Entry(tmp_path / "c", "t", 4, "f" * 20), splits, ["a", "b"], {}, quiet=True)
    assert [p.name for p in (tmp_path / "c").iterdir()] in ([], ["t-4px-" + "f" * 20 + ".lock"])


def test_a_cache_of_the_previous_version_is_rebuilt_and_pruned(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    monkeypatch.setattr(cache, "VERSION", 1)
    old = cache.folder(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")), 8, quiet=True)
    old = type("Old", (), {"path": old.path})  # let go of it, keep its name
    meta = json.loads((old.path / "meta.json").read_text())
    for k in ("format", "checksums"):  # as the previous version wrote it
        meta.pop(k, None)
    (old.path / "meta.json").write_text(json.dumps(meta))
    (old.path / "verified.json").unlink(missing_ok=True)
    monkeypatch.setattr(cache, "VERSION", 2)
    new = cache.folder(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")), 8, quiet=True)
    assert new.path != old.path and new.built_s is not None  # rebuilt, with checksums
    assert set(json.loads((new.path / "meta.json").read_text()).get("checksums", ())) == set(cache.ARRAYS)
    assert np.array_equal(new.train_images, np.load(old.path / "train.images.npy"))
    assert {c["cache"] for c in cache.caches(tmp_path / "c")} == {old.path.name, new.path.name}
    _age(old.path)
    removed, _ = cache.prune(30, tmp_path / "c")
    assert [r["cache"] for r in removed if r["kind"] == "cache"] == [old.path.name] and not old.path.exists()


# --- 3. a cache in use is never pruned -------------------------------------------------------

def _hold(cache_dir: str, ready, done) -> None:
    c = _arrays_cache(Path(cache_dir))
    ready.set()
    done.wait(60)
    assert int(np.asarray(c.train_images).sum()) > 0


def test_prune_passes_over_a_cache_a_run_holds(tmp_path, capsys):
    c = _arrays_cache(tmp_path / "c")
    expected = np.array(c.train_images)
    _age(c.path)
    assert main(["cache", "--dir", str(tmp_path / "c"), "--prune", "0"]) == 0
    assert c.path.is_dir() and sorted(os.listdir(c.path)) == sorted(OWN)
    assert np.array_equal(c.train_images, expected)
    assert f"{c.path}: in use (a process has this cache loaded); left alone" in capsys.readouterr().err
    ctx = multiprocessing.get_context("spawn")  # another process holding it: the same
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path / "c"), ready, done))
    child.start()
    try:
        assert ready.wait(60)
        c.close()  # this process lets go; the child still holds it
        assert cache.prune(0, tmp_path / "c")[0] == [] and c.path.is_dir()
    finally:
        done.set()
        child.join(60)
    assert child.exitcode == 0
    removed, _ = cache.prune(0, tmp_path / "c")  # nobody holds it now
    assert [r["cache"] for r in removed if r["kind"] == "cache"] == [c.path.name] and not c.path.exists()


def test_an_open_waiting_on_a_prune_builds_the_cache_again(tmp_path):
    path = _built(tmp_path / "c")
    fd = os.open(path / "meta.json", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a prune is removing it
    got = []
    t = threading.Thread(target=lambda: got.append(_arrays_cache(tmp_path / "c")))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # waits for the prune
    for f in sorted(os.listdir(path), key=lambda n: n == "meta.json"):
        os.unlink(path / f)
    path.rmdir()
    os.close(fd)
    t.join(30)
    assert got and got[0].built_s is not None and got[0].path == path  # built again, not "damaged"


# --- 4. a full disk ----------------------------------------------------------------------------

def test_free_space_is_checked_against_the_exact_size(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    (tmp_path / "c").mkdir()
    block = os.statvfs(tmp_path / "c").f_frsize
    free = (6 + 4) * 3 * 8 * 8 + 64  # the pixels alone fit: headers, labels and metadata do not
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: type("Usage", (), {"free": free})())
    with pytest.raises(BenchError) as err:
        cache.folder(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")), 8, quiet=True)
    # four arrays and meta.json (each under a block here), verified.json and the folder: a block each
    assert str(err.value) == (f"d: the cache needs {7 * block / 2**20:.2f} MiB at 8px, {tmp_path / 'c'} has {free} "
                              "bytes free; free space there or set data.cache_dir elsewhere")
    assert [p for p in (tmp_path / "c").iterdir() if p.is_dir()] == []


def test_a_full_disk_while_allocating_names_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    calls = []

    def full(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(BenchError) as err:
        cache.folder(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")), 8, quiet=True)
    assert str(err.value).startswith("d: no space left writing the cache ")
    final = str(err.value).split("writing the cache ")[1].split(" (")[0]
    assert Path(final).parent == tmp_path / "c" and Path(final).name.startswith("d-8px-")
    assert f"free space in {tmp_path / 'c'} or set data.cache_dir elsewhere" in str(err.value)
    assert calls[0] == 128 + 6 * 3 * 8 * 8  # the whole images file, before any pixel is written
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_files_are_allocated_in_full_before_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    seen = []
    real = cache._decode_all

    def spy(jobs, *args):
        seen.extend((os.stat(p).st_size, os.stat(p).st_blocks * 512) for p, _ in jobs)
        return real(jobs, *args)

    monkeypatch.setattr(cache, "_decode_all", spy)
    cache.folder(DataConfig(name="imagefolder", root=str(root), cache_dir=str(tmp_path / "c")), 64, quiet=True)
    assert [size for size, _ in seen] == [128 + 6 * 3 * 64 * 64, 128 + 4 * 3 * 64 * 64]
    assert all(blocks >= size for size, blocks in seen)  # no hole a memory map could SIGBUS on


# --- 5. lock files --------------------------------------------------------------------------

def test_prune_removes_lock_files_nothing_needs(tmp_path, capsys):
    root = tmp_path / "c"
    stale = _built(root, key="a" * 20)
    fresh = type("Fresh", (), {"path": _built(root, key="b" * 20)})
    _age(stale)
    orphan = root / ("gone-8px-" + "c" * 20 + ".lock")
    held = root / ("building-8px-" + "d" * 20 + ".lock")
    foreign = root / ("x-8px-" + "e" * 20 + ".lock")
    other = root / "mine.lock"
    for f in (orphan, held, other):
        f.touch()
    foreign.write_text("not empty: not bench's")
    Path(f"{stale}.lock").touch()
    Path(f"{fresh.path}.lock").touch()
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a builder holds it
    try:
        assert main(["cache", "--dir", str(root), "--prune", "30"]) == 0
    finally:
        os.close(fd)
    assert not orphan.exists() and not Path(f"{stale}.lock").exists() and not stale.exists()
    assert held.exists() and foreign.read_text() == "not empty: not bench's" and other.exists()
    assert Path(f"{fresh.path}.lock").exists() and fresh.path.is_dir()  # its cache is there
    assert "removed 1 cache(s) unused for 30 days, 0 crashed build(s), 2 lock file(s) and 0 torch.compile cache(s)" in capsys.readouterr().err


def test_a_builder_waiting_on_a_lock_that_prune_removes_takes_a_new_one(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    lock = root / ("t-4px-" + "f" * 20 + ".lock")
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    got = []
    t = threading.Thread(target=lambda: got.append(_arrays_cache(root)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # waiting for the lock
    lock.unlink()  # as prune removes an orphan lock: the waiter then holds a file nobody else can see
    os.close(fd)
    t.join(30)
    assert got and got[0].built_s is not None and lock.is_file()  # it locked the file at the path instead
