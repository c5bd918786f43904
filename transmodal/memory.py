"""How much memory this process may still fill: the machine's available memory, a container's or cluster
job's cgroup limit, and an address-space limit (``ulimit -v``), whichever is tightest."""

from __future__ import annotations

from pathlib import Path


def available_memory() -> int:
    """Bytes this process may still fill: the machine's available memory, or less where a limit on the
    process is tighter. psutil reads the machine's (``/proc/meminfo``), which a container's or a cluster
    job's memory limit (a cgroup's ``memory.max``, less what the group uses) and an address-space limit
    (``ulimit -v``, less what the process maps) do not show."""
    import psutil

    limits = [psutil.virtual_memory().available]
    cgroup = _cgroup_room()
    if cgroup is not None:
        limits.append(cgroup)
    address_space = address_space_limit()
    if address_space is not None:
        limits.append(max(address_space - psutil.Process().memory_info().vms, 0))
    return min(limits)


def address_space_limit() -> int | None:
    """The process's address-space limit (``ulimit -v``) in bytes; None without one (or on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _cgroup_room(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The least room (limit less usage) of this process's cgroup and those above it, in bytes; None
    without a limit. cgroup v2 (``memory.max``, ``memory.current``) or v1's memory controller
    (``memory.limit_in_bytes``, ``memory.usage_in_bytes``). The usage less the file cache the kernel drops
    at the limit (``inactive_file`` in ``memory.stat``; v1 ``total_inactive_file``), as Docker and the
    kubelet count it: a long-running container's usage sits near its limit with cache."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            base, files, cache = root, ("memory.max", "memory.current"), "inactive_file"
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
            cache = "total_inactive_file"
        else:
            continue
        folder = base / path.lstrip("/")
        for group in (folder, *folder.parents):
            try:
                limit, usage = (int((group / name).read_text()) for name in files)
            except (OSError, ValueError):  # no such file here, or "max": no limit at this level
                pass
            else:
                rooms.append(max(limit - max(usage - _stat(group / "memory.stat", cache), 0), 0))
            if group == base:
                break
    return min(rooms) if rooms else None


def _stat(path: Path, key: str) -> int:
    """``key``'s value in a cgroup's ``memory.stat`` (0 when absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
