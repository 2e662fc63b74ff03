"""
LeRobot datasets (codebase v2.0, v2.1 and v3.0) -> the same samples as data.DemoDataset, read with pyarrow and PyAV.

    python train.py --data PATH_TO_DATASET_FOLDER --layout lerobot-libero     # a local LeRobot dataset

Why not the `lerobot` package: lerobot 0.4.4 pulls torch 2.10 and numpy 2 (pip install --dry-run), which would replace
this project's torch==2.13.0 and numpy<2 pins; the format is documented and small, so it is read here directly.
The layout, as LeRobot writes it (huggingface/lerobot src/lerobot/datasets/utils.py, dataset_metadata.py,
docs/source/lerobot-dataset-v3.mdx):

    meta/info.json      codebase_version, fps, features {name: {dtype, shape, names}}, data_path, video_path, chunks_size
    v2.x  meta/episodes.jsonl {episode_index, tasks, length}    meta/tasks.jsonl {task_index, task}
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet          one file per episode
          videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4  frames from t = 0
    v3.0  meta/episodes/chunk-000/file-000.parquet: episode_index, tasks, length, data/{chunk,file}_index,
          videos/{key}/{chunk_index, file_index, from_timestamp}; meta/tasks.parquet (task, task_index)
          data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet, videos/{key}/chunk-.../file-....mp4: many episodes each
    parquet columns: one per feature (vectors as lists), timestamp, frame_index, episode_index, index, task_index;
    a camera is a 'video' feature (its frame at episode offset + timestamp) or an 'image' feature (PNG bytes in parquet).

write_lerobot() writes a dataset in either version from that documentation, for tests and for sim.py's demos.
"""
import glob
import hashlib
import io
import json
import os

import numpy as np

import samples
from layouts import LAYOUTS, DataError, flip_images, layout_of, make_q, parse_key

VERSIONS = ("v2.0", "v2.1", "v3.0")


def read_table(path):
    import pyarrow.parquet as pq
    try:
        return pq.read_table(path)
    except Exception as e:   # pyarrow raises several types for a bad file
        raise DataError(f"{path} cannot be read as parquet ({str(e).splitlines()[0]}): re-download the dataset")


def column(table, name):
    """A parquet column of numbers -> (rows, width) float64 array (a scalar feature is width 1)."""
    import pyarrow as pa
    col = table.column(name).combine_chunks()
    n = len(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()                                            # (rows * width,)
    return np.asarray(col.to_numpy(zero_copy_only=False), np.float64).reshape(n, -1)


def video_seconds(path):
    """How long an MP4 lasts in seconds (None if its header does not say); a missing or unreadable file -> DataError."""
    import av
    if not os.path.isfile(path):
        raise DataError(f"video {path} is missing: re-download the dataset")
    try:
        with av.open(path) as c:
            s = c.streams.video[0]
            return float(s.duration * s.time_base) if s.duration else c.duration / 1e6 if c.duration else None
    except Exception as e:   # PyAV raises several types for a bad file
        raise DataError(f"video {path} cannot be decoded ({str(e).splitlines()[0]}): re-download or re-encode it")


class Video:
    """Frames of one MP4 by timestamp, decoding forward from the last frame when it can (sequential reads cost one
    decode each) and seeking to the keyframe before the target otherwise."""

    def __init__(self, path):
        import av
        self.path = path
        try:
            self.container = av.open(path)
            self.stream = self.container.streams.video[0]
        except Exception as e:
            raise DataError(f"video {path} cannot be decoded ({str(e).splitlines()[0]}): re-download or re-encode it")
        self.frames, self.last = None, None

    def frame(self, ts, fps):
        """The frame shown at time ts (seconds) -> (H, W, 3) uint8."""
        tol = 0.5 / fps
        try:
            if self.last is None or not (self.last.time - tol < ts < self.last.time + 2.0):
                self.container.seek(max(0, int(ts / self.stream.time_base)), stream=self.stream)   # keyframe <= ts
                self.frames, self.last = self.container.decode(self.stream), None
            if self.last is not None and abs(self.last.time - ts) < tol:
                return self.last.to_ndarray(format="rgb24")
            for f in self.frames:
                self.last = f
                if f.time >= ts - tol:
                    return f.to_ndarray(format="rgb24")
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"video {self.path} cannot be decoded at {ts:.3f} s ({str(e).splitlines()[0]}): "
                            f"re-download or re-encode it")
        raise DataError(f"video {self.path} has no frame at {ts:.3f} s: it is shorter than its episode; re-encode it")


