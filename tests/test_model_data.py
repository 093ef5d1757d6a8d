"""model.data: IDX reading and validation, the data-directory search order, downloading, preprocessing."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from model import data
from model.util import UserError

NAMES = sorted(data.FILES.values())
LABELS = "t10k-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def clean_data_state(monkeypatch):
    """No cached splits, no data environment variables leaking in or out."""
    monkeypatch.delenv("LENET_DATA", raising=False)
    monkeypatch.delenv("LENET_MNIST_MIRROR", raising=False)
    data._CACHE.clear()
    yield
    data._CACHE.clear()


def raw_bytes(mnist_dir: Path, name: str) -> bytes:
    """Uncompressed content of one of the shared files."""
    p = mnist_dir / name
    return p.read_bytes() if p.is_file() else gzip.decompress((mnist_dir / (name + ".gz")).read_bytes())


def link_mnist(src: Path, dest: Path) -> Path:
    """``dest`` gets symlinks to the four shared files."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.split(".")[0] in NAMES:
            (dest / f.name).symlink_to(f)
    return dest


# --------------------------------------------------------------------------- the real files


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_files(mnist_dir, split):
    n = data.COUNTS[split]
    images = data.read_idx(data._find_file(mnist_dir, data.FILES[(split, "images")]), expect_ndim=3)
    labels = data.read_idx(data._find_file(mnist_dir, data.FILES[(split, "labels")]), expect_ndim=1)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0

    split_data = data.load(split, mnist_dir)
    assert split_data.images.shape == (n, 28, 28)
    np.testing.assert_array_equal(split_data.labels, labels)
    assert data.load(split, mnist_dir) is split_data  # cached


def test_checksums_match_shared_sums(mnist_dir):
    sums = dict(reversed(line.split()) for line in (mnist_dir / "SHA256SUMS.raw").read_text().splitlines() if line.strip())
    assert sums == data.SHA256
    for name in NAMES:
        assert hashlib.sha256(raw_bytes(mnist_dir, name)).hexdigest() == data.SHA256[name]


def test_unknown_split(mnist_dir):
    with pytest.raises(UserError, match="unknown split 'validation'"):
        data.load("validation", mnist_dir)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def labels_raw(mnist_dir) -> bytes:
    return raw_bytes(mnist_dir, LABELS)


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_truncated_raw(tmp_path, labels_raw):
    p = write(tmp_path, LABELS, labels_raw[:-100])
    with pytest.raises(UserError, match=r"payload is 9900 bytes .* need 10000 \(truncated file\)") as e:
        data.read_idx(p)
    assert str(p) in str(e.value)


