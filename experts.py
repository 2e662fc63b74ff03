"""
Scripted experts for the robosuite tasks of sim.py: waypoints in the OSC pose action space, computed
from the object poses in the observation. Each succeeds in every one of 25 seeded episodes
(`python sim.py --tasks lift,can,stack --episodes 25 --measure-experts`).

    expert = Expert(env, lift_waypoints); action = expert.act(obs)
    blind = Expert(env, blind_waypoints(lift_waypoints, mean_object_pose(env, reset)))   # the floor: never looks

The two are evaluate.py's references: the expert is the ceiling of every learned policy; the blind grasp, the same
script aimed at the mean object pose of the collection episodes, is the floor that needs no perception at all.
"""
import numpy as np


def yaw_of(quat_xyzw):
    x, y, z, w = quat_xyzw
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def lift_waypoints(env, obs):
    """-> (pick xyz, yaw to turn the gripper to or None, place xyz, release at the place?)"""
    return obs["cube_pos"], yaw_of(obs["cube_quat"]), obs["cube_pos"] + [0, 0, 0.15], False


def can_waypoints(env, obs):
    bin_xy = env.target_bin_placements[env.object_to_id["can"]][:2]   # the can's quarter of the right bin
    return obs["Can_pos"], None, np.array([*bin_xy, env.bin2_pos[2] + 0.12]), True


def stack_waypoints(env, obs):
    return obs["cubeA_pos"], yaw_of(obs["cubeA_quat"]), obs["cubeB_pos"] + [0, 0, 0.055], True


def mean_object_pose(env, reset, n=20):
    """The object keys of the observation (*_pos, *_quat of the task's objects) averaged over the first n collection
    episodes' initial states: {key: array}. Orientations are not averaged (a mean of uniform yaws means nothing): a
    blind grasp keeps one fixed orientation, the identity. reset(env, i) -> obs of collection episode i."""
    keys = [k for k in reset(env, 0) if k.endswith(("_pos", "_quat")) and not k.startswith(("robot0_", "gripper_to"))]
    poses = [reset(env, i) for i in range(n)]
    return {k: (np.array([0.0, 0, 0, 1]) if k.endswith("_quat") else np.mean([o[k] for o in poses], 0)) for k in keys}


def blind_waypoints(waypoints, mean_pose):
    """The same waypoints with every object pose replaced by the fixed mean pose: a policy that never looks."""
    return lambda env, obs: waypoints(env, {**obs, **mean_pose})


class Expert:
    """Grasp an object from above, carry it, put it down. Phases advance when the gripper reaches
    each waypoint; the yaw of the gripper is turned to the object's (modulo 90 deg for a cube)."""

    def __init__(self, env, waypoints):
        self.env, self.waypoints, self.phase, self.t = env, waypoints, 0, 0

    def act(self, obs):
        pick, turn, place, release = self.waypoints(self.env, obs)
        eef = obs["robot0_eef_pos"]
        a = np.zeros(7)   # dx, dy, dz, dax, day, daz, gripper
        if turn is not None:   # turn the gripper to the cube's yaw, modulo 90 deg
            err = (turn - yaw_of(obs["robot0_eef_quat"]) + np.pi / 4) % (np.pi / 2) - np.pi / 4
            if self.phase < 3:
                a[5] = np.clip(3 * err, -1, 1)
        self.t += 1
        if self.phase == 0:                       # above the object, open
            target, grip = pick + np.array([0, 0, 0.10]), -1
        elif self.phase in (1, 2):                # down to it, then close
            target, grip = pick + np.array([0, 0, -0.005]), -1 if self.phase == 1 else 1
        elif self.phase == 3:                     # up and over the goal
            target, grip = (place + np.array([0, 0, 0.08])) if release else place, 1
        elif self.phase == 4:                     # down onto the goal
            target, grip = place, 1
        else:                                     # let go and back off
            target, grip = place + np.array([0, 0, 0.1]), -1
        err = target - eef
        if self.phase == 3 and release and np.linalg.norm(err[:2]) > 0.03:
            err[2] = max(err[2], place[2] + 0.1 - eef[2])      # stay high while travelling
        a[:3] = np.clip(err / 0.05 * 1.5, -1, 1)                # P-control: 1.5 x the error, in units of 5 cm
        a[6] = grip
        done_here = np.linalg.norm(err) < (0.01 if self.phase in (1, 4) else 0.02)
        if self.phase == 0 and done_here and (turn is None or abs(a[5]) < 0.1):
            self.phase, self.t = 1, 0
        elif self.phase == 1 and (done_here or self.t > 40):
            self.phase, self.t = 2, 0
        elif self.phase == 2 and self.t > 12:
            self.phase, self.t = 3, 0
        elif self.phase == 3 and done_here and release:
            self.phase, self.t = 4, 0
        elif self.phase == 4 and (done_here or self.t > 30):
            self.phase, self.t = 5, 0
        return a