class LeRobotDemos:
    """Samples (images (V, H, W, 3) uint8, instruction, q (10,) or as given, A (H, a)) from a local LeRobot dataset.
    Same interface as data.DemoDataset; layout: 'lerobot' or a 'lerobot-*' preset of layouts.LAYOUTS,
    cameras / proprio_keys ('feature' or 'feature[a:b]') / orientation / flip override it. Episodes are the demos,
    the episode's task string is both its task and its instruction."""

    def __init__(self, path, cameras=None, horizon=16, split="train", val_frac=0.1, proprio_keys=None, max_demos=0,
                 layout="lerobot", orientation=None, flip=None, action=None):
        L = layout_of(layout, cameras, proprio_keys, orientation, flip, action)
        if "action" not in L:
            raise DataError(f"layout '{layout}' is for HDF5 files and {path} is a folder", f"for a LeRobot dataset use "
                            f"--layout {', '.join(k for k, v in LAYOUTS.items() if 'action' in v)}")
        info_path = os.path.join(path, "meta", "info.json")
        if not os.path.isfile(info_path):
            raise DataError(f"{path} is a folder without meta/info.json: pass a LeRobot dataset's root folder "
                            f"(v2.0, v2.1 or v3.0) or a robomimic-layout HDF5 file")
        self.path, self.H, self.image_shape = path, horizon, None
        self.orientation, self.flip, self.action_key = L["orientation"], L["flip"], L["action"]
        try:   # the metadata: a file missing or malformed, or a field the format requires absent -> one line
            self.info = json.load(open(info_path))
            self.version, self.fps, feats = self.info.get("codebase_version"), float(self.info["fps"]), self.info["features"]
            if self.version not in VERSIONS:
                raise DataError(f"{info_path}: codebase_version {self.version!r} is not one of {VERSIONS}: convert it "
                                f"with lerobot's converter to v3.0")
            self.cameras = list(L["cameras"]) or [k for k, f in feats.items() if f["dtype"] in ("video", "image")]
            wanted = self.cameras + [parse_key(k)[0] for k in L["proprio"]] + [self.action_key]
            missing = [k for k in dict.fromkeys(wanted) if k not in feats]
            if missing or not self.cameras:
                raise DataError(f"{path} has no feature {missing or 'with dtype video or image'} (its features: "
                                f"{list(feats)})", "pick --layout, or name them with --cameras, --proprio-keys and --action-key")
            self.videos = [c for c in self.cameras if feats[c]["dtype"] == "video"]
            width = {k: int(np.prod(feats[k]["shape"])) for k in wanted[len(self.cameras):]}   # numbers per step
            episodes = self._episodes()                                 # [{episode_index, tasks, length, ...}]
            names = [f"episode_{int(e['episode_index']):06d}" for e in episodes]
            tasks = [str(e["tasks"][0]) if len(e["tasks"]) else "" for e in episodes]
            files = {n: (self._data_file(e), [self._video_file(e, c) for c in self.videos]) for n, e in zip(names, episodes)}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:   # json's errors are ValueErrors
            raise DataError(f"{path}: its metadata (meta/) is damaged or incomplete ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120]}): re-download the dataset") from None
        keep = set(samples.split_by_task(names, tasks, split, val_frac, max_demos, path))
        self.episodes = [e for e, n in zip(episodes, names) if n in keep]
        self.demos = [n for n in names if n in keep]
        self.tasks = [t for t, n in zip(tasks, names) if n in keep]
        self.instructions = list(self.tasks)
        self.q, self.actions, self.ts, self.rows, self.index = [], [], [], [], []
        tables = {}
        for d, (e, name) in enumerate(zip(self.episodes, self.demos)):
            file = files[name][0]
            if file not in tables:
                tables[file] = read_table(file)
                lacking = [k for k in list(width) + ["episode_index", "frame_index", "timestamp"]
                           if k not in tables[file].column_names]
                if lacking:
                    raise DataError(f"{file} lacks the columns {lacking}: re-download the dataset")
            tab = tables[file]
            rows = np.flatnonzero(tab.column("episode_index").to_numpy() == e["episode_index"])   # this episode's rows
            rows = rows[np.argsort(tab.column("frame_index").to_numpy()[rows], kind="stable")]  # in frame order
            if len(rows) == 0:
                raise DataError(f"{file} holds no rows of episode {e['episode_index']}: re-download the dataset")
            part = tab.take(rows)

            def read(k):   # (T, w), w as meta/info.json declares it
                x = column(part, k)
                if x.shape[1] != width[k]:
                    raise DataError(f"{file}: episode {e['episode_index']}'s {k} has {x.shape[1]} numbers per step, "
                                    f"meta/info.json says {width[k]}: re-download the dataset")
                return x
            self.q.append(make_q(read, L["proprio"], self.orientation, path))   # (T, 10), or (T, d) as given
            self.actions.append(read(self.action_key).astype(np.float32))     # (T, a)
            self.ts.append(column(part, "timestamp")[:, 0])
            self.rows.append((file, rows))
            self.index += [(d, t) for t in range(len(rows))]
            if not (np.isfinite(self.q[-1]).all() and np.isfinite(self.actions[-1]).all()):
                raise DataError(f"{path}: episode {e['episode_index']} has NaN or inf in its state or actions: drop it")
        self.action_dim = self.actions[0].shape[1]
        seconds = {}
        for d, name in enumerate(self.demos):   # every video there and long enough for its episode (the header's length)
            for f, start in files[name][1]:
                if f not in seconds:
                    seconds[f] = video_seconds(f)
                if seconds[f] is not None and start + self.ts[d][-1] + 0.5 / self.fps > seconds[f]:
                    raise DataError(f"video {f} lasts {seconds[f]:.2f} s, but {name} needs frames up to "
                                    f"{start + self.ts[d][-1]:.2f} s: re-download or re-encode it")
        self._open, self._image_tables = {}, {}
        shapes = {c: self._image(c, 0, 0).shape for c in self.cameras}  # decodes episode 0, frame 0 of every camera
        if len(set(shapes.values())) > 1:
            raise DataError(f"{path}: the cameras' frames differ in size {shapes}", "choose cameras of one size with --cameras")
        self.image_shape = shapes[self.cameras[0]]
        self._open, self._image_tables = {}, {}                        # worker processes open their own

    # --- the layout's two versions ---
    def _episodes(self):
        meta = os.path.join(self.path, "meta")
        if self.version == "v3.0":
            files = sorted(glob.glob(os.path.join(meta, "episodes", "*", "*.parquet")))
            if not files:
                raise DataError(f"{self.path}: v3.0 dataset without meta/episodes/*/*.parquet: re-download it")
            out = []
            for f in files:
                t = read_table(f)
                cols = [c for c in t.column_names if not c.startswith("stats/")]
                out += t.select(cols).to_pylist()
            return sorted(out, key=lambda e: e["episode_index"])
        lines = open(os.path.join(meta, "episodes.jsonl")).read().splitlines()
        return sorted((json.loads(l) for l in lines if l.strip()), key=lambda e: e["episode_index"])

    def _data_file(self, e):
        if self.version == "v3.0":
            rel = self.info["data_path"].format(chunk_index=e["data/chunk_index"], file_index=e["data/file_index"])
        else:
            rel = self.info["data_path"].format(episode_chunk=e["episode_index"] // self.info["chunks_size"],
                                                episode_index=e["episode_index"])
        return os.path.join(self.path, rel)

    def _video_file(self, e, key):
        """(mp4 path, the episode's start time in it)."""
        if self.version == "v3.0":
            rel = self.info["video_path"].format(video_key=key, chunk_index=e[f"videos/{key}/chunk_index"],
                                                 file_index=e[f"videos/{key}/file_index"])
            return os.path.join(self.path, rel), float(e[f"videos/{key}/from_timestamp"])
        rel = self.info["video_path"].format(episode_chunk=e["episode_index"] // self.info["chunks_size"],
                                             video_key=key, episode_index=e["episode_index"])
        return os.path.join(self.path, rel), 0.0

    # --- the DemoDataset interface ---
    def __len__(self):
        return len(self.index)

    # the same index, q and actions lists as data.DemoDataset, and the same methods (samples.py; no inheritance)
    task_groups, stats, chunk = samples.task_groups, samples.stats, samples.chunk

    def fingerprint(self):
        """What the content is, for the feature cache's key: sha1 of meta/info.json and of every file's path and size."""
        h = hashlib.sha1(open(os.path.join(self.path, "meta", "info.json"), "rb").read())
        for f in sorted(glob.glob(os.path.join(self.path, "**", "*"), recursive=True)):
            if os.path.isfile(f):
                h.update(f"{os.path.relpath(f, self.path)}:{os.path.getsize(f)}".encode())
        return h.hexdigest()

    def _image(self, cam, d, t):
        e = self.episodes[d]
        if cam in self.videos:
            file, start = self._video_file(e, cam)
            if file not in self._open:
                self._open[file] = Video(file)
            return self._open[file].frame(start + self.ts[d][t], self.fps)
        from PIL import Image
        file, rows = self.rows[d]
        if file not in self._image_tables:   # a parquet file's image columns, kept for the next samples
            self._image_tables = {file: read_table(file).select([c for c in self.cameras if c not in self.videos])}
        cell = self._image_tables[file].column(cam)[int(rows[t])].as_py()
        return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))

    def __getitem__(self, i):
        d, t = self.index[i]
        frames = [self._image(c, d, t) for c in self.cameras]
        if self.image_shape and any(f.shape != self.image_shape for f in frames):
            raise DataError(f"{self.path}: {self.demos[d]} has frames of {[f.shape for f in frames]}, the first "
                            f"episode {self.image_shape}: one size for every camera and episode; re-encode the videos")
        images = np.stack(frames)                                          # (V, H, W, 3) uint8
        return dict(images=flip_images(images, self.flip), instruction=self.instructions[d], q=self.q[d][t],
                    A=self.chunk(d, t))


