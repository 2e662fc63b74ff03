"""
Writing an output: by one process, whole or not at all, and one clear line when it cannot be written.

Every script writes its results through here: train.py's run folder (runfolder.py), evaluate.py's and cknna.py's
output folders, data.py's synthetic file, the feature cache.

    claim(out, flag)       NAME.lock beside NAME, held (fcntl.flock) for the process's life: a second process on the
                           same output is refused; NAME.incomplete-* left by an owner that is gone (killed) are removed
    new_folder(out, flag)  a folder of our own beside NAME (NAME.incomplete-XXXX), to write into ...
    swap_in(new, out)      ... which then takes NAME's place whole (never a mix of two outputs)
    atomic(path, write)    a file written under a name of our own (PATH.incomplete-PID), then renamed to PATH

A write that fails (OSError: no permission, a full disk, a path through a file) becomes an OutputError whose message
is one line, 'cannot write PATH: <reason>: <remedy>'; a script prints it as `error: ...` and exits non-zero. Nothing
half-written is left, and an older output of the same name is untouched.
"""
import atexit
import errno
import fcntl
import glob
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager


class OutputError(Exception):
    """An output that cannot be written; the message is one line: what, why, what to do."""


def cannot_write(path, e, flag):
    """OSError e met writing path -> OutputError 'cannot write PATH: reason: remedy' (flag: the script's flag naming it)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        remedy = f"free disk space, or give {flag} on another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        remedy = f"give {flag} a place you can write to"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        remedy = f"a part of the path is a file, not a folder: give {flag} another path"
    else:
        remedy = f"give {flag} another path"
    return OutputError(f"cannot write {path}: {e.strerror or e}: {remedy}")


@contextmanager
def writing(path, flag):
    """Inside: an OSError is an OutputError about path (the output the user named, not a temporary name of ours)."""
    try:
        yield
    except OSError as e:
        raise cannot_write(path, e, flag) from None


def claim(out, flag):
    """Make this process out's only writer until it exits: take NAME.lock beside out (made if need be; removed at exit;
    the kernel drops the lock however the process ends, SIGKILL included), then remove what earlier owners that are gone
    left half-written (NAME.incomplete-*: every writer of one holds the lock). OutputError if another process holds it."""
    lock = out + ".lock"
    with writing(out, flag):
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 20).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputError(f"{out} is being written by another process (pid {pid}, which holds {lock}): wait "
                                  f"for it to end, or give another {flag}") from None
            try:   # the file we locked may have been removed by its last owner meanwhile: then lock the new one
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        atexit.register(_release, lock, fd, os.getpid())
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        for stale in glob.glob(glob.escape(out) + ".incomplete-*"):   # their owner is gone: it held this lock
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            else:
                os.remove(stale)


def _release(lock, fd, pid):
    if os.getpid() == pid:   # not in a forked child
        try:
            os.remove(lock)   # while holding it: the next claim sees its inode is gone and makes a new one
        except OSError:
            pass
        os.close(fd)


def new_folder(out, flag):
    """A new empty folder beside out, NAME.incomplete-XXXX, for this process to write into (claim out first)."""
    with writing(out, flag):
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        return tempfile.mkdtemp(prefix=os.path.basename(out) + ".incomplete-", dir=os.path.dirname(out) or ".")


def swap_in(new, out, replace=True):
    """Folder new takes out's name whole, never a mix of both. replace: an existing out goes aside into new (a name of
    ours, so nothing of the user's is touched), new takes out's name, then the old one is deleted. An out that is not
    to be replaced (not empty), or that someone else made meanwhile: new is kept whole as NAME.kept-XXXX, and an
    OutputError says so."""
    # Ctrl-C and `kill` wait for the two renames: an old out is never left inside new, which is deleted at exit
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if os.path.exists(out) and replace:
            os.rename(out, os.path.join(new, "replaced"))
        os.rename(new, out)   # onto nothing or an empty folder; onto a folder with files (or a file): an OSError
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        kept = out + ".kept-" + os.path.basename(new).rsplit("-", 1)[-1]
        os.rename(new, kept)
        err = OutputError(f"cannot write {out}: another process made it while this one ran: this output is kept whole "
                          f"in {kept}: compare the two and keep one")
        err.kept = kept
        raise err from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    shutil.rmtree(os.path.join(out, "replaced"), ignore_errors=True)


def atomic(path, write, flag):
    """write(tmp) writes the file's content to tmp, a name of ours beside path, which is then renamed to path: a reader
    never sees a half-written file, and on failure neither tmp nor a changed path is left (OSError -> OutputError).
    The caller owns path (claim): what an earlier owner left half-written (PATH.incomplete-*) is removed first."""
    tmp = f"{path}.incomplete-{os.getpid()}"
    try:
        for stale in glob.glob(glob.escape(path) + ".incomplete-*"):
            os.remove(stale)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise cannot_write(path, e, flag) from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
