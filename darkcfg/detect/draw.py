"""Drawing detections and writing Darknet label lines: shared by still-image (`run.py`) and video
(`video.py`) detection."""

from __future__ import annotations

import functools

import torch

from darkcfg.detect.decode import Detections, Found


def label_lines(dets: Detections, thresh: float) -> list[str]:
    """Darknet's -save_labels: `class x y w h` (relative centre) for each detection's best class
    above thresh."""
    lines = []
    for box, probs in zip(dets.boxes.tolist(), dets.probs.float().cpu(), strict=True):
        above = torch.where(probs > thresh, probs, -1.0)
        if above.max() > 0:
            x, y, w, h = box
            lines.append(f"{int(above.argmax())} {x:2.4f} {y:2.4f} {w:2.4f} {h:2.4f}")
    return lines


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A fixed colour per class (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618034) % 1.0, 0.85, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


def drawn(image: torch.Tensor, found: list[Found]) -> torch.Tensor:
    """The image (C,H,W in [0,1], or uint8) as uint8 RGB with one box per detection and its
    labels."""
    from torchvision.utils import draw_bounding_boxes

    rgb = image.cpu() if image.dtype == torch.uint8 else \
        (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if rgb.shape[0] == 1:
        rgb = rgb.repeat(3, 1, 1)
    rgb = rgb[:3]
    h, w = rgb.shape[-2:]
    by_box: dict[tuple, list[Found]] = {}
    for f in found:
        by_box.setdefault(f.box, []).append(f)
    if not by_box:
        return rgb
    boxes, labels, colours = [], [], []
    for box, items in by_box.items():
        left, top, right, bottom = box  # clipped as Darknet draws them
        boxes.append([min(max(left, 0), w - 1), min(max(top, 0), h - 1),
                      min(max(right, 0), w - 1), min(max(bottom, 0), h - 1)])
        labels.append(", ".join(f"{f.name or f.class_id} {f.score * 100:.0f}%" for f in items))
        colours.append(class_colour(items[0].class_id))
    width = max(1, round(max(h, w) / 250))
    font, size = label_font(), max(10, round(max(h, w) / 40))
    return draw_bounding_boxes(rgb, torch.tensor(boxes, dtype=torch.float32), labels,
                               colors=colours, width=width, font=font,
                               font_size=size if font else None, label_colors="white",
                               label_background_colors=colours, fill_labels=True)


@functools.cache
def label_font() -> str | None:
    """A scalable font if the system has DejaVu Sans (most Linux systems), else PIL's default."""
    from PIL import ImageFont

    try:
        ImageFont.truetype("DejaVuSans.ttf", 12)
        return "DejaVuSans.ttf"
    except OSError:
        return None
