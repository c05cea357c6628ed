"""The KITTI object format: ``image_2/<id>.png`` and ``label_2/<id>.txt``, one object per line:

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]

Only the class and the 2-D box matter to a 2-D detector. ``DontCare`` boxes are regions
where objects were not labelled: they are kept apart, so that training does not punish
detections there and evaluation ignores them. Objects of classes not asked for are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import Loaded
from ..errors import UserError
from .augment import GridAugment
from .data import DEFAULT_CLASSES, DetectionData, Objects
from .grid import GridCoder
from .task import Detection

STRIDE = 16  # DetectNet's output stride: image sides must be multiples of it
MEAN, STD = 0.4, 0.25  # a rough grey level of road scenes; exact values hardly matter


@dataclass(frozen=True)
class Normalize:
    """uint8 pixels -> the detector's input, per batch (``TensorData.decode``)."""

    mean: float = MEAN
    std: float = STD

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def parse_label_file(path: Path, classes: tuple[str, ...]) -> tuple[list, list, list]:
    """(boxes, class indices, DontCare boxes) of one label file, in its image's pixels."""
    boxes, labels, ignore = [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text label file (not UTF-8)") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        f = line.split()
        if len(f) not in (15, 16):
            raise UserError(f"{path}:{n}: expected 15 fields (16 with a score), got {len(f)}")
        try:
            x1, y1, x2, y2 = (float(v) for v in f[4:8])
        except ValueError:
            raise UserError(f"{path}:{n}: the box (fields 5-8) must be numbers: "
                            f"{' '.join(f[4:8])}") from None
        if not all(np.isfinite((x1, y1, x2, y2))):
            raise UserError(f"{path}:{n}: the box {' '.join(f[4:8])} is not finite")
        if not (x2 >= x1 and y2 >= y1):
            raise UserError(f"{path}:{n}: box {x1} {y1} {x2} {y2} has x2 < x1 or y2 < y1")
        if f[0] == "DontCare":
            ignore.append((x1, y1, x2, y2))
        elif f[0] in classes:
            boxes.append((x1, y1, x2, y2))
            labels.append(classes.index(f[0]))
    return boxes, labels, ignore


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def read_split(folder: Path, classes: tuple[str, ...], size: tuple[int, int] | None,
               limit: int | None = None) -> tuple[torch.Tensor, list[Objects]]:
    """Images (N, 3, h, w) as uint8 (``Normalize`` makes them inputs), and their objects
    scaled to the loaded size."""
    img_dir, lab_dir = folder / "image_2", folder / "label_2"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise UserError(f"{folder}: expected image_2/ and label_2/ (the KITTI object layout)")
    ids = sorted(p.stem for p in img_dir.glob("*.png"))[:limit]
    if not ids:
        raise UserError(f"{img_dir}: no .png images")
    x: torch.Tensor | None = None  # filled in place: no second copy of the set at the end
    objects = []
    for n, i in enumerate(ids):
        label = lab_dir / f"{i}.txt"
        if not label.is_file():
            raise UserError(f"{label}: missing label file for image {i}.png")
        img = torch.from_numpy(_read_image(img_dir / f"{i}.png").copy()).permute(2, 0, 1)
        h0, w0 = img.shape[1:]
        h, w = size or (h0, w0)
        if (h, w) != (h0, w0):
            img = torch.nn.functional.interpolate(img[None].float(), size=(h, w),
                                                  mode="bilinear", align_corners=False)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        if x is None:
            x = torch.empty((len(ids), 3, h, w), dtype=torch.uint8)
        elif x.shape[2:] != img.shape[1:]:
            raise UserError(f"{img_dir}: images differ in size ({i}.png is {w0}x{h0}); "
                            "set data.size to resize them all")
        x[n] = img
        boxes, labels, ignore = parse_label_file(label, classes)
        scale = torch.tensor([w / w0, h / h0, w / w0, h / h0])
        objects.append(Objects(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale,
                               torch.tensor(labels, dtype=torch.int64),
                               torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4) * scale))
    return x, objects


def find_splits(root: Path) -> tuple[Path, Path | None]:
    """(train, test) folders: ``training/`` and ``testing/`` when both hold labels (our digit
    scenes), else ``training/`` alone (the KITTI release labels only its training set)."""
    if not root.is_dir():
        raise UserError(f"KITTI data folder {root} does not exist; pass --data-dir with the "
                        "folder holding training/image_2 and training/label_2")
    if (root / "image_2").is_dir():
        return root, None
    train = root / "training"
    if not train.is_dir():
        raise UserError(f"{root}: expected training/image_2 and training/label_2 "
                        "(the KITTI object layout)")
    test = root / "testing"
    return train, (test if (test / "label_2").is_dir() else None)


TEST_FRACTION = 0.2


def load_kitti(data_dir: str | None, cfg) -> Loaded:
    """KITTI-format data (or our digit scenes) as a detection task. Without a labelled
    ``testing/`` folder, the last 20% of ``training/`` (in file order) is the test set."""
    if data_dir is None:
        raise UserError("kitti: pass --data-dir with the folder holding training/image_2 and "
                        "training/label_2 (KITTI cannot be downloaded automatically)")
    classes = tuple(cfg.classes or DEFAULT_CLASSES)
    if isinstance(cfg.size, int):
        raise UserError("kitti: data.size is [height, width] for detection")
    size = tuple(cfg.size) if cfg.size else None
    train_dir, test_dir = find_splits(Path(data_dir).expanduser())
    x, objects = read_split(train_dir, classes, size or _default_size(train_dir))
    if test_dir is not None:
        xt, objects_t = read_split(test_dir, classes, tuple(x.shape[2:]))
    else:
        cut = len(x) - max(1, round(len(x) * TEST_FRACTION))
        x, xt, objects, objects_t = x[:cut], x[cut:], objects[:cut], objects[cut:]
    coder = GridCoder(len(classes), stride=STRIDE)
    h, w = x.shape[2:]
    if h % STRIDE or w % STRIDE:
        raise UserError(f"kitti: images are {h}x{w}; the detector needs multiples of "
                        f"{STRIDE}: set data.size")

    def data(images, objs, limit, augment=None) -> DetectionData:
        images, objs = images[:limit], objs[:limit]
        y = torch.stack([coder.encode(o.boxes, o.labels, o.ignore, h, w) for o in objs])
        return DetectionData(images, y, augment, Normalize(), objs, classes)

    task = Detection(coder, classes, strict=("Car",) if "Car" in classes else ())
    return Loaded(data(x, objects, cfg.train_limit, _augmentation(cfg.augment, coder)),
                  data(xt, objects_t, cfg.test_limit), len(classes), task, prepared=True)


def _augmentation(name: str, coder: GridCoder) -> GridAugment | None:
    if name in ("auto", "none"):
        return None  # auto: none, since the reader cannot tell KITTI from digit scenes
    if name == "crop-flip":
        raise UserError("kitti: data.augment crop-flip is for classification; detection "
                        "takes flip-shift (DetectNet's) or shift (no mirror, e.g. digits)")
    return GridAugment(coder, flip=name == "flip-shift")


def _default_size(folder: Path) -> tuple[int, int] | None:
    """The first image's size rounded up to multiples of the detector's stride (KITTI's
    375x1242 becomes 384x1248); every image is resized to it, since KITTI's differ by a
    few pixels."""
    first = next(iter(sorted((folder / "image_2").glob("*.png"))), None)
    if first is None:
        return None
    h, w = _read_image(first).shape[:2]
    return (-(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE)