def test_truncated_gz_stream(tmp_path, mnist_dir):
    gz = (mnist_dir / (LABELS + ".gz")).read_bytes()
    p = write(tmp_path, LABELS + ".gz", gz[: len(gz) // 2])
    with pytest.raises(UserError, match="corrupt gzip data"):
        data.read_idx(p)


def test_truncated_payload_in_valid_gz(tmp_path, labels_raw):
    p = write(tmp_path, LABELS + ".gz", gzip.compress(labels_raw[:-1]))
    with pytest.raises(UserError, match=r"truncated file"):
        data.read_idx(p)


def test_truncated_header(tmp_path):
    p = write(tmp_path, "x-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00")
    with pytest.raises(UserError, match="truncated IDX header"):
        data.read_idx(p)


@pytest.mark.parametrize("where", ["header", "deflate", "crc", "length"])
def test_corrupt_gzip_bytes(tmp_path, mnist_dir, where):
    gz = bytearray((mnist_dir / (LABELS + ".gz")).read_bytes())
    pos = {"header": 3, "deflate": 20, "crc": len(gz) - 6, "length": len(gz) - 2}[where]
    gz[pos] ^= 0xFF
    p = write(tmp_path, LABELS + ".gz", bytes(gz))
    with pytest.raises(UserError, match="corrupt gzip data") as e:
        data.read_idx(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x01", b"\x89PNG", b"\x00\x00\x08\x00", b"\x01\x00\x08\x01"])
def test_wrong_magic(tmp_path, labels_raw, magic):
    p = write(tmp_path, "some-file", magic + labels_raw[4:])
    with pytest.raises(UserError, match="bad IDX magic number"):
        data.read_idx(p)


def test_too_short(tmp_path):
    with pytest.raises(UserError, match="too short"):
        data.read_idx(write(tmp_path, "empty", b""))


def test_wrong_ndim(tmp_path, labels_raw):
    p = write(tmp_path, LABELS, labels_raw)
    with pytest.raises(UserError, match="1 dimensions, expected 3"):
        data.read_idx(p, expect_ndim=3)


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_data(tmp_path, labels_raw, gz):
    content = labels_raw + b"\x00"
    p = write(tmp_path, LABELS + (".gz" if gz else ""), gzip.compress(content) if gz else content)
    with pytest.raises(UserError, match=r"trailing data"):
        data.read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_checksum(tmp_path, labels_raw, gz):
    content = bytearray(labels_raw)
    content[500] = (content[500] + 1) % 10  # still a valid label, just not the official file
    content = bytes(content)
    p = write(tmp_path, LABELS + (".gz" if gz else ""), gzip.compress(content) if gz else content)
    with pytest.raises(UserError, match=r"sha256 .* expected ff7bcfd416de3373\.\.\. \(corrupt or not the official file\)"):
        data.read_idx(p)
    assert data.read_idx(p, check_sha=False).shape == (10000,)  # structurally fine


def test_good_synthetic_idx(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = write(tmp_path, "x.idx", b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes())
    np.testing.assert_array_equal(data.read_idx(p, expect_ndim=3), a)


def test_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        data.read_idx(tmp_path / "nope")
    with pytest.raises(UserError, match="cannot read"):
        data.read_idx(tmp_path)  # a directory


def test_corrupt_file_in_data_dir_fails_load(tmp_path, mnist_dir, labels_raw):
    d = tmp_path / "mnist"
    d.mkdir()
    for f in mnist_dir.iterdir():
        if f.name.split(".")[0] in NAMES and not f.name.startswith(LABELS):
            (d / f.name).symlink_to(f)
    content = bytearray(labels_raw)
    content[-1] ^= 0x01
    write(d, LABELS, bytes(content))
    with pytest.raises(UserError, match=f"{LABELS}: sha256"):
        data.load("test", d)


def test_locate_explicit_without_mnist(tmp_path, mnist_dir):
    (tmp_path / "train-images-idx3-ubyte.gz").symlink_to(mnist_dir / "train-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match=r"--data .*: no MNIST files there \(missing train-labels-idx1-ubyte, t10k-images"):
        data.locate(tmp_path)
    with pytest.raises(UserError, match="no MNIST files there"):
        data.load("test", tmp_path)


def test_locate_explicit_nonexistent(tmp_path):
    with pytest.raises(UserError, match=r"--data .*nowhere: no such directory"):
        data.locate(tmp_path / "nowhere")
    f = write(tmp_path, "a-file", b"x")
    with pytest.raises(UserError, match="no such directory"):
        data.locate(f)


def test_cli_data_without_mnist(tmp_path, run_module):
    from model import checkpoint
    from model.lenet import LeNet

    ckpt = tmp_path / "lenet1.pt"
    checkpoint.save(ckpt, LeNet("lenet1"), seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_module("model.evaluate", "--checkpoint", ckpt, "--data", empty)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data ") and "no MNIST files there" in lines[0], r.stderr


# --------------------------------------------------------------------------- search order


def test_search_order(tmp_path, monkeypatch, mnist_dir):
    shared = link_mnist(mnist_dir, tmp_path / "shared/data/mnist")
    cwd = tmp_path / "work"
    local = link_mnist(mnist_dir, cwd / "data/mnist")
    env = link_mnist(mnist_dir, tmp_path / "env")
    explicit = link_mnist(mnist_dir, tmp_path / "explicit")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LENET_DATA", str(env))
    monkeypatch.setenv("LENET_MNIST_MIRROR", "http://127.0.0.1:9/")  # never used: nothing may download

    def where(explicit=None):
        return data.locate(explicit, allow_download=False).resolve()

    assert where(explicit) == explicit.resolve()  # --data beats everything
    assert where() == env.resolve()  # $LENET_DATA beats ./data/mnist
    bad = tmp_path / "no-mnist"
    bad.mkdir()
    monkeypatch.setenv("LENET_DATA", str(bad))  # a directory the user named must hold MNIST
    with pytest.raises(UserError, match=r"\$LENET_DATA .*no MNIST files there"):
        where()
    monkeypatch.setenv("LENET_DATA", str(env))

    monkeypatch.delenv("LENET_DATA")
    assert where() == local.resolve()  # ./data/mnist beats ../shared/data/mnist

    shutil.rmtree(local)
    assert where() == shared.resolve()

    # load() follows the same order
    assert data.load("test").images.shape == (10000, 28, 28)
    assert list(data._CACHE) == [(str(shared.resolve()), "test")]

    shutil.rmtree(shared)
    with pytest.raises(UserError, match="MNIST not found"):
        data.locate(allow_download=False)


def test_search_skips_incomplete_dirs(tmp_path, monkeypatch, mnist_dir):
    cwd = tmp_path / "work"
    shared = link_mnist(mnist_dir, tmp_path / "shared/data/mnist")
    local = cwd / "data/mnist"
    local.mkdir(parents=True)
    (local / "t10k-images-idx3-ubyte.gz").symlink_to(mnist_dir / "t10k-images-idx3-ubyte.gz")
    monkeypatch.chdir(cwd)
    assert data.locate(allow_download=False).resolve() == shared.resolve()


def test_finds_uncompressed_files(tmp_path, mnist_dir):
    d = link_mnist(mnist_dir, tmp_path / "m")
    (d / (LABELS + ".gz")).unlink()
    (d / LABELS).write_bytes(raw_bytes(mnist_dir, LABELS))
    assert data._find_file(d, LABELS) == d / LABELS
    assert data.load("test", d).labels.shape == (10000,)


# --------------------------------------------------------------------------- downloading


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, mnist_dir):
    """A real HTTP server on 127.0.0.1 serving good/, bad-sum/, bad-gz/, html/ and (absent) missing/."""
    root = tmp_path_factory.mktemp("mirror")
    good = root / "good"
    good.mkdir()
    for name in NAMES:
        shutil.copyfile(mnist_dir / (name + ".gz"), good / (name + ".gz"))
    # bad-sum: valid gzip + valid IDX, but one label changed in train-labels (the 2nd file fetched)
    bad_sum = root / "bad-sum"
    shutil.copytree(good, bad_sum)
    payload = bytearray(gzip.decompress((good / "train-labels-idx1-ubyte.gz").read_bytes()))
    payload[100] = (payload[100] + 1) % 10
    (bad_sum / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(payload)))
    # bad-gz: corrupt deflate stream in the first file fetched
    bad_gz = root / "bad-gz"
    bad_gz.mkdir()
    gz = bytearray((good / "train-images-idx3-ubyte.gz").read_bytes())
    gz[20] ^= 0xFF
    (bad_gz / "train-images-idx3-ubyte.gz").write_bytes(bytes(gz))
    html = root / "html"
    html.mkdir()
    (html / "train-images-idx3-ubyte.gz").write_bytes(b"<html><body>captive portal</body></html>")

    handler = type("Handler", (_Handler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    server.requests = handler.requests
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch, mirror):
    """An empty working directory with no ../shared; the loopback server reached without a proxy."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert not Path("../shared").exists() and not Path("data").exists()
    mirror.requests.clear()
    return cwd


def test_download(empty_cwd, mirror, monkeypatch, capsys):
    monkeypatch.setenv("LENET_MNIST_MIRROR", mirror.url + "good/")
    test = data.load("test")
    assert test.images.shape == (10000, 28, 28) and test.labels.shape == (10000,)
    dest = empty_cwd / "data/mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(n + ".gz" for n in NAMES)  # no temp files
    for name in NAMES:
        assert hashlib.sha256(gzip.decompress((dest / (name + ".gz")).read_bytes())).hexdigest() == data.SHA256[name]
    assert sorted(mirror.requests) == sorted(f"/good/{n}.gz" for n in NAMES)
    assert "MNIST downloaded and verified" in capsys.readouterr().err

    # now found locally: nothing fetched again
    mirror.requests.clear()
    data._CACHE.clear()
    assert data.load("train").images.shape == (60000, 28, 28)
    assert mirror.requests == []


def test_download_bad_checksum_leaves_nothing(empty_cwd, mirror, monkeypatch):
    monkeypatch.setenv("LENET_MNIST_MIRROR", mirror.url + "bad-sum/")
    with pytest.raises(UserError, match=r"could not download train-labels-idx1-ubyte: .*checksum mismatch"):
        data.load("test")
    # the file fetched before is complete and verified; the bad one and its temporary are gone
    assert [p.name for p in (empty_cwd / "data/mnist").iterdir()] == ["train-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("kind,reason", [("missing", "[Nn]ot [Ff]ound"), ("bad-gz", "corrupt gzip data"),
                                         ("html", "bad IDX magic number")])
def test_download_failures(empty_cwd, mirror, monkeypatch, kind, reason):
    monkeypatch.setenv("LENET_MNIST_MIRROR", mirror.url + kind + "/")
    with pytest.raises(UserError, match=f"could not download train-images-idx3-ubyte: .*{reason}"):
        data.load("test")
    assert list((empty_cwd / "data/mnist").iterdir()) == []


def test_download_falls_back_to_next_mirror(empty_cwd, mirror, monkeypatch):
    monkeypatch.setenv("LENET_MNIST_MIRROR", f"{mirror.url}missing/, {mirror.url}good/")
    assert data.load("test").labels.shape == (10000,)
    for name in NAMES:
        i, j = mirror.requests.index(f"/missing/{name}.gz"), mirror.requests.index(f"/good/{name}.gz")
        assert i < j
    assert sorted(p.name for p in (empty_cwd / "data/mnist").iterdir()) == sorted(n + ".gz" for n in NAMES)


def test_download_explicit_mirrors_argument(tmp_path, mirror, monkeypatch, mnist_dir):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    dest = tmp_path / "dl"
    dest.mkdir()
    for name in NAMES[1:]:  # already there: not fetched again
        (dest / (name + ".gz")).symlink_to(mnist_dir / (name + ".gz"))
    mirror.requests.clear()
    assert data.download(dest, mirrors=[mirror.url + "good"], quiet=True) == dest
    assert mirror.requests == [f"/good/{NAMES[0]}.gz"]


# --------------------------------------------------------------------------- preprocessing


def test_scale():
    x = data.scale(np.array([0, 255, 51], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-0.1, 1.175, -0.1 + 0.255], atol=1e-6)
    assert data.BACKGROUND == -0.1 and data.FOREGROUND == 1.175


def test_pad32():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, size=(3, 28, 28), dtype=np.uint8)
    out = data.pad32(img)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 2:30, 2:30], img)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (out[:, border] == 0).all()
    assert data.pad32(img[0]).shape == (1, 32, 32)  # single image promoted
    assert data.pad32(out) is out  # already 32x32


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((2, 28, 28), np.float32), "dtype float32, expected uint8"),
    (np.zeros((2, 28, 28), np.int64), "dtype int64"),
    (np.zeros((2, 28, 27), np.uint8), r"shape \(2, 28, 27\)"),
    (np.zeros((2, 1, 28, 28), np.uint8), "expected N x 28 x 28 or N x 32 x 32"),
    (np.zeros((784,), np.uint8), r"shape \(784,\)"),
    (np.zeros((30, 30), np.uint8), r"shape \(1, 30, 30\)"),
    ([[0] * 28] * 28, "expected a numpy array, got list"),
])
def test_check_images_rejects(bad, msg):
    with pytest.raises(UserError, match=msg):
        data.check_images(bad)
    if isinstance(bad, np.ndarray):
        with pytest.raises(UserError):
            data.pad32(bad)


def test_check_images_accepts():
    assert data.check_images(np.zeros((28, 28), np.uint8)).shape == (1, 28, 28)
    assert data.check_images(np.zeros((5, 32, 32), np.uint8)).shape == (5, 32, 32)
    assert data.check_images(np.zeros((0, 28, 28), np.uint8)).shape == (0, 28, 28)


# --------------------------------------------------------------------------- resample / fit_images


def _resample_loops(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """The documented rule with Python integers: windows floor(i H0/h) .. ceil((i+1) H0/h) - 1."""
    h0, w0 = img.shape
    out = np.zeros((h, w), np.uint8)
    for i in range(h):
        r0, r1 = (i * h0) // h, -((-(i + 1) * h0) // h)
        for j in range(w):
            c0, c1 = (j * w0) // w, -((-(j + 1) * w0) // w)
            win = [int(v) for v in img[r0:r1, c0:c1].flat]
            out[i, j] = (2 * sum(win) + len(win)) // (2 * len(win))
    return out


@pytest.mark.parametrize("h, w", [(16, 16), (12, 10), (7, 28), (28, 28), (1, 1), (5, 3)])
def test_resample_rule(h, w):
    rng = np.random.default_rng(h * 100 + w)
    imgs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    imgs[0] = rng.choice(np.array([0, 255], np.uint8), (28, 28))  # many exact halves: round half up
    out = data.resample(imgs, h, w)
    assert out.shape == (3, h, w) and out.dtype == np.uint8
    for a, b in zip(out, imgs):
        np.testing.assert_array_equal(a, _resample_loops(b, h, w))
    # the windows are torch's adaptive_avg_pool2d: the same means, rounded half up
    import torch

    mean = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(imgs).double()[:, None], (h, w))[:, 0].numpy()
    np.testing.assert_array_equal(out, np.floor(mean + 0.5 + 1e-9).astype(np.uint8))
    assert data.resample(imgs[1], h, w).shape == (h, w)
    if (h, w) == (28, 28):
        np.testing.assert_array_equal(out, imgs)


def test_resample_half_up_and_errors():
    img = np.array([[0, 1], [0, 0]], np.uint8)  # mean 1/4 -> 0; [1, 2]: mean 1.5 -> 2
    assert data.resample(img, 1, 1).tolist() == [[0]]
    assert data.resample(np.array([[1, 2]], np.uint8), 1, 1).tolist() == [[2]]
    with pytest.raises(UserError, match="dtype float64"):
        data.resample(np.zeros((2, 4, 4)), 2, 2)
    with pytest.raises(UserError, match="cannot resample"):
        data.resample(np.zeros((2, 4, 4), np.uint8), 0, 2)


def test_fit_images_shapes():
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    out = data.fit_images(digits, (1, 28, 28))
    assert out.shape == (4, 1, 28, 28) and np.array_equal(out[:, 0], digits)
    assert data.fit_images(digits[0], (1, 28, 28)).shape == (1, 1, 28, 28)  # a single image
    assert np.array_equal(data.fit_images(digits[:, None], (1, 28, 28)), out)  # N x 1 x H x W
    assert np.array_equal(data.fit_images(np.pad(digits, ((0, 0), (2, 2), (2, 2))), (1, 28, 28)), out)  # blank border
    small = data.fit_images(digits, (1, 16, 12))
    assert small.shape == (4, 1, 16, 12) and np.array_equal(small[:, 0], data.resample(digits, 16, 12))
    rgb = rng.integers(0, 256, (2, 3, 20, 30), dtype=np.uint8)
    assert np.array_equal(data.fit_images(rgb, (3, 20, 30)), rgb) and data.fit_images(rgb[0], (3, 20, 30)).shape == (1, 3, 20, 30)
    assert data.fit_images(np.zeros((0, 28, 28), np.uint8), (1, 16, 16)).shape == (0, 1, 16, 16)


@pytest.mark.parametrize("bad, shape, msg", [
    (np.zeros((2, 28, 28), np.uint8), (3, 28, 28), "images: shape (2, 28, 28), the spec takes 3 x 28 x 28"),
    (np.zeros((2, 28, 28), np.uint8), (1, 32, 32), "images: shape (2, 28, 28), the spec takes 1 x 32 x 32"),
    (np.zeros((2, 28, 28), np.uint8), (1, 16, 30), "images: shape (2, 28, 28), the spec takes 1 x 16 x 30"),
    (np.zeros((2, 32, 32), np.uint8), (1, 16, 16), "images: shape (2, 32, 32), the spec takes 1 x 16 x 16"),
    (np.zeros((2, 20, 20), np.uint8), (1, 16, 16), "images: shape (2, 20, 20), the spec takes 1 x 16 x 16"),
    (np.zeros((2, 1, 20, 30), np.uint8), (2, 20, 30), "images: shape (2, 1, 20, 30), the spec takes 2 x 20 x 30"),
    (np.zeros((784,), np.uint8), (1, 28, 28), "images: shape (784,), the spec takes 1 x 28 x 28"),
    (np.full((1, 32, 32), 9, np.uint8), (1, 28, 28), "images: shape (1, 32, 32) with a non-blank 2-pixel border"),
    (np.zeros((2, 28, 28), np.float32), (1, 28, 28), "images: dtype float32, expected uint8"),
    ([[0] * 28] * 28, (1, 28, 28), "images: expected a numpy array, got list"),
])
def test_fit_images_rejects(bad, shape, msg):
    with pytest.raises(UserError) as e:
        data.fit_images(bad, shape)
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_lenet1_preprocess_reads_the_resampled_grey_levels():
    """The float LeNet-1 sees the same 16x16 grey levels as its integer spec: resample, scale, pad 6."""
    import torch

    from model.lenet import input_geometry, preprocess

    digits = np.random.default_rng(2).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    assert input_geometry("lenet1") == (16, 6) and input_geometry("lenet5") == (28, 2)
    x = preprocess(digits, "lenet1")
    want = torch.nn.functional.pad(torch.from_numpy(data.scale(data.resample(digits, 16, 16)))[:, None], (6,) * 4,
                                   value=data.BACKGROUND)
    assert x.shape == (3, 1, 28, 28) and torch.equal(x, want)
