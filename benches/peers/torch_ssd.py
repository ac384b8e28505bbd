"""PyTorch peer of benches/detection: the same measurements, printed as JSON lines.

Usage: python torch_ssd.py --threads T --only ssd300,small [--tries K]

* ssd300: SSD300-VGG16 for VOC (21 classes, 8,732 priors) in plain torch, layer for layer
  the model of Kiln's `SsdConfig::ssd300` (apps/detection/src/model/vgg.rs, as ssd.pytorch):
  conv1_1..conv5_3 (pool3 ceil), pool5 3x3 s1 p1, fc6 3x3 dilation 6, fc7 1x1, L2Norm
  (scale 20) on conv4_3, extras conv8..conv11 with ReLU, 3x3 loc/conf heads with 4/6/6/6/4/4
  priors per cell. Eval mode, forward plus softmax of conf, no NMS; batch 1 and 8.
* small: the small SSD train step of ../shared/anchors/ssd_step.py (model, priors, matching
  and MultiBox loss copied below so that this file stands alone), its batch-8 inference
  (forward + softmax, no NMS) and the matching of 8 images alone.

Method (as benches/detection): warm-up, a fixed number of timed calls, median, with the
background-load accounting of torch_speech.py (imported from beside this file).
"""
import argparse
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_speech import out, time_n

NUM_CLASSES = 21


def params_of(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ SSD300-VGG16


class L2Norm(nn.Module):
    """x / sqrt(sum_c x^2 + eps) * weight[c], weight initially 20 (Kiln's Normalize)."""

    def __init__(self, channels, scale=20.0, eps=1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).sum(1, keepdim=True) + self.eps) * self.weight[None, :, None, None]


def conv_relu(i, o, k=3, stride=1, pad=1, dilation=1):
    return [nn.Conv2d(i, o, k, stride, pad, dilation=dilation), nn.ReLU(inplace=True)]


class SSD300(nn.Module):
    PER_CELL = [4, 6, 6, 6, 4, 4]

    def __init__(self, classes=NUM_CLASSES):
        super().__init__()
        self.classes = classes
        layers, c = [], 3
        for stage, width in [(1, 64), (2, 128), (3, 256), (4, 512), (5, 512)]:
            for _ in range(2 if stage <= 2 else 3):
                layers += conv_relu(c, width)
                c = width
            if stage == 4:
                self.to_conv4_3 = nn.Sequential(*layers)
                layers = [nn.MaxPool2d(2, 2)]
            elif stage == 5:
                layers.append(nn.MaxPool2d(3, 1, 1))
            elif stage == 3:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers.append(nn.MaxPool2d(2, 2))
        layers += conv_relu(512, 1024, 3, 1, 6, 6) + conv_relu(1024, 1024, 1, 1, 0)
        self.to_fc7 = nn.Sequential(*layers)
        self.l2norm = L2Norm(512)
        self.extras = nn.ModuleList()
        c = 1024
        for c1, c2, stride, pad in [(256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)]:
            self.extras.append(nn.Sequential(*conv_relu(c, c1, 1, 1, 0), *conv_relu(c1, c2, 3, stride, pad)))
            c = c2
        channels = [512, 1024, 512, 256, 256, 256]
        self.loc = nn.ModuleList([nn.Conv2d(ch, a * 4, 3, 1, 1) for ch, a in zip(channels, self.PER_CELL)])
        self.conf = nn.ModuleList([nn.Conv2d(ch, a * classes, 3, 1, 1) for ch, a in zip(channels, self.PER_CELL)])

    def forward(self, x):
        x = self.to_conv4_3(x)
        sources = [self.l2norm(x)]
        x = self.to_fc7(x)
        sources.append(x)
        for e in self.extras:
            x = e(x)
            sources.append(x)
        n = x.shape[0]
        loc = torch.cat([l(s).permute(0, 2, 3, 1).reshape(n, -1, 4) for s, l in zip(sources, self.loc)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(n, -1, self.classes)
                          for s, c in zip(sources, self.conf)], 1)
        return loc, conf


def ssd300(threads, tries):
    torch.manual_seed(0)
    model = SSD300().eval()
    params = params_of(model)
    for batch, iters in ((1, 10), (8, 5)):
        x = torch.randn(batch, 3, 300, 300)

        def infer():
            with torch.no_grad():
                _, conf = model(x)
                F.softmax(conf, -1)

        with torch.no_grad():
            priors = model(x[:1])[0].shape[1]
        t = time_n(infer, 2, iters, tries)
        out({"bench": "ssd300", "impl": f"torch {torch.__version__}", "threads": threads, "batch": batch,
             "params": params, "priors": priors, "infer_s": t["median_s"], "infer_min_s": t["min_s"],
             "images_per_s": batch / t["median_s"], "bg_pct": t["bg_pct"]})


# ------------------------------------------------- small SSD (anchors/ssd_step.py)

BATCH, SIZE = 8, 300
FMAPS = [38, 19, 10]
SCALES = [0.1, 0.35, 0.6, 0.85]
A = 4


def conv(i, o, stride=1):
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.ReLU(inplace=True))


