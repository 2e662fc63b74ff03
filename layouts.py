"""
The data sets' layouts, and the robot state q from any of them.

LAYOUTS says where each data set people have keeps its cameras, robot state, instruction and actions, and how its
frames are stored; every preset was read from the project's own code or documentation (cited at each entry).
make_q turns the named proprio keys into the 10-D q of RS-CL, [x, y, z, R[:, 0], R[:, 1], g], whatever the
orientation's format (quaternion xyzw or wxyz, axis-angle, rotation matrix, none), or takes q as given ('raw').
Used by data.py (HDF5) and lerobot_data.py (LeRobot datasets).
"""
import os
import re

import numpy as np


class DataError(Exception):
    """A data file that cannot be used; the message says what is wrong and what to do, 'problem: remedy'. A remedy that
    names train.py's flags for reading data (--layout, --cameras, ...) is given apart, as `remedy`: a script without
    those flags (cknna.py reads data as the checkpoint's run did) gives its own."""

    def __init__(self, problem, remedy=""):
        super().__init__(f"{problem}: {remedy}" if remedy else problem)
        self.problem, self.remedy = problem, remedy


LAYOUTS = {
    # ours (sim.py) and robomimic: robosuite's observation names; frames stored upright. robomimic's own image files
    # hold two cameras (agentview, robot0_eye_in_hand: pass --cameras, or use the mimicgen preset)
    "robomimic": dict(cameras=("agentview", "frontview", "robot0_eye_in_hand"), orientation="quat_xyzw", flip="none",
                      proprio=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")),
    # MimicGen's released files (NVlabs/mimicgen docs/datasets/mimicgen_corl_2023.md; the keys of its image policies in
    # mimicgen/scripts/generate_core_training_configs.py): robomimic HDF5 whose frames come through robomimic's
    # EnvRobosuite.get_observation, which turns MuJoCo's bottom-up frames upright (di[k][::-1]); 84 px agentview +
    # wrist, 7-D actions, no instruction (the env name is used)
    "mimicgen": dict(cameras=("agentview", "robot0_eye_in_hand"), orientation="quat_xyzw", flip="none",
                     proprio=("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")),
    # LIBERO (Lifelong-Robot-Learning/LIBERO scripts/create_dataset.py): obs/agentview_rgb, obs/eye_in_hand_rgb (128 px),
    # obs/ee_pos (3), obs/ee_ori (3: T.quat2axisangle of robot0_eef_quat), obs/gripper_states (2), actions (T, 7); the
    # instruction in data.attrs["problem_info"]["language_instruction"]. Frames are stored as MuJoCo renders them
    # (data.attrs["macros_image_convention"] = "opengl": the bottom row first), so a vertical flip makes them upright,
    # as LIBERO's own video writer does (libero/libero/utils/video_utils.py: [::-1]). OpenVLA, openpi and LeRobot
    # rotate them 180 degrees instead ([::-1, ::-1], "to match train preprocessing"): upright but mirrored left-right,
    # consistent within those pipelines; --image-flip rot180 matches them
    "libero": dict(cameras=("agentview_rgb", "eye_in_hand_rgb"), orientation="axis_angle", flip="vflip",
                   proprio=("ee_pos", "ee_ori", "gripper_states")),
    # RoboCasa HDF5 (robocasa docs/_versions/v0.2/use_cases/using_datasets.md; robocasa/scripts/dataset_states_to_obs.py,
    # now scripts/dataset_scripts/, default cameras; its robomimic env wrapper turns frames upright): three cameras,
    # the eef pose relative to the mobile base (xyzw, robosuite's base_to_eef_quat), actions (T, 12), the
    # instruction in demo.attrs["ep_meta"]["lang"]
    "robocasa": dict(cameras=("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand"),
                     orientation="quat_xyzw", flip="none",
                     proprio=("robot0_base_to_eef_pos", "robot0_base_to_eef_quat", "robot0_gripper_qpos")),
    # LeRobot datasets (a folder with meta/info.json; see lerobot_data.py): by default every camera feature, q = the
    # state vector as given (not an eef pose), the `action` feature
    "lerobot": dict(cameras=(), orientation="raw", flip="none", proprio=("observation.state",), action="action"),
    # LeRobot's LIBERO datasets lerobot/libero (MP4) and HuggingFaceVLA/libero (PNG) (huggingface/lerobot
    # docs/source/libero.mdx; src/lerobot/processor/env_processor.py LiberoProcessorStep): observation.images.image
    # (agentview) and .image2 (wrist), 256 px, stored rotated 180 degrees (hflip makes them upright, as the libero
    # preset's frames); observation.state (8) = eef pos, axis-angle, gripper qpos (2); action (7)
    "lerobot-libero": dict(cameras=("observation.images.image", "observation.images.image2"), orientation="axis_angle",
                           flip="hflip", proprio=("observation.state[0:3]", "observation.state[3:6]",
                                                  "observation.state[6:8]"), action="action"),
    # openpi's LIBERO dataset physical-intelligence/libero (Physical-Intelligence/openpi
    # examples/libero/convert_libero_data_to_lerobot.py): image/wrist_image (256 px PNG, rotated 180 degrees as above),
    # state (8) = eef pos, axis-angle, gripper qpos; actions (7)
    "lerobot-libero-openpi": dict(cameras=("image", "wrist_image"), orientation="axis_angle", flip="hflip",
                                  proprio=("state[0:3]", "state[3:6]", "state[6:8]"), action="actions"),
    # RoboCasa's LeRobot release (robocasa docs/datasets/using_datasets.md; PandaOmron_modality.json and
    # scripts/dataset_scripts/convert_hdf5_lerobot.py, frames from the upright HDF5 ones): observation.state (16) = base
    # pos 3, base quat 4, eef pos 3 and quat 4 (xyzw) relative to the base, gripper qpos 2; action (12)
    "lerobot-robocasa": dict(cameras=("observation.images.robot0_agentview_left", "observation.images.robot0_agentview_right",
                                      "observation.images.robot0_eye_in_hand"), orientation="quat_xyzw", flip="none",
                             proprio=("observation.state[7:10]", "observation.state[10:14]", "observation.state[14:16]"),
                             action="action"),
}
# width of the orientation key for each format; rotmat is row-major; none: R = I; raw: q = the keys concatenated as given
ORIENTATIONS = {"quat_xyzw": 4, "quat_wxyz": 4, "axis_angle": 3, "rotmat": 9, "none": 0, "raw": None}
FLIPS = ("none", "vflip", "hflip", "rot180")


def flip_images(images, how):
    """images (..., H, W, 3) -> the same, flipped top-bottom (vflip), left-right (hflip) or rotated 180 degrees (rot180)."""
    if how == "vflip":
        return np.ascontiguousarray(images[..., ::-1, :, :])
    if how == "hflip":
        return np.ascontiguousarray(images[..., :, ::-1, :])
    if how == "rot180":
        return np.ascontiguousarray(images[..., ::-1, ::-1, :])
    return images


def quat_to_rotmat(quat):
    """quat: (..., 4) unit quaternion in robosuite's xyzw order -> (..., 3, 3) rotation matrix."""
    quat = np.asarray(quat, dtype=np.float64)
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    x, y, z, w = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return R.reshape(quat.shape[:-1] + (3, 3))


def axis_angle_to_rotmat(rv):
    """rv: (..., 3) = angle * unit axis (robosuite's quat2axisangle, LIBERO's ee_ori) -> (..., 3, 3), by Rodrigues:
    R = I + sin(theta) K + (1 - cos(theta)) K^2, K the cross-product matrix of the unit axis."""
    rv = np.asarray(rv, dtype=np.float64)
    theta = np.linalg.norm(rv, axis=-1)[..., None, None]                     # (..., 1, 1)
    k = rv / np.maximum(np.linalg.norm(rv, axis=-1, keepdims=True), 1e-12)   # (..., 3), 0 when theta = 0
    z = np.zeros_like(k[..., 0])
    K = np.stack([z, -k[..., 2], k[..., 1], k[..., 2], z, -k[..., 0], -k[..., 1], k[..., 0], z], -1)
    K = K.reshape(k.shape[:-1] + (3, 3))                                     # (..., 3, 3)
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


def rotmat_of(ori, orientation):
    """ori (T, w) in the named format -> R (T, 3, 3)."""
    if orientation == "quat_xyzw":
        return quat_to_rotmat(ori)
    if orientation == "quat_wxyz":
        return quat_to_rotmat(np.roll(ori, -1, axis=-1))                     # (w, x, y, z) -> (x, y, z, w)
    if orientation == "axis_angle":
        return axis_angle_to_rotmat(ori)
    if orientation == "rotmat":
        return np.asarray(ori, np.float64).reshape(len(ori), 3, 3)
    return np.broadcast_to(np.eye(3), (len(ori), 3, 3))                    # none


def proprio_10d(eef_pos, eef_quat, gripper_qpos, orientation="quat_xyzw"):
    """The robot state q used by RS-CL and the DiT's state token.
    eef_pos (T, 3), eef orientation (T, w) in `orientation`'s format (default quaternion xyzw), gripper (T, 2) finger
    qpos or (T, 1) opening -> q (T, 10) float32 = [x, y, z, R[:, 0], R[:, 1], g]: the first two COLUMNS of the rotation
    matrix (the 6D rotation of Zhou et al. 2019), and the gripper opening g = qpos[0] - qpos[1] (0 closed .. 0.08 m open)."""
    R = rotmat_of(np.asarray(eef_quat), orientation)              # (T, 3, 3)
    rot6d = np.concatenate([R[..., :, 0], R[..., :, 1]], -1)      # (T, 6): column 0, then column 1
    g = np.asarray(gripper_qpos, np.float64)
    g = g[..., :1] - g[..., 1:2] if g.shape[-1] == 2 else g      # (T, 1)
    return np.concatenate([np.asarray(eef_pos, np.float64), rot6d, g], -1).astype(np.float32)


def parse_key(key):
    """'observation.state[7:10]' -> ('observation.state', slice(7, 10)); 'ee_pos' -> ('ee_pos', slice(None)).
    A slice that is not [a:b] of integers (either may be left out) -> DataError."""
    m = re.fullmatch(r"([^\[\]]+)(?:\[(-?\d*):(-?\d*)\])?", key)
    if not m:
        raise DataError(f"proprio key '{key}' is not a name or name[a:b] (a, b integers)", "fix --proprio-keys")
    name, a, b = m.groups()
    return name, slice(int(a) if a else None, int(b) if b else None)


def make_q(read, keys, orientation, where):
    """q (T, 10) (or (T, d) for 'raw') from the proprio keys: read(name) -> (T, w) array; keys as parse_key reads them.
    Widths that do not fit the orientation format -> DataError naming the key and the fix."""
    parts = []
    for name, s in map(parse_key, keys):
        x = np.asarray(read(name), np.float64)
        parts.append(x.reshape(len(x), -1)[:, s])                          # (T, w): a scalar per step is (T, 1)
    if orientation == "raw":
        return np.concatenate(parts, -1).astype(np.float32)
    if orientation not in ORIENTATIONS:
        raise DataError(f"unknown orientation format '{orientation}': choose one of {', '.join(ORIENTATIONS)}")
    want = 2 if orientation == "none" else 3
    if len(keys) != want:
        raise DataError(f"orientation '{orientation}' needs {want} proprio keys ({'eef position, gripper' if want == 2 else 'eef position, eef orientation, gripper'}), "
                        f"got {list(keys)}", "set --proprio-keys")
    pos, ori, grip = (parts[0], np.zeros((len(parts[0]), 0)), parts[1]) if want == 2 else parts
    widths = dict(position=(keys[0], pos.shape[1], 3), gripper=(keys[-1], grip.shape[1], "1 or 2"))
    if want == 3:
        widths["orientation"] = (keys[1], ori.shape[1], ORIENTATIONS[orientation])
    for what, (key, w, need) in widths.items():
        if w not in ((1, 2) if need == "1 or 2" else (need,)):
            fits = [f for f, n in ORIENTATIONS.items() if n == w]
            hint = f"pass --orientation {' or '.join(fits)}" if what == "orientation" and fits else "name another key or slice it, e.g. key[0:3]"
            raise DataError(f"{where}: the {what} key '{key}' has {w} numbers per step, but {what} "
                            f"{'format ' + repr(orientation) + ' ' if what == 'orientation' else ''}needs {need}", hint)
    return proprio_10d(pos, ori, grip, orientation)


def state_q(raw, keys, orientation):
    """q (d,) of one step, from a dict of named arrays (sim.py's observation()["raw"]: robosuite's keys, and "object"
    for the object state a privileged policy appends), as a run trained with --proprio-keys keys reads its demos."""
    return make_q(lambda k: np.asarray(raw[k])[None], keys, orientation, "the simulator")[0]


def minmax_stats(q, a):
    """Min-max statistics of q (S, d) and actions (S, a) as plain lists. A dimension that never changes
    (max - min < 1e-6: a fixed joint, or the rotation of a robot that never turns) keeps min == max; the policy then
    normalises it to x - v (0 on the training data, nothing divides by ~0, a test-time value off v moves by its raw
    difference) and un-normalises an action dimension to exactly v, whatever the decoder outputs (Policy.unnormalize)."""
    out = {}
    for name, x in (("q", q), ("a", a)):
        lo, hi = x.min(0).astype(np.float64), x.max(0).astype(np.float64)
        hi[hi - lo < 1e-6] = lo[hi - lo < 1e-6]
        out[f"{name}_min"], out[f"{name}_max"] = lo.tolist(), hi.tolist()
    return out


def layout_of(layout, cameras=None, proprio_keys=None, orientation=None, flip=None, action=None):
    """A preset from LAYOUTS with any of its fields overridden (None or '' keeps the preset's); unknown names and
    malformed keys -> DataError."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    if orientation and orientation not in ORIENTATIONS:
        raise DataError(f"unknown orientation format '{orientation}': choose one of {', '.join(ORIENTATIONS)}")
    if flip and flip not in FLIPS:
        raise DataError(f"unknown image flip '{flip}': choose one of {', '.join(FLIPS)}")
    L = dict(LAYOUTS[layout])
    for k, v in (("cameras", cameras), ("proprio", proprio_keys), ("orientation", orientation), ("flip", flip),
                 ("action", action)):
        if v:
            L[k] = tuple(v) if k in ("cameras", "proprio") else v
    for key in L["proprio"]:
        parse_key(key)
    return L


def run_layout(config):
    """How a run read its data, from train.py's config (vars(args), or a checkpoint's 'config'): its layout, orientation,
    image_flip, proprio_keys and action_key, each '' (or absent: runs from before layouts) replaced by what it meant,
    the layout's value; the layout '' means robomimic for a file and lerobot for a folder. Two configs that read the
    data alike give equal dicts. Unknown names -> DataError."""
    get = lambda k: config.get(k) or ""
    layout = get("layout") or ("lerobot" if os.path.isdir(get("data")) else "robomimic")
    L = layout_of(layout, None, get("proprio_keys").split(",") if get("proprio_keys") else None, get("orientation"),
                  get("image_flip"), get("action_key"))
    return dict(layout=layout, orientation=L["orientation"], image_flip=L["flip"], proprio_keys=",".join(L["proprio"]),
                action_key=L.get("action", ""))
