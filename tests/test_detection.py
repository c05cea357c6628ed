"""Detection: the KITTI reader, the digit scenes, mAP on hand-made cases, DetectNet's grid,
compaction through inception concatenations, and a detection generation end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pytest import approx

from evosynth.clusters import prunable_layers
from evosynth.compact import compact
from evosynth.coupling import Coupling
from evosynth.detection.grid import GridCoder, nms
from evosynth.detection.kitti import Objects, load_kitti, parse_label_file
from evosynth.detection.metrics import average_precision
from evosynth.detection.scenes import write_scenes
from evosynth.errors import UserError
from evosynth.genome import Genome, apply_param_masks
from evosynth.models.detectnet import detectnet_small

from .conftest import run_cli

CLASSES = ("Car", "Pedestrian", "Cyclist")
TAIL = "1.50 1.60 3.70 -3.0 1.7 12.0 -1.5"


def test_label_file_classes_dontcare_and_errors(tmp_path):
    f = tmp_path / "000001.txt"
    f.write_text(f"Car 0.00 0 -1.57 100.0 150.5 220.0 240.0 {TAIL}\n"
                 f"Van 0.00 0 -1.57 10 10 20 20 {TAIL}\n"
                 f"DontCare -1 -1 -10 500.0 160.0 540.0 200.0 -1 -1 -1 -1000 -1000 -1000 -10\n"
                 f"Cyclist 0.3 1 0.2 30 40 60 90 {TAIL} 0.87\n\n")
    boxes, labels, ignore = parse_label_file(f, CLASSES)
    assert boxes == [(100.0, 150.5, 220.0, 240.0), (30.0, 40.0, 60.0, 90.0)]
    assert labels == [0, 2] and ignore == [(500.0, 160.0, 540.0, 200.0)]
    f.write_text(f"Car 0.00 0 -1.57 100.0 150.5 220.0 240.0 {TAIL}\nCar 0 0 0 1 2 3\n")
    with pytest.raises(UserError, match=r"000001\.txt:2: expected 15 fields"):
        parse_label_file(f, CLASSES)
    f.write_text(f"Car 0.00 0 -1.57 100.0 abc 220.0 240.0 {TAIL}\n")
    with pytest.raises(UserError, match=r"000001\.txt:1: the box .* must be numbers"):
        parse_label_file(f, CLASSES)
    f.write_text(f"Car 0.00 0 -1.57 300 10 200 40 {TAIL}\n")
    with pytest.raises(UserError, match=r"000001\.txt:1: .*x2 < x1"):
        parse_label_file(f, CLASSES)


def write_kitti(root, n=5, size=(40, 72)):
    for split in ("training",):
        (root / split / "image_2").mkdir(parents=True)
        (root / split / "label_2").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (size[1], size[0]), (i * 20, 0, 0)).save(
                root / split / "image_2" / f"{i:06d}.png")
            (root / split / "label_2" / f"{i:06d}.txt").write_text(
                f"Car 0 0 0 7.2 4 43.2 20 {TAIL}\nDontCare -1 -1 -10 50 2 60 12 {TAIL}\n")
    return root


def test_kitti_loader_resizes_boxes_and_splits(tmp_path):
    from evosynth.config import DataConfig

    root = write_kitti(tmp_path / "k")
    loaded = load_kitti(str(root), DataConfig(size=[80, 144]))
    train, test = loaded.train, loaded.test
    assert train.x.shape == (4, 3, 80, 144) and len(test) == 1  # last 20%: the test set
    assert torch.allclose(train.objects[0].boxes, torch.tensor([[14.4, 8.0, 86.4, 40.0]]))
    assert torch.allclose(train.objects[0].ignore, torch.tensor([[100.0, 4.0, 120.0, 24.0]]))
    assert train.y.shape == (4, 5 * 3 + 2, 5, 9) and loaded.task.metric == "map"
    # pixels are held as bytes and become normalized inputs per batch, subsets included
    assert train.x.dtype == torch.uint8  # a flat image stays its exact byte when resized
    assert train.x[:, 0, 40, 70].tolist() == [0, 20, 40, 60]
    batch = train.subset(torch.tensor([2, 0])).inputs(slice(0, 2))
    assert batch.dtype == torch.float32
    assert torch.equal(batch, (train.x[[2, 0]].float() / 255 - 0.4) / 0.25)
    assert loaded.task.strict == ("Car",)
    assert train.augment is None  # auto: no augmentation (digit scenes must not mirror)
    flips = load_kitti(str(root), DataConfig(size=[80, 144], augment="flip-shift"))
    assert flips.train.augment.flip and flips.test.augment is None
    assert not load_kitti(str(root), DataConfig(size=[80, 144], augment="shift")
                          ).train.augment.flip
    with pytest.raises(UserError, match="crop-flip is for classification"):
        load_kitti(str(root), DataConfig(size=[80, 144], augment="crop-flip"))
    rounded = load_kitti(str(root), DataConfig())  # 40x72 rounded up to multiples of 16
    assert rounded.train.x.shape[2:] == (48, 80)
    with pytest.raises(UserError, match="multiples of 16"):
        load_kitti(str(root), DataConfig(size=[40, 72]))
    (root / "training" / "label_2" / "000003.txt").unlink()
    with pytest.raises(UserError, match=r"000003\.txt: missing label file"):
        load_kitti(str(root), DataConfig(size=[80, 144]))


def test_scene_boxes_hold_exactly_the_digits(tmp_path):
    rng = np.random.default_rng(0)
    digits = np.zeros((30, 28, 28), dtype=np.uint8)
    for d in digits:  # a solid stroke of random extent
        r0, c0 = rng.integers(2, 10, 2)
        d[r0:r0 + rng.integers(8, 16), c0:c0 + rng.integers(3, 14)] = 255
    labels = np.arange(30) % 5
    out = write_scenes(tmp_path / "s", digits, labels, 6, digits=(0, 1, 2), seed=3)
    again = write_scenes(tmp_path / "t", digits, labels, 6, digits=(0, 1, 2), seed=3)
    for k in range(6):
        name = f"{k:06d}"
        img = np.asarray(Image.open(out / "training" / "image_2" / f"{name}.png"))[..., 0]
        lines = (out / "training" / "label_2" / f"{name}.txt").read_text().split("\n")[:-1]
        assert lines == (again / "training" / "label_2" / f"{name}.txt").read_text().split(
            "\n")[:-1]
        ink = img > 63
        inside = np.zeros_like(ink)
        for line in lines:
            f = line.split()
            assert f[0] in ("zero", "one", "two", "DontCare") and len(f) == 15
            x1, y1, x2, y2 = (round(float(v)) for v in f[4:8])
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            inside[y1:y2, x1:x2] = True
            # tight: ink touches each edge of the box
            box = ink[y1:y2, x1:x2]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        assert not (ink & ~inside).any(), "ink outside every labelled box"


def obj(boxes, labels, ignore=()):
    return Objects(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                   torch.tensor(labels, dtype=torch.int64),
                   torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4))


def det(boxes, scores, labels):
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores),
            torch.tensor(labels, dtype=torch.int64))


def test_map_hand_made_cases():
    gt = [obj([[10, 10, 50, 50]], [0])]
    assert average_precision([det([[10, 10, 50, 50]], [0.9], [0])], gt, 1) == {0: approx(1)}
    # a false positive scored above the true one: precision 1/2 at every recall
    two = det([[100, 100, 140, 140], [10, 10, 50, 50]], [0.9, 0.8], [0, 0])
    assert average_precision([two], gt, 1)[0] == approx(0.5)
    # two objects, one found: precision 1 up to recall 0.5 (51 of COCO's 101 points)
    gt2 = [obj([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0])]
    assert average_precision([det([[10, 10, 50, 50]], [0.9], [0])], gt2, 1)[0] == \
        approx(51 / 101)
    # IoU 0.48 (40x40 box shifted by 14 px: 1040 / 2160) misses at 0.5, matches at 0.4
    off = [det([[24, 10, 64, 50]], [0.9], [0])]
    assert average_precision(off, gt, 1, iou=0.5)[0] == 0.0
    assert average_precision(off, gt, 1, iou=0.4)[0] == approx(1)
    # a confident detection inside a DontCare region is ignored, not a false positive
    gtd = [obj([[10, 10, 50, 50]], [0], ignore=[[200, 200, 260, 260]])]
    dd = det([[205, 205, 255, 255], [10, 10, 50, 50]], [0.95, 0.6], [0, 0])
    assert average_precision([dd], gtd, 1)[0] == approx(1)
    # per class; a class with no ground truth is left out of the mean
    gt3 = [obj([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 1])]
    d3 = det([[10, 10, 50, 50], [60, 60, 90, 90]], [0.5, 0.9], [1, 1])  # class 0 missed
    assert average_precision([d3], gt3, 3) == {0: 0.0, 1: approx(1)}


def test_grid_round_trip_and_nms():
    coder = GridCoder(2)
    o = obj([[10, 20, 50, 44], [70, 66, 120, 126]], [0, 1], ignore=[[0, 100, 30, 128]])
    t = coder.encode(o.boxes, o.labels, o.ignore, 128, 128)
    assert t.shape == (coder.channels, 8, 8) == (12, 8, 8)
    assert t[0].sum() >= 1 and t[1].sum() >= 1
    assert t[-2, 7, 0] == 0 and t[-2, 0, 0] == 1  # the DontCare cell carries no loss
    # each object's cells share one unit of weight; cells of no object weigh nothing
    assert t[-1].sum() == approx(2) and t[-1][t[:2].sum(0) == 0].abs().sum() == 0
    logits = t[:10].clone()
    logits[:2] = torch.where(t[:2] > 0, 8.0, -8.0)
    (boxes, _, labels), = coder.decode(logits[None])
    assert sorted(labels.tolist()) == [0, 1]
    for b, k in zip(boxes, labels, strict=True):
        assert torch.allclose(b, o.boxes[int(k)], atol=1e-4)
    b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]])
    assert nms(b, torch.tensor([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]


def test_box_loss_is_relative_to_object_size_and_per_object():
    """A 2-px corner error costs a thin object what a 10-px error costs one five times as
    wide, and an object covering many cells weighs no more than one covering a single cell."""
    coder = GridCoder(1)

    def box_loss(boxes, shift):
        o = obj(boxes, [0] * len(boxes))
        t = coder.encode(o.boxes, o.labels, o.ignore, 128, 128)[None]
        out = t[:, :5].clone()
        out[:, 0] = torch.where(t[:, 0] > 0, 30.0, -30.0)  # coverage exact: loss is the box
        out[:, 1] += shift / coder.box_scale  # every x1 off by `shift` pixels
        return float(coder.loss(out, t))

    thin, wide = [[40, 20, 48, 100]], [[20, 20, 60, 100]]
    assert box_loss(thin, 2) == approx(box_loss(wide, 10), rel=1e-4)
    assert box_loss(thin, 2) == approx(0.25, rel=1e-4)  # 2 px of an 8-px width
    big, thin2 = [[0, 0, 60, 60]], [[90, 60, 98, 124]]  # big covers 4 cells, thin2 one
    assert box_loss(big, 10) == approx(10 / 60, rel=1e-4)
    assert box_loss(big + thin2, 2) == approx((2 / 60 + 2 / 8) / 2, rel=1e-4)


def test_grid_augment_moves_targets_exactly_with_the_image():
    """Shifting by whole cells and mirroring the image gives the targets that encoding the
    moved boxes gives, so training sees the same labels it would from a re-labelled image."""
    from evosynth.detection.augment import GridAugment

    coder, size = GridCoder(2), 128
    boxes = torch.tensor([[35.3, 21.7, 60.2, 70.9], [70.6, 50.1, 83.3, 99.4]])
    labels = torch.tensor([0, 1])
    o = obj(boxes.tolist(), labels.tolist())
    t = coder.encode(o.boxes, o.labels, o.ignore, size, size)[None]
    img = torch.randn(1, 3, size, size)
    aug = GridAugment(coder)
    for (dy, dx), mirror in [((1, -2), True), ((-1, 2), False), ((2, 1), True)]:
        xa, ta = aug.apply(img, t, torch.tensor([[dy], [dx]]), torch.tensor([mirror]))
        moved = boxes + torch.tensor([dx, dy, dx, dy]) * coder.stride
        expect_img = torch.zeros_like(img)  # shift with zero fill, then mirror
        src = img[..., max(0, -dy * 16):size - max(0, dy * 16),
                  max(0, -dx * 16):size - max(0, dx * 16)]
        expect_img[..., max(0, dy * 16):size - max(0, -dy * 16),
                   max(0, dx * 16):size - max(0, -dx * 16)] = src
        if mirror:
            moved = torch.stack([size - moved[:, 2], moved[:, 1], size - moved[:, 0],
                                 moved[:, 3]], dim=1)
            expect_img = expect_img.flip(-1)
        assert torch.equal(xa, expect_img)
        expect = coder.encode(moved, labels, torch.zeros(0, 4), size, size)[None]
        assert torch.allclose(ta[:, :10], expect[:, :10], atol=1e-6)  # coverage, corners
        assert torch.equal(ta[:, -1], expect[:, -1])  # each object's share of weight
        # cells shifted in from outside the image carry no loss
        assert int((ta[0, -2] == 0).sum()) == 8 * 8 - (8 - abs(dy)) * (8 - abs(dx))
        logits = torch.cat([torch.where(ta[:, :2] > 0, 9.0, -9.0), ta[:, 2:10]], 1)
        (b, _, lab), = coder.decode(logits)  # the moved boxes come back out of the grid
        for box, k in zip(b, lab, strict=True):
            assert torch.allclose(box, moved[int(k)], atol=1e-4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batch_x, batch_t = img.expand(6, -1, -1, -1), t.expand(6, -1, -1, -1)
    a, b = aug(batch_x, batch_t, g1), aug(batch_x, batch_t, g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not all(torch.equal(a[0][0], a[0][i]) for i in range(1, 6))  # drawn per image


def test_detectnet_compacts_through_inception_concatenation():
    torch.manual_seed(0)
    model = detectnet_small(3, (3, 64, 64)).eval()
    layers = prunable_layers(model)
    x = torch.randn(2, 3, 64, 64)
    coupling = Coupling.build(model, x, layers)
    g = torch.Generator().manual_seed(0)
    masks = Genome.dense(model, layers).masks
    for name in layers:
        if name != "head":
            masks[name][torch.rand(masks[name].shape[0], generator=g) < 0.3] = False
    masks = coupling.propagate(masks, {"head"})
    apply_param_masks(model, coupling.param_masks(model, masks))
    c = compact(model, x[:1], masks)
    assert sum(c.removed.values()) > 0
    assert sum(p.numel() for p in c.model.parameters()) < sum(p.numel()
                                                              for p in model.parameters())
    assert torch.allclose(c.model(x), model(x), atol=1e-5)


def tiny_scenes(root):
    """24 training and 8 test scenes of 64x64 with blocky fake digits, in KITTI layout."""
    rng = np.random.default_rng(1)
    digits = (rng.random((40, 28, 28)) * 60).astype(np.uint8)
    digits[:, 6:22, 8:20] = 255
    labels = np.arange(40) % 4
    write_scenes(root, digits, labels, 24, size=64, scale=(20, 30), seed=0)
    write_scenes(root, digits, labels, 8, split="testing", size=64, scale=(20, 30), seed=1)
    return root


def test_detection_generation_end_to_end(tmp_path, capsys):
    tiny_scenes(tmp_path / "k")
    cfg = tmp_path / "det.yaml"
    cfg.write_text("data: {classes: [zero, one, two]}\nmodel_args: {width: 0.125, blocks: 3}\n"
                   "encoding: {granularity: filter, cluster_factor: 0.7}\n"
                   "evolution: {environment: {kind: schedule}, max_drop: null}\n"
                   "measure: {costs: false}\n"
                   "train: {batch_size: 8}\nancestor_train: {batch_size: 8}\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "evolve", "--model", "detectnet-small", "--dataset",
                                "kitti", "--data-dir", tmp_path / "k", "--config", cfg,
                                "--generations", "1", "--epochs", "1", "--ancestor-epochs",
                                "1", "--no-progress", "--out", out)
    assert code == 0, err
    hist = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert [h["generation"] for h in hist] == [0, 1]
    for h in hist:
        assert 0 <= h["val_map"] <= 1 and 0 <= h["test_map"] <= 1
        assert set(h["test_ap"]) <= {"zero", "one", "two"} and "val_accuracy" not in h
    assert hist[1]["synapses"] < hist[0]["synapses"]
    assert "val mAP" in stdout


def test_python_api_evolves_a_detector_with_its_task(tmp_path):
    import evosynth
    from evosynth.config import DataConfig

    loaded = load_kitti(str(tiny_scenes(tmp_path / "k")),
                        DataConfig(classes=["zero", "one"], augment="flip-shift"))
    torch.manual_seed(0)
    model = detectnet_small(2, (3, 64, 64), width=0.125, blocks=3)
    config = {"encoding": {"granularity": "filter", "cluster_factor": 0.7},
              "evolution": {"environment": {"kind": "schedule"}, "generations": 1},
              "measure": {"costs": False},
              "train": {"epochs": 1, "batch_size": 8},
              "ancestor_train": {"epochs": 1, "batch_size": 8}}
    res = evosynth.evolve(model, loaded.train, loaded.test, config, task=loaded.task,
                          run_dir=tmp_path / "run", log=lambda line: None)
    assert [h["generation"] for h in res.history] == [0, 1]
    assert all(0 <= h["test_map"] <= 1 and set(h["test_ap"]) <= {"zero", "one"}
               for h in res.history)
    assert res.history[1]["kernel_clusters"] < res.history[0]["kernel_clusters"]
    with pytest.raises(UserError, match="TensorData"):
        evosynth.evolve(model, (loaded.train.x, loaded.train.y), None, config,
                        task=loaded.task, log=lambda line: None)


def test_scenes_command_writes_kitti_folders_once(fake_mnist, tmp_path, capsys):
    def cli(*args):
        return run_cli(capsys, "scenes", *args)[0]

    out = tmp_path / "scenes"
    assert cli(out, "--mnist-dir", fake_mnist, "--train", 3, "--test", 2, "--digits", "3,7") == 0
    assert len(list((out / "training" / "image_2").glob("*.png"))) == 3
    assert len(list((out / "testing" / "label_2").glob("*.txt"))) == 2
    names = {line.split()[0] for f in (out / "training" / "label_2").glob("*.txt")
             for line in f.read_text().splitlines()}
    assert names <= {"three", "seven", "DontCare"} and names & {"three", "seven"}
    before = sorted(p.read_bytes() for p in out.rglob("*.txt"))
    code, _, err = run_cli(capsys, "scenes", out, "--mnist-dir", fake_mnist)
    assert code == 2 and "already holds scenes" in err
    assert sorted(p.read_bytes() for p in out.rglob("*.txt")) == before
    assert cli(tmp_path / "x", "--mnist-dir", fake_mnist, "--digits", "1,12") == 2
