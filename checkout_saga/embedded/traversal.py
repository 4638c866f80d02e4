"""Let one other user reach a path through private folders, and nobody else.

Why: under root the embedded PostgreSQL runs as a system user (it refuses root), and both its
binaries (in the virtualenv) and its data folder may sit below a private folder such as /root
(mode 0700).  Rather than open such a folder to everyone (o+x), each ancestor that keeps the
user out gets a POSIX ACL entry giving that one user search (x) permission: it may pass
through, not list, read or write.  The ACL is written as the kernel's own xattr
(system.posix_acl_access), so no `setfacl` binary is needed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from pathlib import Path

from messaging.errors import CheckoutSagaError

__all__ = ["TraversalError", "grant_traversal", "reachable_by"]

_log = logging.getLogger(__name__)
_XATTR = "system.posix_acl_access"
_VERSION = 2
_UNDEFINED = 0xFFFFFFFF
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ENTRY = struct.Struct("<HHI")
_X = 1


class TraversalError(CheckoutSagaError, RuntimeError):
    """A folder keeps the user out and cannot be given an ACL entry; says what to do."""


def reachable_by(folder: Path, uid: int, gids: set[int]) -> bool:
    """Whether a user may search (x) `folder`, by its mode bits and any ACL entry for it."""
    st = folder.stat()
    entries = _read_acl(folder)
    if entries is None:
        if st.st_uid == uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in gids:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), 7)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    for tag, perm, qualifier in entries:
        if tag == _USER and qualifier == uid:
            return bool(perm & mask & _X)
    group_perms = [perm for tag, perm, qualifier in entries
                   if (tag == _GROUP_OBJ and st.st_gid in gids) or (tag == _GROUP and qualifier in gids)]
    if group_perms:
        return any(perm & mask & _X for perm in group_perms)
    return bool(st.st_mode & stat.S_IXOTH)


def grant_traversal(path: Path, uid: int, gids: set[int]) -> None:
    """Give user `uid` search permission on every ancestor of `path` that keeps it out."""
    for folder in reversed(path.resolve().parents):
        if reachable_by(folder, uid, gids):
            continue
        _log.info("giving uid %d search (x) permission on %s by ACL so that it can reach %s",
                  uid, folder, path)
        try:
            _add_user_entry(folder, uid)
        except OSError as exc:
            raise TraversalError(
                f"{folder} keeps uid {uid} out (mode {stat.S_IMODE(folder.stat().st_mode):o}) "
                f"and cannot take an ACL ({exc.strerror}): run from a folder that others can "
                f"enter, or `chmod o+x {folder}`") from exc
        if not reachable_by(folder, uid, gids):  # e.g. a filesystem that keeps ACLs but ignores them
            raise TraversalError(f"{folder} still keeps uid {uid} out after an ACL entry: run "
                                 f"from a folder that others can enter, or `chmod o+x {folder}`")


def _read_acl(folder: Path) -> list[tuple[int, int, int]] | None:
    try:
        raw = os.getxattr(folder, _XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    (version,) = struct.unpack_from("<I", raw)
    if version != _VERSION:
        raise OSError(errno.EINVAL, f"unknown ACL version {version} on {folder}")
    return [_ENTRY.unpack_from(raw, offset) for offset in range(4, len(raw), _ENTRY.size)]


def _add_user_entry(folder: Path, uid: int) -> None:
    mode = stat.S_IMODE(folder.stat().st_mode)
    entries = _read_acl(folder)
    if entries is None:  # the minimal ACL the mode bits stand for
        entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED), (_GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED),
                   (_OTHER, mode & 7, _UNDEFINED)]
    users = {qualifier: perm for tag, perm, qualifier in entries if tag == _USER}
    users[uid] = users.get(uid, 0) | _X
    kept = [e for e in entries if e[0] not in (_USER, _MASK)]
    named = [(_USER, perm, qualifier) for qualifier, perm in users.items()]
    group_class = [perm for tag, perm, _ in kept + named if tag in (_USER, _GROUP_OBJ, _GROUP)]
    mask = 0
    for perm in group_class:
        mask |= perm
    ordered = sorted([*kept, *named, (_MASK, mask, _UNDEFINED)], key=lambda e: (e[0], e[2]))
    raw = struct.pack("<I", _VERSION) + b"".join(_ENTRY.pack(*e) for e in ordered)
    os.setxattr(folder, _XATTR, raw)