class SmallSSD(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv(3, 32), nn.MaxPool2d(2),
            conv(32, 64), nn.MaxPool2d(2),
            conv(64, 128), nn.MaxPool2d(2, ceil_mode=True),
            conv(128, 256),
        )
        self.stage2 = conv(256, 256, 2)
        self.stage3 = conv(256, 256, 2)
        self.loc = nn.ModuleList([nn.Conv2d(256, A * 4, 3, 1, 1) for _ in FMAPS])
        self.conf = nn.ModuleList([nn.Conv2d(256, A * NUM_CLASSES, 3, 1, 1) for _ in FMAPS])

    def forward(self, x):
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        locs, confs = [], []
        for f, l, c in zip((f1, f2, f3), self.loc, self.conf):
            locs.append(l(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
            confs.append(c(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, NUM_CLASSES))
        return torch.cat(locs, 1), torch.cat(confs, 1)


def priors():
    p = []
    for k, f in enumerate(FMAPS):
        s, s2 = SCALES[k], math.sqrt(SCALES[k] * SCALES[k + 1])
        for i, j in itertools.product(range(f), repeat=2):
            cx, cy = (j + 0.5) / f, (i + 0.5) / f
            p.append([cx, cy, s, s])
            p.append([cx, cy, s2, s2])
            r = math.sqrt(2)
            p.append([cx, cy, s * r, s / r])
            p.append([cx, cy, s / r, s * r])
    return torch.tensor(p).clamp_(0, 1)  # cx, cy, w, h


def point_form(p):
    return torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1)


def iou(a, b):  # a: G x 4, b: P x 4, corner form
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).prod(1)[None, :]
    return inter / (area_a + area_b - inter)


def match(gt_boxes, gt_labels, pri, pri_pt, thresh=0.5, var=(0.1, 0.2)):
    ov = iou(gt_boxes, pri_pt)  # G x P
    best_prior = ov.argmax(1)  # G
    best_gt_ov, best_gt = ov.max(0)  # P
    best_gt_ov.index_fill_(0, best_prior, 2.0)
    for g, p in enumerate(best_prior.tolist()):
        best_gt[p] = g
    m = gt_boxes[best_gt]
    labels = gt_labels[best_gt].clone()
    labels[best_gt_ov < thresh] = 0
    c = (m[:, :2] + m[:, 2:]) / 2
    wh = m[:, 2:] - m[:, :2]
    loc = torch.cat([(c - pri[:, :2]) / (var[0] * pri[:, 2:]),
                     torch.log(wh / pri[:, 2:]) / var[1]], 1)
    return loc, labels


def encode_batch(targets, pri, pri_pt):
    locs, labels = [], []
    for boxes, lab in targets:
        l, c = match(boxes, lab, pri, pri_pt)
        locs.append(l)
        labels.append(c)
    return torch.stack(locs), torch.stack(labels)


def multibox_loss(loc_p, conf_p, loc_t, conf_t, neg_ratio=3):
    pos = conf_t > 0
    num_pos = pos.sum(1, keepdim=True)
    loss_l = F.smooth_l1_loss(loc_p[pos], loc_t[pos], reduction="sum")
    with torch.no_grad():
        ce = F.cross_entropy(conf_p.reshape(-1, NUM_CLASSES), conf_t.reshape(-1),
                             reduction="none").view_as(conf_t)
        ce[pos] = 0
        _, idx = ce.sort(1, descending=True)
        _, rank = idx.sort(1)
        num_neg = (neg_ratio * num_pos).clamp(max=pos.shape[1] - 1)
        neg = rank < num_neg
    sel = pos | neg
    loss_c = F.cross_entropy(conf_p[sel], conf_t[sel], reduction="sum")
    n = num_pos.sum().clamp(min=1).float()
    return loss_l / n, loss_c / n


def make_targets(g):
    t = []
    for _ in range(BATCH):
        k = int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 0.7
        wh = torch.rand(k, 2, generator=g) * 0.4 + 0.05
        boxes = torch.cat([xy, (xy + wh).clamp(max=1.0)], 1)
        labels = torch.randint(1, NUM_CLASSES, (k,), generator=g)
        t.append((boxes, labels))
    return t


def small(threads, tries):
    """ssd_step.py's main(), with this file's timing."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = SmallSSD()
    params = params_of(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    targets = make_targets(g)
    pri = priors()
    pri_pt = point_form(pri)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loc_t, conf_t = encode_batch(targets, pri, pri_pt)
        loc_p, conf_p = model(x)
        ll, lc = multibox_loss(loc_p, conf_p, loc_t, conf_t)
        loss = ll + lc
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    def infer():
        with torch.no_grad():
            loc_p, conf_p = model(x)
            F.softmax(conf_p, -1)

    def matching():
        encode_batch(targets, pri, pri_pt)

    model.train()
    tr = time_n(step, 2, 10, tries)
    model.eval()
    inf = time_n(infer, 2, 10, tries)
    mt = time_n(matching, 2, 20, tries)
    out({"bench": "ssd_small", "impl": f"torch {torch.__version__}", "threads": threads, "batch": BATCH,
         "params": params, "priors": int(pri.shape[0]), "train_step_s": tr["median_s"],
         "train_step_min_s": tr["min_s"], "train_images_per_s": BATCH / tr["median_s"],
         "infer_s": inf["median_s"], "infer_images_per_s": BATCH / inf["median_s"],
         "matching_ms": mt["median_s"] * 1e3, "first_loss": losses[0], "last_loss": losses[-1],
         "train_bg_pct": tr["bg_pct"], "infer_bg_pct": inf["bg_pct"], "matching_bg_pct": mt["bg_pct"],
         "bg_pct": max(tr["bg_pct"], inf["bg_pct"], mt["bg_pct"])})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tries", type=int, default=2)
    ap.add_argument("--only", default="ssd300,small")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    for what in a.only.split(","):
        if what == "ssd300":
            ssd300(a.threads, a.tries)
        elif what == "small":
            small(a.threads, a.tries)


if __name__ == "__main__":
    main()
