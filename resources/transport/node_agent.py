"""What a copy does on the *target* node, in one remote command. Standard library only.

Run as `python3 -I -c <this source>` with a JSON job on stdin; prints one JSON reply.
One command per copy or batch instead of one per step: every SSH command pays a
login shell's rc files (pyenv/conda inits cost ~0.2 s each on fleet images).

Modes:
- `pull`: skip if the final file already has the bytes (by hash: asking the source
  for its size would cost a round trip); else pin the source's host key, rsync from
  the source into the staging name, then `publish`.
- `publish`: hash the staged file (hashlib: OpenSSL, SHA-NI) while its fsync runs in a
  thread, rename over the final name only on a match, fsync the directory; a mismatch
  is deleted.
- `batch`: rsync a list of files (--files-from) into a batch directory, then publish
  them all: hashed by a few threads while one syncfs(2) flushes the batch, instead of
  a journal commit per file.
- `batch-publish`: the publish half of `batch`, for files that arrived another way.
"""

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from multiprocessing.pool import ThreadPool

BLOCK = 1 << 20


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path, flush=False):
    """SHA-256 of a file; with `flush`, its fsync runs meanwhile (the pages are hot)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        flusher = threading.Thread(target=os.fsync, args=(fd,)) if flush else None
        if flusher:
            flusher.start()
        # A buffer no larger than the file: zeroing 1 MiB for each 64 KiB file of a batch
        # cost more than hashing it.
        digest = hashlib.sha256()
        buf = bytearray(max(1, min(BLOCK, os.fstat(fd).st_size)))
        view = memoryview(buf)
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            digest.update(view[:n])
        if flusher:
            flusher.join()
        return digest.hexdigest()
    finally:
        os.close(fd)


def mismatch(got, expected):
    return {
        "error": f"verify at target: sha256 {got} != expected {expected}",
        "mismatch": True,
    }


def publish(staging, final, expected):
    got = sha256_of(staging, flush=True)
    if got != expected:
        os.unlink(staging)
        return mismatch(got, expected)
    size = os.path.getsize(staging)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(staging, final)
    fsync_dir(os.path.dirname(final))
    return {"size": size, "moved": size}


def pin(job):
    os.makedirs(os.path.dirname(job["known_hosts"]), exist_ok=True)
    with open(job["known_hosts"], "w") as f:
        f.write(job["pin"])


def rsync(argv, stdin=None):
    done = subprocess.run(argv, input=stdin, capture_output=True)
    if done.returncode:
        err = done.stderr.decode(errors="replace").strip()[-800:]
        return {"error": f"rsync exited {done.returncode}: {err}", "rc": done.returncode}
    return None


def pull(job):
    final, staging, expected = job["final"], job["staging"], job["sha256"]
    if os.path.isfile(final) and sha256_of(final) == expected:
        return {"size": os.path.getsize(final), "moved": 0}
    pin(job)
    folder, name = os.path.split(staging)
    os.makedirs(folder, exist_ok=True)
    # rsync's own in-flight file survives a SIGKILLed rsync; the staging name is the
    # same on every attempt, so a retry clears it (`.NAME.XXXXXX`, no 2nd dot).
    hidden = name if name.startswith(".") else "." + name
    for entry in os.listdir(folder):
        if entry.startswith(hidden + ".") and len(entry) == len(hidden) + 7:
            os.unlink(os.path.join(folder, entry))
    failed = rsync(job["rsync"])
    return failed or publish(staging, final, expected)


def publish_many(plan):
    """Hash all (a few threads) while one syncfs flushes them; rename the verified;
    fsync each directory once. Renames wait for both, so nothing unverified or
    unflushed is ever visible under a final name."""
    staged = [item[0] for item in plan]
    flusher = threading.Thread(target=flush_all, args=(staged,)) if staged else None
    if flusher:
        flusher.start()

    def digest(path):
        try:
            return sha256_of(path)
        except OSError as exc:
            return exc

    with ThreadPool(max(1, min(4, os.cpu_count() or 1))) as pool:
        digests = pool.map(digest, staged)
    if flusher:
        flusher.join()
    out, ok = [], []
    for (path, final, expected), got in zip(plan, digests):  # noqa: B905 (nodes may run < 3.10)
        if isinstance(got, OSError):
            out.append({"error": f"publish: {got}"})
        elif got != expected:
            os.unlink(path)
            out.append(mismatch(got, expected))
        else:
            out.append({"size": os.path.getsize(path)})
            ok.append((len(out) - 1, path, final))
    dirs = set()  # made once each, fsynced once each
    for i, path, final in ok:
        folder = os.path.dirname(final)
        try:
            if folder not in dirs:
                os.makedirs(folder, exist_ok=True)
                dirs.add(folder)
            os.replace(path, final)
        except OSError as exc:
            out[i] = {"error": f"publish: {exc}"}
    for d in sorted(dirs):
        fsync_dir(d)
    return out


def flush_all(paths):
    """Make the files durable: one syncfs(2) of their filesystem, else one by one."""
    fd = os.open(os.path.dirname(paths[0]), os.O_RDONLY)
    try:
        synced = ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0
    except (OSError, AttributeError):
        synced = False
    finally:
        os.close(fd)
    if not synced:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def batch(job):
    pin(job)
    names = "\0".join(job["names"]).encode() + b"\0"
    failed = rsync(job["rsync"], names)
    if failed:
        return failed
    results = publish_many(job["plan"])
    shutil.rmtree(job["batch"], ignore_errors=True)
    return {"results": results}


def main():
    job = json.load(sys.stdin)
    mode = job["mode"]
    if mode == "batch-publish":
        reply = {"results": publish_many(job["plan"])}
    elif mode == "publish":
        reply = publish(job["staging"], job["final"], job["sha256"])
    else:
        reply = {"pull": pull, "batch": batch}[mode](job)
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
