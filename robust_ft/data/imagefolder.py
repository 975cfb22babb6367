"""Own data: an ImageFolder tree ``<root>/train/<class>/*`` and ``<root>/val/<class>/*``, for any model.

Channels (1 or 3) and size default to the model's input shape (the CLI fills them in); every
PIL mode is converted to 8-bit L or RGB or refused by name. The dataset is identified by its
folder name and a digest of every byte of every file, which keys the decoded-image cache. The
digest is computed once per machine: it is kept under ``cache_dir()/digests``, keyed by the
folder, the split and the files' (path, size, mtime); processes starting together (DDP ranks)
hash the bytes once, the others wait for the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from robust_ft.cachedir import cache_dir
from robust_ft.data.datamodules import DistortedDataModule
from robust_ft.data.sources import INFO, DatasetInfo, DatasetNotFoundError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
EIGHT_BIT = {"1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
             "LAB", "HSV"}  # fmt: skip
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
log = logging.getLogger("robust_ft")


def split_dir(root: Path, split: str) -> Path:
    """``<root>/train`` or ``<root>/val`` (the test split)."""
    return Path(root) / ("val" if split == "test" else split)


def class_names(root: Path) -> list[str]:
    """The class sub-directories, which must be the same in ``train/`` and ``val/``."""
    names = {}
    for split in ("train", "test"):
        d = split_dir(root, split)
        if not d.is_dir():
            raise DatasetNotFoundError(
                f"ImageFolder root {root} has no {d.name}/ directory; expected "
                "<root>/train/<class>/<image> and <root>/val/<class>/<image>"
            )
        names[d.name] = {p.name for p in d.iterdir() if p.is_dir()}
    if not names["train"]:
        raise DatasetNotFoundError(f"{split_dir(root, 'train')} has no class sub-directories")
    if names["train"] != names["val"]:
        only_train = sorted(names["train"] - names["val"])
        only_val = sorted(names["val"] - names["train"])
        raise ValueError(
            f"the class folders of {root}/train and {root}/val differ: only in train/: "
            f"{only_train or 'none'}; only in val/: {only_val or 'none'}. Give both splits the "
            "same classes (an empty folder is allowed)"
        )
    return sorted(names["train"])


def list_files(root: Path, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) of every file of a split, in class then name order; non-images refused."""
    out = []
    for label, c in enumerate(classes):
        for f in sorted((split_dir(root, split) / c).iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() not in EXTENSIONS:
                raise ValueError(
                    f"{f} is not an image file (extension {f.suffix!r}); ImageFolder accepts "
                    f"{', '.join(EXTENSIONS)} — move other files out of the dataset tree"
                )
            out.append((f, label))
    return out


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def content_digest(files: list[tuple[Path, int]], base: Path) -> str:
    """sha256 of every file's bytes, relative path and label (threads: hashlib frees the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        digests = list(pool.map(_file_digest, [f for f, _ in files]))
    h = hashlib.sha256()
    for (f, y), d in zip(files, digests, strict=True):
        h.update(f"{f.relative_to(base)}\0{y}\0".encode() + d)
    return h.hexdigest()


_MEMO: dict[str, str] = {}


def stat_key(root: Path, split: str, files: list[tuple[Path, int]]) -> str:
    """A split's identity without reading a byte: the resolved root, the split and every file's
    (path, label, size, mtime_ns); a changed file gives a new key."""
    h = hashlib.sha256(f"{Path(root).resolve()}\0{split}\0".encode())
    for f, y in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{y}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _read_digest(path: Path) -> str | None:
    """The digest a cache file holds (None when it is missing or unreadable)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        digest = json.loads(path.read_text())["digest"]
        if len(digest) == 64 and int(digest, 16) >= 0:
            return digest
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """Hold ``<path>.lock`` for the block (processes wait for each other); yields whether the
    cache directory is writable (an unwritable one only costs hashing in every process)."""
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def split_digest(
    root: Path, split: str, classes: list[str], files: list[tuple[Path, int]] | None = None
) -> str:
    """``content_digest`` of a split, hashed once per machine while no file changes (stat):
    kept in ``cache_dir()/digests``; concurrent processes wait on a file lock for one hash.
    ``files``: the split's ``list_files`` listing when the caller has it already."""
    from robust_ft.data.cache import CacheNotWritableError, write_text

    files = list_files(root, split, classes) if files is None else files
    if not files:
        raise DatasetNotFoundError(f"no images found under {split_dir(root, split)}")
    key = stat_key(Path(root), split, files)
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir() / "digests" / f"{key}.json"
    digest = _read_digest(path)
    if digest is None:
        with _locked(path) as writable:
            digest = _read_digest(path)  # another process may have hashed it meanwhile
            if digest is None:
                size = sum(f.stat().st_size for f, _ in files)
                log.info(
                    "hashing %d files (%.1f MB) of %s for the dataset digest (once per machine)",
                    len(files), size / 1e6, split_dir(root, split),
                )  # fmt: skip
                digest = content_digest(files, Path(root))
                if writable:
                    record = {"root": str(Path(root).resolve()), "split": split, "digest": digest}
                    with contextlib.suppress(OSError, CacheNotWritableError):
                        write_text(path, json.dumps(record))
    _MEMO[key] = digest
    return digest


def folder_digest(root: str | Path) -> str:
    """An own dataset's identity: a digest of every file of both splits (16 hex digits)."""
    root = Path(root)
    classes = class_names(root)
    both = split_digest(root, "train", classes) + split_digest(root, "test", classes)
    return hashlib.sha256(both.encode()).hexdigest()[:16]


def _flatten_alpha(im):
    """An image with transparency composited over white (as a viewer shows it), mode RGB."""
    from PIL import Image

    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_8bit(im, channels: int):
    """A PIL image of any supported mode as 8-bit ``L`` (channels 1) or ``RGB`` (channels 3)."""
    from PIL import Image

    mode = im.mode
    if mode in SIXTEEN_BIT:
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer pixels outside 0..65535 (mode {mode})")
        im = Image.fromarray(np.round(a.astype(np.float64) / 257.0).astype(np.uint8), "L")
    elif mode not in EIGHT_BIT:
        raise ValueError(
            f"PIL mode {mode!r} is not supported (8-bit 1/L/P/LA/RGB/RGBA/CMYK/YCbCr and 16-bit "
            "grayscale are); convert the file to 8-bit PNG or JPEG"
        )
    elif mode in ("LA", "PA", "La", "RGBA", "RGBa") or "transparency" in im.info:
        im = _flatten_alpha(im)
    return im.convert("L" if channels == 1 else "RGB")


def decode(path: Path, channels: int, resize: int, crop: int) -> np.ndarray:
    """One file as uint8 (crop,crop) or (crop,crop,3): short side to ``resize``, centre crop."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.draft("L" if channels == 1 else "RGB", (resize, resize))  # JPEG: decode smaller
            im = to_8bit(ImageOps.exif_transpose(im), channels)
            w, h = im.size
            s = resize / min(w, h)
            im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - crop) // 2, (h - crop) // 2
            return np.array(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"{path} is too large to decode safely ({e}); shrink the image (e.g. to 4096 px on "
            "the long side) or, if you trust the file, raise the limit with "
            "ROBUST_FT_MAX_IMAGE_PIXELS=<pixels>"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot decode image {path}: {e}; remove or replace the file") from None


_PIL_LIMIT: list[int | None] = []  # PIL's own limit, kept the first time it is overridden


def _pixel_limit() -> None:
    """PIL's decompression-bomb limit: ``ROBUST_FT_MAX_IMAGE_PIXELS`` when set, else PIL's own
    (a limit set for one dataset does not stay for the next)."""
    from PIL import Image

    if not _PIL_LIMIT:
        _PIL_LIMIT.append(Image.MAX_IMAGE_PIXELS)
    limit = os.environ.get("ROBUST_FT_MAX_IMAGE_PIXELS")
    Image.MAX_IMAGE_PIXELS = int(limit) if limit else _PIL_LIMIT[0]


class ImageFolderDataModule(DistortedDataModule):
    """Own images in an ImageNet-layout tree, for any model; decoded once into a cached array.

    The paper's AlexNet protocol (Table 1) distorts them with ``level: U(0,4)``.
    """

    dataset_name = "imagefolder"

    def __init__(
        self,
        root: str = "data/imagenet",
        channels: int | None = None,
        crop: int | None = None,
        resize: int | None = None,
        name: str | None = None,
        num_classes: int | None = None,
        stream: bool | None = None,
        stream_above_mb: float = 4096,
        shard_workers: int = 2,
        **kwargs,
    ):
        """Args:
        root: the tree: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (the test set).
        channels: 1 (grayscale) or 3 (RGB); default: the model's.
        crop: the side of the square images the model gets; default: the model's.
        resize: the short side is resized to this before the centre crop; default: ``crop``.
        name: the dataset's name (experiment ``<model>-<name>``); default: the folder's name.
        num_classes: the model's output classes; default: the number of class folders.
        stream: read litdata shards in a stream instead of an in-memory array (data larger
            than memory); default: when the decoded images would pass ``stream_above_mb``.
        stream_above_mb: the size of decoded images above which ``stream`` is on by default.
        shard_workers: processes converting a split to shards (once per dataset).
        """
        super().__init__(root=root, **kwargs)
        if kwargs.get("cache_dir") is None:  # never inside the user's dataset
            self.cache_dir = cache_dir() / "imagefolder"
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3 (got {channels})")
        self.channels, self.crop = channels or 3, crop or 224
        self.resize = resize or self.crop
        if self.resize < self.crop:
            raise ValueError(f"resize ({self.resize}) must be >= crop ({self.crop})")
        self.dataset_name = name or dataset_name_of(root)
        self.classes = class_names(self.root)
        n = num_classes or len(self.classes)
        if n < len(self.classes):
            raise ValueError(f"num_classes={n} but {root} has {len(self.classes)} class folders")
        base = INFO["imagenet"] if self.channels == 3 else DatasetInfo(1, (1,), (0.5,), (0.25,))
        self.info = DatasetInfo(n, (self.channels, self.crop, self.crop), base.mean, base.std)
        self.stream, self.stream_above_mb, self.shard_workers = (
            stream,
            stream_above_mb,
            shard_workers,
        )
        self._streaming = None
        self._selection_keys: dict[str, str] = {}

    @classmethod
    def configured_name(cls, init_args) -> str:
        return init_args.get("name") or dataset_name_of(init_args.get("root") or "data/imagenet")

    @classmethod
    def configured_digest(cls, init_args) -> str | None:
        return folder_digest(init_args.get("root") or "data/imagenet")

    def files(self, split: str) -> list[tuple[Path, int]]:
        return list_files(self.root, split, self.classes)

    @property
    def content_digest(self) -> str:
        """The dataset's identity: a digest of every byte of both splits' files."""
        return folder_digest(self.root)

    @property
    def streaming(self):
        """The streaming splits (``StreamingSplits``) when this data is read in a stream, else None."""
        if self._streaming is None:
            stream = self.stream
            if stream is None:
                n = sum(len(self.files(s)) for s in ("train", "test"))
                stream = n * int(np.prod(self.info.image_shape)) > self.stream_above_mb * 2**20
            from robust_ft.data.streaming import StreamingSplits

            self._streaming = StreamingSplits(self) if stream else False
        return self._streaming or None

    def prepare_data(self) -> None:
        if self.streaming:
            self.streaming.prepare()
        else:
            super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if not self.streaming:
            return super().setup(stage)
        if not self.streaming.sets:
            self.streaming.setup()

    def train_dataloader(self):
        return self.streaming.loader("train") if self.streaming else super().train_dataloader()

    def val_dataloader(self):
        return self.streaming.loader("val") if self.streaming else super().val_dataloader()

    def test_dataloader(self):
        if not self.streaming:
            return super().test_dataloader()
        return [self.streaming.loader("test", i) for i in range(len(self.test_sets))]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Streaming batches (image, label, index): distorted here, on the device, then normalised."""
        if self.streaming and len(batch) in (3, 4):
            trainer = self.trainer
            split = "train" if trainer.training else "test" if trainer.testing else "val"
            batch = self.streaming.distort(batch, split, dataloader_idx, trainer.current_epoch)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def _distorted(self, split: str, images: np.ndarray, kind, level, digest=None) -> np.ndarray:
        """Own data in memory: every image drawn from the seed the streaming path gives it, so
        ``stream`` true or false gives the same bytes (the paper's datasets keep block seeds).
        Keyed by the split's file selection, so ``digest`` (of the pixels) is not needed."""
        from robust_ft.data.cache import cache_path, load_or_create
        from robust_ft.data.datamodules import _is_identity
        from robust_ft.data.streaming import StreamingSplits, distort_seeded_array

        if _is_identity(kind, level):
            return images
        if split not in self._selection_keys:  # one file listing per split, not per test set
            self._selection_keys[split] = StreamingSplits(self).selections()[split][1]
        key = self._selection_keys[split]
        path = cache_path(
            self.cache_dir,
            dataset=f"{self.dataset_name}-distorted",
            split=split,
            selection=key,
            kind=kind,
            level=list(level) if isinstance(level, tuple) else float(level),
            seed=self.seed,
            channels=self.channels,
            resize=self.resize,
            crop=self.crop,
        )
        return load_or_create(
            path,
            lambda: distort_seeded_array(
                images, kind, level, key, split, self.seed, self._distort_on()
            ),
            expected_shape=images.shape,
        )

    def load_split(self, split):
        from robust_ft.data.cache import cache_path, load_or_create

        _pixel_limit()
        files = self.files(split)
        shape = (len(files), self.crop, self.crop) + ((3,) if self.channels == 3 else ())
        path = cache_path(
            self.cache_dir,
            dataset=f"{self.dataset_name}-decoded",
            split=split,
            content=split_digest(self.root, split, self.classes),
            channels=self.channels,
            resize=self.resize,
            crop=self.crop,
        )
        images = load_or_create(
            path,
            lambda: np.stack([decode(f, self.channels, self.resize, self.crop) for f, _ in files]),
            expected_shape=shape,
        )
        return images, np.array([y for _, y in files], dtype=np.int64)


def dataset_name_of(root: str | Path) -> str:
    """An own dataset's default name: its folder's name (``data/flowers`` -> ``flowers``)."""
    return Path(root).resolve().name or "imagefolder"
