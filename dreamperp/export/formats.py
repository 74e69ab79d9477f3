"""Mesh files: ``glb`` (texture embedded as the PBR ``baseColorTexture``, or vertex colours), ``obj``
(+ ``.mtl`` + ``.png`` when textured, else vertex colours as extra ``v`` columns), ``ply`` (always
vertex colours: the albedo at the vertices). GLB is written y-up (glTF convention): world
(x, y, z) → (x, z, −y), a proper rotation, so face winding is kept; OBJ and PLY keep the z-up world
frame (docs/design.md §2).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

TEXTURED_FORMATS = ("glb", "obj")

# glTF is y-up: (x, y, z)_world → (x, z, −y). Rows are the output axes.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def mesh_files(mesh: "trimesh.Trimesh", fmt: str, name: str = "mesh") -> Dict[str, bytes]:  # noqa: F821
    """Serialise ``mesh`` (z-up world frame) as ``fmt`` → {file name: bytes}; GLB is converted to y-up.

    A textured OBJ gives three files (``name.obj``, ``name.mtl``, ``name.png``), everything else one.
    """
    import trimesh

    textured = isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    if fmt == "glb":
        rotation = np.eye(4)
        rotation[:3, :3] = Z_UP_TO_Y_UP
        mesh = mesh.copy()
        mesh.apply_transform(rotation)
        return {f"{name}.glb": bytes(mesh.export(file_type="glb", include_normals=True))}
    if fmt == "obj" and textured:
        from PIL import Image

        image = mesh.visual.material.baseColorTexture if hasattr(mesh.visual.material, "baseColorTexture") else mesh.visual.material.image
        simple = trimesh.visual.material.SimpleMaterial(  # white Kd: viewers multiply it with map_Kd
            name=name, image=image, diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255)
        )
        visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=simple)
        plain = trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False)
        text, extra = trimesh.exchange.obj.export_obj(
            plain, include_normals=False, include_texture=True, return_texture=True, mtl_name=f"{name}.mtl", header=None
        )
        if not isinstance(image, Image.Image) or set(extra) != {f"{name}.mtl", f"{name}.png"}:
            raise RuntimeError(f"OBJ export produced {sorted(extra)}, expected {name}.mtl and {name}.png")
        return {f"{name}.png": extra[f"{name}.png"], f"{name}.mtl": extra[f"{name}.mtl"], f"{name}.obj": text.encode()}
    data = mesh.export(file_type=fmt)
    return {f"{name}.{fmt}": data.encode() if isinstance(data, str) else bytes(data)}
