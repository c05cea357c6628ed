"""Mean average precision with pycocotools (the COCO reference implementation).

Each class's AP is COCO's 101-point interpolated precision at one IoU threshold (0.5 unless
asked otherwise; KITTI's own tool interpolates at 40 points, so numbers differ slightly
from its leaderboard). DontCare regions become COCO "crowd" regions of every class: a
detection that falls in one is neither a true nor a false positive.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch


def average_precision(detections: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                      objects: list, classes: int, iou: float = 0.5,
                      only: list[int] | None = None) -> dict[int, float]:
    """AP per class index (classes with no ground truth are left out).

    ``detections``: per image (boxes (k, 4) x1 y1 x2 y2, scores, labels);
    ``objects``: per image, with ``boxes``, ``labels`` and ``ignore`` (DontCare boxes).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        from ..errors import UserError

        raise UserError("detection needs pycocotools and pillow: "
                        "pip install 'evosynth[detection]'") from None
    cats = only if only is not None else list(range(classes))
    images, anns, dets = [], [], []

    def xywh(b):
        x1, y1, x2, y2 = (float(v) for v in b)
        return [x1, y1, x2 - x1, y2 - y1]

    for i, (obj, (boxes, scores, labels)) in enumerate(zip(objects, detections, strict=True)):
        images.append({"id": i})
        for b, k in zip(obj.boxes.tolist(), obj.labels.tolist(), strict=True):
            w = xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(k), "bbox": w,
                         "area": w[2] * w[3], "iscrowd": 0})
        for b in obj.ignore.tolist():
            w = xywh(b)
            for k in cats:
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": k, "bbox": w,
                             "area": w[2] * w[3], "iscrowd": 1})
        for b, s, k in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            dets.append({"image_id": i, "category_id": int(k), "bbox": xywh(b), "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": k} for k in range(classes)]}
        gt.createIndex()
        dt = gt.loadRes(dets) if dets else None
        has_gt = {k for k in cats if any(a["category_id"] == k and not a["iscrowd"]
                                         for a in anns)}
        if dt is None:
            return dict.fromkeys(sorted(has_gt), 0.0)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([iou])
        ev.params.catIds = cats
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (recall thresholds, classes)
    out = {}
    for j, k in enumerate(cats):
        if k in has_gt:
            p = precision[:, j]
            out[k] = float(np.where(p > -1, p, 0).mean())
    return out
