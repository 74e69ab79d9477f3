"""The toy world: procedural objects with an unambiguous front, sides and back (docs/design.md §10).

Every object is a handful of analytic primitives (ellipsoids and boxes, each with a part id and a
colour), ray-cast exactly, shaded lambertian and composited on white. The cameras are the project's
(docs/design.md §2: z up, azimuth 0 = front): every object's front faces +x. The front and back cues
are large on purpose (a face, mask or screen covering a good part of the silhouette; a big dark tail
or back plate), because features of 2-3 pixels vanish at 32x32 and do not survive SDS.

Views by true camera angles (``view_of``): overhead when elevation > 60°, else by |azimuth|:
front below 45°, side from 45° to 135°, back above 135°.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamperp.cameras import CameraBatch, camera_rays, make_cameras, view_index, wrap_azimuth
from dreamperp.config import OVERHEAD_THRESHOLD_DEG, DataConfig
from research.toy.captions import CaptionBias, caption, sample_views

FAMILIES: tuple[str, ...] = ("bird", "cat", "robot")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.08),
    "green": (0.12, 0.68, 0.18),
    "blue": (0.12, 0.28, 0.92),
    "yellow": (0.96, 0.84, 0.08),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Part ids of the part mask (0 is the background). "face", "eye" and "front" parts are only visible
# from the front half; "back" parts are the big cues behind.
PART_NAMES: tuple[str, ...] = ("background", "body", "face", "eye", "front", "back", "side")
PART = {name: i for i, name in enumerate(PART_NAMES)}

OVERHEAD_MIN_ELEVATION = OVERHEAD_THRESHOLD_DEG  # views above this elevation are "overhead"
OVERHEAD_ELEVATION_RANGE = (62.0, 85.0)  # where overhead toy images are drawn

_WHITE = (0.96, 0.96, 0.94)
_BLACK = (0.06, 0.06, 0.07)
_ORANGE = (1.00, 0.50, 0.05)
_PINK = (0.98, 0.55, 0.65)
_DARK = (0.16, 0.13, 0.20)
_GREY = (0.55, 0.55, 0.58)
_CYAN = (0.20, 0.95, 1.00)

# (part, kind, centre, semi-axes, (pitch about y, yaw about z) in degrees, colour): colour "body" is
# the object's colour, "dark" a darker shade of it, else a fixed RGB.
_Part = tuple[str, str, tuple[float, float, float], tuple[float, float, float], tuple[float, float], object]

_SHAPES: dict[str, list[_Part]] = {
    "bird": [
        ("body", "ellipsoid", (0.0, 0.0, -0.08), (0.36, 0.31, 0.31), (0, 0), "body"),
        ("body", "ellipsoid", (0.20, 0.0, 0.20), (0.23, 0.23, 0.22), (0, 0), "body"),
        # A big cyan mask over most of the face, big black eyes on it and a big orange beak. Not
        # white: SDS draws a white mask as a see-through hole onto the white background, which the
        # other views then fill (docs/design.md §10).
        ("face", "ellipsoid", (0.36, 0.0, 0.21), (0.08, 0.20, 0.18), (0, 0), _CYAN),
        ("eye", "ellipsoid", (0.43, 0.085, 0.26), (0.03, 0.06, 0.07), (0, 0), _BLACK),
        ("eye", "ellipsoid", (0.43, -0.085, 0.26), (0.03, 0.06, 0.07), (0, 0), _BLACK),
        ("front", "ellipsoid", (0.50, 0.0, 0.14), (0.15, 0.075, 0.065), (-10, 0), _ORANGE),
        # A big dark tail fan behind, raised, and wings at the sides.
        ("back", "ellipsoid", (-0.37, 0.0, 0.10), (0.22, 0.27, 0.05), (-55, 0), _DARK),
        ("side", "ellipsoid", (-0.04, 0.29, -0.02), (0.26, 0.06, 0.17), (-15, 0), "dark"),
        ("side", "ellipsoid", (-0.04, -0.29, -0.02), (0.26, 0.06, 0.17), (-15, 0), "dark"),
    ],
    "cat": [
        ("body", "ellipsoid", (0.0, 0.0, -0.02), (0.40, 0.44, 0.38), (0, 0), "body"),
        ("side", "ellipsoid", (-0.02, 0.23, 0.36), (0.07, 0.11, 0.17), (0, 0), "body"),
        ("side", "ellipsoid", (-0.02, -0.23, 0.36), (0.07, 0.11, 0.17), (0, 0), "body"),
        ("front", "ellipsoid", (0.04, 0.23, 0.35), (0.04, 0.075, 0.12), (0, 0), _PINK),
        ("front", "ellipsoid", (0.04, -0.23, 0.35), (0.04, 0.075, 0.12), (0, 0), _PINK),
        # A big cyan muzzle and cheeks (not white, as the bird's mask), big black eyes, a pink nose;
        # the back of the head is plain.
        ("face", "ellipsoid", (0.35, 0.0, -0.10), (0.16, 0.26, 0.17), (0, 0), _CYAN),
        ("eye", "ellipsoid", (0.36, 0.15, 0.10), (0.05, 0.075, 0.085), (0, 0), _BLACK),
        ("eye", "ellipsoid", (0.36, -0.15, 0.10), (0.05, 0.075, 0.085), (0, 0), _BLACK),
        ("front", "ellipsoid", (0.50, 0.0, -0.03), (0.04, 0.065, 0.045), (0, 0), _PINK),
    ],
    "robot": [
        ("body", "box", (0.0, 0.0, -0.22), (0.21, 0.30, 0.24), (0, 0), "body"),
        ("body", "box", (0.0, 0.0, 0.22), (0.23, 0.26, 0.19), (0, 0), "body"),
        # A black face screen with cyan eyes on the front, a grey pack with orange nozzles behind.
        ("face", "box", (0.215, 0.0, 0.22), (0.035, 0.22, 0.145), (0, 0), _BLACK),
        ("eye", "ellipsoid", (0.25, 0.10, 0.25), (0.02, 0.065, 0.055), (0, 0), _CYAN),
        ("eye", "ellipsoid", (0.25, -0.10, 0.25), (0.02, 0.065, 0.055), (0, 0), _CYAN),
        ("front", "box", (0.21, 0.0, -0.20), (0.02, 0.16, 0.11), (0, 0), _WHITE),
        ("back", "box", (-0.27, 0.0, -0.10), (0.08, 0.24, 0.24), (0, 0), _GREY),
        ("back", "ellipsoid", (-0.36, 0.11, -0.28), (0.05, 0.07, 0.07), (0, 0), _ORANGE),
        ("back", "ellipsoid", (-0.36, -0.11, -0.28), (0.05, 0.07, 0.07), (0, 0), _ORANGE),
        ("side", "ellipsoid", (0.0, 0.37, -0.18), (0.08, 0.07, 0.21), (0, 0), _GREY),
        ("side", "ellipsoid", (0.0, -0.37, -0.18), (0.08, 0.07, 0.21), (0, 0), _GREY),
    ],
}


def _rotation(pitch_deg: float, yaw_deg: float) -> Tensor:
    """Local-to-world rotation ``[3, 3]``: pitch about y (positive raises the local +x end), then yaw about z."""
    p, y = math.radians(pitch_deg), math.radians(yaw_deg)
    ry = torch.tensor([[math.cos(p), 0.0, -math.sin(p)], [0.0, 1.0, 0.0], [math.sin(p), 0.0, math.cos(p)]])
    rz = torch.tensor([[math.cos(y), -math.sin(y), 0.0], [math.sin(y), math.cos(y), 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry


@dataclass
class _Shape:
    """One family's primitives: P parts, each ``centre [P, 3]``, ``axes [P, 3]``, ``rot [P, 3, 3]``
    (local to world), ``is_box [P]``, ``part_id [P]``, and its colour rule."""

    centre: Tensor
    axes: Tensor
    rot: Tensor
    is_box: Tensor
    part_id: Tensor
    colours: list[object]

    def part_colours(self, body: Tensor) -> Tensor:
        """Per-image part colours ``[B, P, 3]`` for body colours ``body [B, 3]``."""
        cols = []
        for c in self.colours:
            if c == "body":
                cols.append(body)
            elif c == "dark":
                cols.append(body * 0.55)
            else:
                cols.append(torch.tensor(c, dtype=body.dtype, device=body.device).expand_as(body))
        return torch.stack(cols, 1)


def _shape(family: str, device: torch.device) -> _Shape:
    parts = _SHAPES[family]
    return _Shape(
        centre=torch.tensor([p[2] for p in parts], device=device),
        axes=torch.tensor([p[3] for p in parts], device=device),
        rot=torch.stack([_rotation(*p[4]) for p in parts]).to(device),
        is_box=torch.tensor([p[1] == "box" for p in parts], device=device),
        part_id=torch.tensor([PART[p[0]] for p in parts], device=device),
        colours=[p[5] for p in parts],
    )


def _intersect(shape: _Shape, rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit of rays ``[N, 3]`` with the shape's parts: ``t [N]`` (inf on a miss), part index ``[N]``, unit normal ``[N, 3]``."""

    def local(parts: Tensor, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        # Into each part's frame, scaled so the part is the unit sphere / the cube [-1, 1]^3: R^T (x - c) / s.
        rot, axes = shape.rot[parts], shape.axes[parts]
        return (torch.einsum("npj,pjk->npk", o[:, None, :] - shape.centre[parts], rot) / axes,
                torch.einsum("nj,pjk->npk", d, rot) / axes)

    n_rays, n_parts = rays_o.shape[0], shape.centre.shape[0]
    t_all = torch.full((n_rays, n_parts), math.inf, device=rays_o.device)
    ell, box = (~shape.is_box).nonzero().squeeze(-1), shape.is_box.nonzero().squeeze(-1)
    if ell.numel():  # ellipsoids: |o + t d|^2 = 1, the nearer root
        o, d = local(ell, rays_o, rays_d)
        a, b, c = (d * d).sum(-1), (o * d).sum(-1), (o * o).sum(-1) - 1.0
        disc = b * b - a * c
        t = (-b - disc.clamp_min(0).sqrt()) / a
        t_all[:, ell] = torch.where((disc > 0) & (t > 0), t, math.inf)
    if box.numel():  # boxes: slabs
        o, d = local(box, rays_o, rays_d)
        inv = 1.0 / torch.where(d.abs() < 1e-12, 1e-12, d)
        t1, t2 = (-1.0 - o) * inv, (1.0 - o) * inv
        t_near = torch.minimum(t1, t2).amax(-1)
        t_far = torch.maximum(t1, t2).amin(-1)
        t_all[:, box] = torch.where((t_far >= t_near) & (t_near > 0), t_near, math.inf)
    t, idx = t_all.min(-1)
    # Normal at the hit, in the hit part's frame: the point itself (sphere) or the axis of the cube
    # face it lies on; to world by R (n / s).
    rot, axes = shape.rot[idx], shape.axes[idx]
    o_i = torch.einsum("nj,njk->nk", rays_o - shape.centre[idx], rot) / axes
    d_i = torch.einsum("nj,njk->nk", rays_d, rot) / axes
    p_local = o_i + t.clamp(max=1e6)[:, None] * d_i
    n_box = F.one_hot(p_local.abs().argmax(-1), 3).to(p_local.dtype) * torch.sign(p_local)
    n_local = torch.where(shape.is_box[idx][:, None], n_box, p_local)
    n = torch.einsum("nij,nj->ni", rot, n_local / axes)
    return t, idx, F.normalize(n, dim=-1)


def view_of(azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """View index into VIEWS ``[B]``: overhead when elevation > 60°, else front |a| < 45°, side 45°-135°, back > 135°."""
    return view_index(azimuth_deg, elevation_deg)  # the one view rule, shared with view conditioning


def render(
    family: Tensor,
    colour: Tensor,
    cams: CameraBatch,
    supersample: int = 3,
    light_dir: Tensor | None = None,
    return_parts: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Render objects (indices into FAMILIES ``[B]`` and COLOUR_NAMES ``[B]``) seen by ``cams``.

    Returns images ``[B, 3, H, W]`` in [0, 1] (rendered at ``supersample`` times the size and
    area-averaged, so edges are anti-aliased) and, with ``return_parts``, the part ids
    ``[B, H*s, W*s]`` (PART_NAMES) at the supersampled size. ``light_dir [B, 3]`` points from the
    object to the light (default: towards the camera, raised a little). With ``colour [B, K]``
    each view is ray-cast once and shaded in K colours: images ``[B, K, 3, H, W]``.
    """
    dev = cams.device
    b, h, w, s = len(cams), cams.height, cams.width, int(supersample)
    rays_o, rays_d = camera_rays(cams.resized(h * s, w * s))  # [B, Hs, Ws, 3]
    if light_dir is None:
        light_dir = cams.position / cams.radius[:, None] + torch.tensor([0.0, 0.0, 0.5], device=dev)
    light_dir = F.normalize(light_dir.to(dev).float(), dim=-1)
    per_view = colour.dim() == 2
    colour = colour.to(dev) if per_view else colour.to(dev)[:, None]
    k = colour.shape[1]
    body = torch.tensor(list(COLOURS.values()), device=dev)[colour]  # [B, K, 3]
    img = torch.ones(b, k, h * s, w * s, 3, device=dev)
    parts = torch.zeros(b, h * s, w * s, dtype=torch.long, device=dev)
    for fi, name in enumerate(FAMILIES):
        sel = (family.to(dev) == fi).nonzero().squeeze(-1)
        if sel.numel() == 0:
            continue
        shape = _shape(name, dev)
        o, d = rays_o[sel].reshape(-1, 3), rays_d[sel].reshape(-1, 3)
        # Only rays through the bounding sphere can hit a part: intersect those, the rest miss.
        bound = (shape.centre.norm(dim=-1) + shape.axes.norm(dim=-1)).max()
        ob = (o * d).sum(-1)
        near = (ob * ob - (o * o).sum(-1) + bound * bound) > 0
        t = torch.full(o.shape[:1], math.inf, device=dev)
        idx = torch.zeros(o.shape[:1], dtype=torch.long, device=dev)
        n = torch.zeros_like(o)
        if near.any():
            t[near], idx[near], n[near] = _intersect(shape, o[near], d[near])
        hit = torch.isfinite(t)
        cols = shape.part_colours(body[sel].reshape(-1, 3)).view(len(sel), k, -1, 3)  # [b', K, P, 3]
        per_ray_img = torch.arange(len(sel), device=dev).repeat_interleave(h * s * w * s)
        albedo = cols[per_ray_img, :, idx]  # [R, K, 3]
        lam = (n * light_dir[sel][per_ray_img]).sum(-1).clamp_min(0)
        shaded = albedo * (0.38 + 0.62 * lam)[:, None, None]
        rgb = torch.where(hit[:, None, None], shaded, torch.ones_like(shaded))
        img[sel] = rgb.view(len(sel), h * s, w * s, k, 3).permute(0, 3, 1, 2, 4)
        parts[sel] = torch.where(hit, shape.part_id[idx], torch.zeros_like(idx)).view(len(sel), h * s, w * s)
    out = img.permute(0, 1, 4, 2, 3).reshape(b * k, 3, h * s, w * s)
    out = (F.avg_pool2d(out, s) if s > 1 else out).clamp(0, 1).view(b, k, 3, h, w)
    out = out if per_view else out[:, 0]
    return (out, parts) if return_parts else out


@dataclass
class ToyBatch:
    """Images with their ground truth. images ``[N, 3, H, W]`` in [0, 1]; family, colour, view
    (true, VIEWS index), label (caption suffix, -1 none) ``[N]`` long; azimuth, elevation, radius,
    fovy ``[N]`` degrees / scene units; captions, one per image."""

    images: Tensor
    family: Tensor
    colour: Tensor
    view: Tensor
    label: Tensor
    azimuth: Tensor
    elevation: Tensor
    radius: Tensor
    fovy: Tensor
    captions: list[str]


def sample_poses_for_views(
    views: Tensor, data: DataConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Camera angles showing the given views (VIEWS indices ``[N]``): azimuth, elevation, radius, fovy ``[N]``.

    Elevation, radius and fov come from the text-to-3D training ranges of ``data``; overhead views use
    OVERHEAD_ELEVATION_RANGE and any azimuth. Within a view the azimuth is uniform over its range
    (both sides for side and back views).
    """
    n = views.shape[0]

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    mag = torch.stack([u(0, 45), u(45, 135), u(135, 180), u(0, 180)], 0)  # one candidate per view
    azimuth = sign * mag.gather(0, views[None]).squeeze(0)
    elev = u(*data.elevation_range)
    # The training range may reach past 60°; keep non-overhead views below the overhead threshold.
    elev = elev.clamp(max=OVERHEAD_MIN_ELEVATION - 1e-3)
    elevation = torch.where(views == 3, u(*OVERHEAD_ELEVATION_RANGE), elev)
    return azimuth, elevation, u(*data.radius_range), u(*data.fov_range)


def sample_toy_batch(
    n: int,
    size: int = 32,
    generator: torch.Generator | None = None,
    bias: CaptionBias | None = None,
    data: DataConfig | None = None,
    device: torch.device | str = "cpu",
    supersample: int = 3,
    chunk: int = 32,
    every_colour: bool = False,
) -> ToyBatch:
    """``n`` random toy images with captions and ground truth (reproducible from ``generator``).

    Family and colour are uniform; views and caption labels follow ``bias`` (CaptionBias defaults);
    the light sits near the camera with a random offset. With ``every_colour`` each drawn pose
    (family, camera, light, caption label) is rendered once in every colour, consecutively: the
    marginals are the same and ray casting costs a quarter, at the price of images correlated in
    groups of len(COLOURS).
    """
    bias = bias or CaptionBias()
    data = data or DataConfig()
    k = len(COLOURS) if every_colour else 1
    m = -(-n // k)  # poses
    family = torch.randint(len(FAMILIES), (m,), generator=generator)
    colour = torch.arange(k).repeat(m, 1) if every_colour else torch.randint(len(COLOURS), (m, 1), generator=generator)
    views = sample_views(bias, m, generator)
    azimuth, elevation, radius, fovy = sample_poses_for_views(views.true_view, data, generator)
    noise = 0.35 * torch.randn(m, 3, generator=generator)
    images = []
    for i in range(0, m, chunk):
        sl = slice(i, i + chunk)
        cams = make_cameras(elevation[sl], azimuth[sl], radius[sl], fovy[sl], size, size).to(device)
        light = cams.position / cams.radius[:, None] + torch.tensor([0.0, 0.0, 0.5], device=device) + noise[sl].to(device)
        images.append(render(family[sl], colour[sl], cams, supersample, light_dir=light).cpu())

    def per_image(x: Tensor) -> Tensor:  # pose values repeated for each of its colours, first n
        return x.repeat_interleave(k, 0)[:n]

    family, colour, label = per_image(family), colour.reshape(-1)[:n], per_image(views.label)
    azimuth, elevation, radius, fovy = (per_image(x) for x in (azimuth, elevation, radius, fovy))
    caps = [caption(COLOUR_NAMES[c], FAMILIES[f], lab) for c, f, lab in zip(colour.tolist(), family.tolist(), label.tolist())]
    return ToyBatch(
        images=torch.cat(images).reshape(m * k, 3, size, size)[:n],
        family=family,
        colour=colour,
        view=view_of(azimuth, elevation),
        label=label,
        azimuth=wrap_azimuth(azimuth),
        elevation=elevation,
        radius=radius,
        fovy=fovy,
        captions=caps,
    )
