"""DetectNet's output grid: one coverage map per class and four box-corner maps per class,
at the network's stride. Targets are written into the grid; predictions are read out of it.

A cell is responsible for an object when the cell's centre lies in the central part of the
object's box (``coverage_shrink`` of its width and height; the cell holding the box centre
always is). Its box target is the offset of each corner from the cell centre, divided by
``box_scale`` pixels. Where objects overlap, the larger (nearer, in road scenes) one owns
the cell, as in DetectNet. Cells inside a DontCare region carry no coverage loss.

The box loss is normalized as DetectNet's is (its ``size-block`` and ``obj-norm``): a corner
error counts relative to the object's width or height, so a thin object's edges matter as
much as a wide one's (IoU, which decides a detection, is relative too), and each object
weighs the same however many cells it covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GridCoder:
    classes: int
    stride: int = 16
    box_scale: float = 64.0
    coverage_shrink: float = 0.5

    @property
    def channels(self) -> int:
        """Target channels: coverage (C), corners (4C), a care mask (1) and each cell's
        share of its object (1 / the object's cell count; 0 where no object)."""
        return 5 * self.classes + 2

    def encode(self, boxes: torch.Tensor, labels: torch.Tensor, ignore: torch.Tensor,
               height: int, width: int) -> torch.Tensor:
        """The dense target (``channels``, h/stride, w/stride) of one image."""
        gh, gw = height // self.stride, width // self.stride
        c = self.classes
        t = torch.zeros(5 * c + 2, gh, gw)
        owner = torch.full((gh, gw), -1, dtype=torch.int64)
        cy = (torch.arange(gh, dtype=torch.float32) + 0.5) * self.stride
        cx = (torch.arange(gw, dtype=torch.float32) + 0.5) * self.stride
        care = torch.ones(gh, gw, dtype=torch.bool)
        for x1, y1, x2, y2 in ignore.tolist():
            care &= ~((cy[:, None] >= y1) & (cy[:, None] <= y2)
                      & (cx[None, :] >= x1) & (cx[None, :] <= x2))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for i in torch.argsort(area).tolist():  # smaller first: larger boxes overwrite
            x1, y1, x2, y2 = boxes[i].tolist()
            k = int(labels[i])
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            hw, hh = (x2 - x1) * self.coverage_shrink / 2, (y2 - y1) * self.coverage_shrink / 2
            cells = ((cy[:, None] - my).abs() <= hh) & ((cx[None, :] - mx).abs() <= hw)
            r = min(gh - 1, max(0, int(my // self.stride)))
            q = min(gw - 1, max(0, int(mx // self.stride)))
            cells[r, q] = True
            t[:c, cells] = 0  # a cell belongs to one object
            t[k, cells] = 1
            dx, dy = cx[None, :].expand(gh, gw), cy[:, None].expand(gh, gw)
            corners = torch.stack([x1 - dx, y1 - dy, x2 - dx, y2 - dy])
            t[c + 4 * k: c + 4 * k + 4, cells] = corners[:, cells] / self.box_scale
            care |= cells
            owner[cells] = i
        t[-2] = care.float()
        ids, counts = owner[owner >= 0].unique(return_counts=True)
        for j, n in zip(ids.tolist(), counts.tolist(), strict=True):
            t[-1, owner == j] = 1.0 / n
        return t

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Coverage: binary cross-entropy over cared-for cells, per covering cell. Boxes: L1
        of each corner relative to the object's width (x) or height (y), averaged over an
        object's cells and then over the objects of the batch."""
        c = self.classes
        cov_t, box_t = target[:, :c], target[:, c:5 * c]
        care, share = target[:, 5 * c:5 * c + 1], target[:, 5 * c + 1:5 * c + 2]
        cov = torch.nn.functional.binary_cross_entropy_with_logits(
            out[:, :c], cov_t, weight=care.expand_as(cov_t), reduction="sum")
        cov = cov / cov_t.sum().clamp(min=1)
        n, _, gh, gw = box_t.shape
        corners = box_t.reshape(n, c, 4, gh, gw)
        size = (corners[:, :, 2:] - corners[:, :, :2]).repeat(1, 1, 2, 1, 1)  # w, h, w, h
        err = (out[:, c:5 * c].reshape(n, c, 4, gh, gw) - corners).abs()
        err = err / size.clamp(min=1.0 / self.box_scale)  # a pixel at least: no 0/0
        weight = (cov_t * share)[:, :, None]
        box = (err * weight).sum() / share.sum().clamp(min=1)
        return cov + box

    def decode(self, out: torch.Tensor, threshold: float = 0.05, iou: float = 0.5,
               max_dets: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image: (boxes (k, 4), scores (k,), labels (k,)) after thresholding the
        coverage and non-maximum suppression per class (DetectNet clusters the candidate
        boxes instead; NMS is the common replacement)."""
        c = self.classes
        n, _, gh, gw = out.shape
        prob = out[:, :c].sigmoid()
        cy = (torch.arange(gh, device=out.device, dtype=out.dtype) + 0.5) * self.stride
        cx = (torch.arange(gw, device=out.device, dtype=out.dtype) + 0.5) * self.stride
        centre = torch.stack([cx[None, :].expand(gh, gw), cy[:, None].expand(gh, gw)] * 2)
        results = []
        for i in range(n):
            all_b, all_s, all_l = [], [], []
            for k in range(c):
                keep = prob[i, k] > threshold
                if not bool(keep.any()):
                    continue
                b = (out[i, c + 4 * k: c + 4 * k + 4] * self.box_scale + centre)[:, keep].T
                s = prob[i, k][keep]
                sel = nms(b, s, iou)
                all_b.append(b[sel])
                all_s.append(s[sel])
                all_l.append(torch.full((len(sel),), k, dtype=torch.int64, device=out.device))
            if all_b:
                b, s, lab = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
                top = torch.argsort(s, descending=True)[:max_dets]
                results.append((b[top].cpu(), s[top].cpu(), lab[top].cpu()))
            else:
                results.append((torch.zeros(0, 4), torch.zeros(0),
                                torch.zeros(0, dtype=torch.int64)))
        return results


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices kept, best score first. The greedy loop runs
    on the CPU wherever the boxes are (on a GPU each step would wait for the device)."""
    order = torch.argsort(scores, descending=True)
    overlaps = box_iou(boxes[order], boxes[order]).cpu()
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= overlaps[i, i + 1:] <= iou
    return order[keep.to(order.device)]