# -----------------------------------------------------------------------------
# a writer from the documented format (tests, sim.py's demos as a LeRobot dataset)

def encode_video(path, frames, fps, codec="libsvtav1"):
    """frames (T, H, W, 3) uint8 -> an MP4 (yuv420p; LeRobot's default codec is libsvtav1). Returns the codec used."""
    import av
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"g": "2"} if codec == "libsvtav1" else {"g": "2", "crf": "18"} if codec == "libx264" else {}
        for im in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return codec


def write_lerobot(root, episodes, fps=20, version="v3.0", image_dtype="video", codec="libsvtav1", robot_type=None):
    """episodes: list of dict(task=str, frames={camera: (T, H, W, 3) uint8}, and vector features {name: (T, w)}).
    Writes a LeRobot dataset of `version` (v2.1: a file per episode; v3.0: one data file and one MP4 per camera);
    cameras as 'video' (MP4) or 'image' (PNG in parquet) features."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    if os.path.exists(root):
        raise FileExistsError(f"{root} exists")
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    cams = list(episodes[0]["frames"])
    vecs = [k for k in episodes[0] if k not in ("task", "frames")]
    feats = {c: dict(dtype=image_dtype, shape=list(episodes[0]["frames"][c].shape[1:]), names=["height", "width", "channels"])
             for c in cams}
    feats.update({k: dict(dtype="float32", shape=[np.shape(episodes[0][k])[1]], names=None) for k in vecs})
    feats.update({k: dict(dtype=t, shape=[1], names=None) for k, t in (("timestamp", "float32"), ("frame_index", "int64"),
                  ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64"))})
    v3, video = version == "v3.0", image_dtype == "video"
    video_path = ("videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3 else
                  "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    info = dict(codebase_version=version, robot_type=robot_type, total_episodes=len(episodes),
                total_frames=sum(len(e[vecs[0]]) for e in episodes), total_tasks=len(tasks), chunks_size=1000, fps=fps,
                splits={"train": f"0:{len(episodes)}"}, features=feats,
                data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3 else
                "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                video_path=video_path if video else None)
    if not v3:
        info.update(total_chunks=1, total_videos=len(episodes) * len(cams) * video)
    tables, metas, start = [], [], 0
    for i, e in enumerate(episodes):
        T = len(e[vecs[0]])
        cols = {k: pa.array(np.asarray(e[k], np.float32).tolist(), pa.list_(pa.float32())) for k in vecs}
        cols.update(timestamp=pa.array(np.arange(T, dtype=np.float32) / fps), frame_index=pa.array(np.arange(T)),
                    episode_index=pa.array(np.full(T, i)), index=pa.array(start + np.arange(T)),
                    task_index=pa.array(np.full(T, tasks.index(e["task"]))))
        if image_dtype == "image":
            for c in cams:
                pngs = []
                for im in e["frames"][c]:
                    buf = io.BytesIO()
                    Image.fromarray(im).save(buf, format="PNG")
                    pngs.append({"bytes": buf.getvalue(), "path": None})
                cols[c] = pa.array(pngs, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        tables.append(pa.table(cols))
        meta = dict(episode_index=i, tasks=[e["task"]], length=T)
        if v3:
            meta.update({"data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + T})
            for c in cams if video else []:
                meta.update({f"videos/{c}/chunk_index": 0, f"videos/{c}/file_index": 0,
                             f"videos/{c}/from_timestamp": start / fps, f"videos/{c}/to_timestamp": (start + T) / fps})
        else:
            os.makedirs(os.path.join(root, "data", "chunk-000"), exist_ok=True)
            pq.write_table(tables[-1], os.path.join(root, "data", "chunk-000", f"episode_{i:06d}.parquet"))
            for c in cams if video else []:
                encode_video(os.path.join(root, "videos", "chunk-000", c, f"episode_{i:06d}.mp4"), e["frames"][c], fps, codec)
        metas.append(meta)
        start += T
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    if v3:
        os.makedirs(os.path.join(root, "data", "chunk-000"))
        pq.write_table(pa.concat_tables(tables), os.path.join(root, "data", "chunk-000", "file-000.parquet"))
        for c in cams if video else []:
            encode_video(os.path.join(root, "videos", c, "chunk-000", "file-000.mp4"),
                         np.concatenate([e["frames"][c] for e in episodes]), fps, codec)
        os.makedirs(os.path.join(root, "meta", "episodes", "chunk-000"))
        pq.write_table(pa.Table.from_pylist(metas), os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet"))
        pq.write_table(pa.table(dict(task_index=list(range(len(tasks))), task=tasks)), os.path.join(root, "meta", "tasks.parquet"))
    else:
        with open(os.path.join(root, "meta", "episodes.jsonl"), "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in metas)
        with open(os.path.join(root, "meta", "tasks.jsonl"), "w") as f:
            f.writelines(json.dumps(dict(task_index=i, task=t)) + "\n" for i, t in enumerate(tasks))
    json.dump(info, open(os.path.join(root, "meta", "info.json"), "w"), indent=4)
    return root
