"""
Appearance variation for the robosuite scenes of sim.py: what an episode looks like, drawn from its seed,
and the edit of the compiled model that gives it that look.

    look = appearance("seen", seed)       # a dict of colours and light, stored with every demo
    apply_appearance(env, look, recolour)  # sim.reset calls this before every episode

"seen" looks (collection, and the usual evaluation) and "unseen" looks (an out-of-distribution evaluation)
take their hues from disjoint ranges, so a held-out look is truly new.
"""
import colorsys

import numpy as np

HUES = {"seen": (0.0, 0.5), "unseen": (0.5, 1.0)}   # appearance splits: disjoint hue ranges
SURFACES = {"table": ("table_ceramic", "table_mat", "light-wood", "dark-wood"),   # work surface (bins for can)
            "floor": ("floorplane",), "walls": ("walls_mat",)}


def appearance(split, i):
    """The look of episode i ("seen" or "unseen"): RGB tints of table, floor, walls and (lift) the cube,
    the light's brightness and a shift of its direction. 'seen' hues lie in [0, 0.5), 'unseen' hues in
    [0.5, 1): the held-out looks are disjoint. Brightness and light ranges are shared. "none": robosuite's
    stock look for every episode (None, as sim.py --no-appearance collects)."""
    if split == "none":
        return None
    lo, hi = HUES[split]
    rng = np.random.default_rng([list(HUES).index(split), i])
    tint = lambda s=(0.2, 0.8), v=(0.5, 1.0): [round(c, 3) for c in colorsys.hsv_to_rgb(
        lo + (hi - lo) * rng.random(), rng.uniform(*s), rng.uniform(*v))]
    look = dict(split=split, id=int(i), table=tint(), floor=tint(), walls=tint(), light=round(float(rng.uniform(0.5, 0.9)), 3))
    look.update(object=tint((0.6, 1.0), (0.6, 1.0)), light_dir=[round(float(x), 3) for x in rng.uniform(-0.4, 0.4, 2)])
    return look


def apply_appearance(env, look, recolour=()):
    """Edit the compiled model of a sim.py env in place (material colours, the light); look=None restores the
    stock look (env.stock_look, saved by sim.make_env). recolour: the materials the look's "object" colour
    replaces. Only visual parameters change, so the physics, and the experts, are the same under any look."""
    import mujoco
    m, stock = env.sim.model._model, env.stock_look
    m.mat_rgba[:], m.mat_texid[:] = stock["mat_rgba"], stock["mat_texid"]
    m.light_diffuse[:], m.light_dir[:] = stock["light_diffuse"], stock["light_dir"]
    if look is None:
        return
    material = lambda name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, name)
    for key, names in SURFACES.items():
        for k in map(material, names):
            if k >= 0:
                m.mat_rgba[k, :3] = look[key]   # multiplies the material's texture
    for k in map(material, recolour):
        if "object" in look:   # a plain colour: a tint over the red wood texture would only darken it
            m.mat_rgba[k, :3], m.mat_texid[k] = look["object"], -1
    m.light_diffuse[:] = look["light"]
    m.light_dir[:, :2] += look.get("light_dir", [0, 0])
    m.light_dir[:] /= np.linalg.norm(m.light_dir, axis=1, keepdims=True)
