"""Fault injection inside a ``jaxfno`` process, for ``tests/test_faults.py``.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; the harness puts this folder
there and sets ``JAXFNO_FAULT`` to ``<point>@<target>``, and the process kills itself with
SIGKILL (no cleanup, no ``finally``, no flush: what a lost node or ``kill -9`` does) exactly there:

* ``ckpt-write@<kind>/<epoch>``: a checkpoint step is written to Orbax's temporary directory
  and about to be committed (renamed);
* ``ckpt-commit@<kind>/<epoch>``: the step was just committed; older steps not yet deleted;
* ``ckpt-delete@<kind>/<epoch>``: an older step, being deleted, is half gone;
* ``write@<name>``: an atomic write of the file ``<name>`` (history.json, metrics.json,
  recon.npz, a report file ...) has its temporary file written, not yet renamed over ``name``;
* ``written@<name>``: the file ``<name>`` was just replaced;
* ``call@<module>:<Class>.<attribute>``: the instances' callable ``attribute`` (e.g. the
  engine's jitted ``train_step``, ``evaluate``) was just called: its computation dispatched and
  running (mid-step, mid-validation).

``<target>`` may end in ``#<n>``: the n-th match (default: the first). Before dying the process
writes the point to ``$JAXFNO_FAULT_FIRED`` so that the harness knows the kill was the planned
one. Without ``JAXFNO_FAULT`` nothing is imported or patched.
"""

import os

_SPEC = os.environ.get("JAXFNO_FAULT")


def _install(spec: str) -> None:
    import pathlib
    import shutil
    import signal

    point, _, target = spec.partition("@")
    target, _, nth = target.partition("#")
    remaining = [int(nth or 1)]

    def fire(where: str) -> None:
        remaining[0] -= 1
        if remaining[0] > 0:
            return
        fired = os.environ.get("JAXFNO_FAULT_FIRED")
        if fired:
            with open(fired, "w") as f:
                f.write(f"{spec} at {where}\n")
                f.flush()
                os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def step_name(path) -> str | None:
        """``<kind>/<epoch>`` of a checkpoint step directory, else None."""
        path = pathlib.Path(str(path))
        if path.name.isdigit() and path.parent.parent.name == "checkpoints":
            return f"{path.parent.name}/{path.name}"
        return None

    if point in ("ckpt-write", "ckpt-commit"):
        from orbax.checkpoint._src.path import atomicity

        cls = atomicity.AtomicRenameTemporaryPath
        original = cls.finalize

        async def finalize(self, *args, **kwargs):
            name = step_name(self.get_final())
            if point == "ckpt-write" and name == target:
                fire(str(self.get()))
            result = await original(self, *args, **kwargs)
            if point == "ckpt-commit" and name == target:
                fire(str(self.get_final()))
            return result

        cls.finalize = finalize
    elif point == "ckpt-delete":
        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if step_name(path) == target:
                parts = sorted(pathlib.Path(path).iterdir())
                for part in parts[: max(1, len(parts) // 2)]:  # half of it gone
                    if part.is_dir():
                        original_rmtree(part)
                    else:
                        part.unlink()
                fire(str(path))
            return original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif point in ("write", "written"):
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            hit = os.path.basename(os.fspath(dst)) == target
            if hit and point == "write":
                fire(os.fspath(dst))
            result = original_replace(src, dst, *args, **kwargs)
            if hit and point == "written":
                fire(os.fspath(dst))
            return result

        os.replace = replace
    elif point == "call":
        import importlib

        module, _, qualname = target.partition(":")
        class_name, _, attribute = qualname.partition(".")
        cls = getattr(importlib.import_module(module), class_name)
        original_init = cls.__init__

        class Wrapped:
            """Calls ``fn`` and then fires; everything else (jit's ``lower`` ...) is ``fn``'s."""

            def __init__(self, fn):
                self._fn = fn

            def __call__(self, *args, **kwargs):
                result = self._fn(*args, **kwargs)
                fire(qualname)
                return result

            def __getattr__(self, name):
                return getattr(self._fn, name)

        def __init__(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            setattr(self, attribute, Wrapped(getattr(self, attribute)))

        cls.__init__ = __init__
    else:
        raise SystemExit(f"JAXFNO_FAULT: unknown point {point!r} in {spec!r}")


if _SPEC:
    _install(_SPEC)
