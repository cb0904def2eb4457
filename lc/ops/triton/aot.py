"""Compile the region kernels for a GPU that is not here: Triton's own compiler and ptxas, no launch.

`compile_only(target)` makes the ops of `lc.ops.library` take their Triton path on CPU tensors while
a stand-in driver answers Triton's runtime for the named GPU: each launch binds and specialises its
arguments exactly as on that GPU (dtypes, 16-byte alignment, integer divisibility), compiles the
variant for its compute capability (TTIR -> PTX -> cubin through the ptxas bundled with Triton),
"loads" it, which is where Triton checks the variant's shared memory and threads against the
device's limits, and launches nothing: outputs stay unwritten, so only shapes flow on. Every
compiled variant is recorded with its registers and spills (from the cubin, `cuobjdump
-res-usage`) and its shared memory.

What it proves without a GPU: every kernel variant a run would compile does compile for that
architecture and fits its limits. What it cannot: that the kernels compute the right numbers there
(the interpreter tests do that on the CPU) or how fast they are.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lc.ops.triton.compile_log import CompileLog, log_compiles

__all__ = ["AOT_TARGETS", "AotTarget", "AotUnavailable", "CompiledVariant", "compile_only"]


class AotUnavailable(ValueError):
    """This machine's Triton cannot compile for a GPU here (missing, the interpreter, or a Triton
    whose runtime no longer has what `compile_only` hooks into: written against Triton 3.8)."""


@dataclass(frozen=True)
class AotTarget:
    """A GPU by what Triton's runtime asks of it: compute capability and shared memory per block from
    the CUDA C Programming Guide's compute-capability tables, SM count from the part's datasheet."""

    name: str
    arch: int              # compute capability x 10
    sm_count: int          # the kernels' tile choice depends on it (`region_gemm._block_n`)
    max_shared_mem: int    # bytes per block, opt-in maximum
    max_threads: int = 1024


AOT_TARGETS = {
    "h100": AotTarget("h100", 90, 132, 232448),  # H100 SXM and H200: sm_90, 227 KiB
    "h100-pcie": AotTarget("h100-pcie", 90, 114, 232448),  # the SM count picks tiles: compile for the card
    "a100": AotTarget("a100", 80, 108, 166912),  # A100: sm_80, 163 KiB
}


@dataclass
class CompiledVariant:
    """One compiled kernel variant and what the cubin says of it."""

    kernel: str
    constants: dict
    signature: dict
    num_warps: int
    num_stages: int
    compile_s: float
    aligned: list[str]     # arguments specialised as divisible by 16 (pointers: 16-byte aligned)
    shared_bytes: int = -1
    registers: int = -1
    spill_bytes: int = -1  # local memory per thread (register spills and stack arrays)
    error: str = ""
    launches: int = 0
    cache_hit: bool = False  # loaded from Triton's on-disk cache (TRITON_CACHE_DIR), not built here


class _Utils:
    def __init__(self, driver: _AotDriver):
        self.driver = driver

    def get_device_properties(self, device) -> dict:
        t = self.driver.target
        return {"max_shared_mem": t.max_shared_mem, "multiprocessor_count": t.sm_count,
                "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0,
                "mem_bus_width": 0}

    def load_binary(self, name, cubin, shared, device):
        registers, spills = self.driver.on_load(cubin)
        return None, None, registers, spills, self.driver.target.max_threads

    def unload_module(self, module) -> None:
        return None


class _AotDriver:
    """What Triton's runtime reads of the active driver, for a target GPU that is not present."""

    def __init__(self, target: AotTarget, compiles: CompileLog):
        from triton.backends.compiler import GPUTarget
        self.target = target
        self.compiles = compiles  # says whether the variant just compiled came from the cache
        self.gpu_target = GPUTarget("cuda", target.arch, 32)
        self.utils = _Utils(self)
        self.variants: list[CompiledVariant] = []
        self._pending: CompiledVariant | None = None  # compiled, not yet loaded
        self._loading: CompiledVariant | None = None
        self._by_hash: dict[str, CompiledVariant | None] = {}
        self._started = 0.0
        self._tmp = tempfile.TemporaryDirectory(prefix="lc-aot-")

    # --- the driver interface ----------------------------------------------------------------
    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self.gpu_target

    def get_current_device(self) -> str:
        return f"aot:{self.target.name}"  # never an int: a real device's caches stay apart

    def get_current_stream(self, device=None) -> int:
        return 0

    def launcher_cls(self, src, metadata):
        # Triton loads a kernel whose module is None again at each launch: the variant is found
        # by its hash after the first time
        variant = self._pending if self._pending is not None else self._by_hash.get(metadata.hash)
        self._pending = None  # used once: a variant that fails its load must not be credited later
        self._by_hash[metadata.hash] = self._loading = variant
        if variant is not None:
            variant.shared_bytes = metadata.shared
        if variant is not None and metadata.shared > self.target.max_shared_mem:  # Triton raises next
            variant.error = f"shared memory {metadata.shared} B > {self.target.max_shared_mem} B"

        def launch(*_args, **_kwargs):  # compile only: nothing runs
            if variant is not None:
                variant.launches += 1
        return launch

    # --- Triton's compile hooks --------------------------------------------------------------------
    def before_compile(self, **_kwargs) -> bool:
        self._started = time.perf_counter()
        return False  # compile as usual

    def after_compile(self, *, fn, compile, **_kwargs) -> None:
        constants = {(k[0] if isinstance(k, tuple) and len(k) == 1 else k): v
                     for k, v in compile["constants"].items()}
        names = fn.jit_function.arg_names
        self._pending = CompiledVariant(
            kernel=fn.name.rsplit(".", 1)[-1], num_warps=compile["num_warps"],
            num_stages=compile["num_stages"],
            constants={names[k] if isinstance(k, int) else str(k): v for k, v in constants.items()},
            signature={k: v for k, v in compile["signature"].items() if v != "constexpr"},
            aligned=[names[k[0]] for k, attrs in compile["configs"][0].items()
                     if any(a[0] == "tt.divisibility" for a in attrs)],
            compile_s=time.perf_counter() - self._started, cache_hit=bool(self.compiles.last_hit))
        self.variants.append(self._pending)

    def on_load(self, cubin: bytes) -> tuple[int, int]:
        variant, self._loading = self._loading, None
        if variant is None or variant.registers < 0:
            registers, spills = self.resources(cubin)
            if variant is not None:
                variant.registers, variant.spill_bytes = registers, spills
            return registers, spills
        return variant.registers, variant.spill_bytes

    def resources(self, cubin: bytes) -> tuple[int, int]:
        """(registers, local bytes) of the cubin's one function, -1 where cuobjdump is missing."""
        from triton import knobs
        path = Path(self._tmp.name) / "kernel.cubin"
        path.write_bytes(cubin)
        try:
            text = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", str(path)], check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError, RuntimeError):
            return -1, -1
        regs = re.search(r"REG:(\d+)", text)
        stack, local = re.search(r"STACK:(\d+)", text), re.search(r"LOCAL:(\d+)", text)
        spill = max((int(m.group(1)) for m in (stack, local) if m), default=0)  # the stack lives in local
        return (int(regs.group(1)) if regs else -1), spill


@functools.cache
def _ptxas_error(path: str) -> str | None:
    """Why the ptxas at `path` does not run, or None (asked once per process)."""
    try:
        subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _triton_runtime():
    """(knobs, the runtime's driver config, lc's JIT kernels), or AotUnavailable naming what is
    missing."""
    try:
        import triton
        from triton import knobs
        from triton.runtime.driver import driver
    except ImportError as exc:
        raise AotUnavailable(f"compiling for a GPU needs triton with its NVIDIA backend (pip install "
                             f"triton, Linux x86-64): {exc}") from exc
    version = getattr(triton, "__version__", "?")
    kernels = _kernels()
    missing = [name for name, ok in (
        ("the NVIDIA backend", "nvidia" in getattr(triton.backends, "backends", {})),
        ("driver.set_active", hasattr(driver, "set_active") and hasattr(driver, "_active")),
        ("runtime compile hooks", hasattr(knobs.runtime, "jit_cache_hook")
         and hasattr(knobs.runtime, "jit_post_compile_hook")),
        ("cuobjdump knob", hasattr(knobs.nvidia, "cuobjdump")),
        ("compile listener", hasattr(knobs.compilation, "listener")),
        ("per-device kernel caches", all(hasattr(k, "device_caches") and hasattr(k, "create_binder")
                                         for k in kernels)),
    ) if not ok]
    if not missing:
        try:
            why = _ptxas_error(knobs.nvidia.ptxas.path)
        except RuntimeError as exc:  # the knob finds no ptxas
            why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            missing.append(f"a ptxas that runs ({why})")
    if missing:
        raise AotUnavailable(f"triton {version} lacks what compile_only uses ({', '.join(missing)}); it was "
                             "written against triton 3.8 (requirements/lock.txt)")
    return knobs, driver, kernels


def _kernels() -> list:
    """Every Triton JIT function of lc.ops.triton (each gets fresh per-device caches)."""
    import importlib
    import pkgutil

    import triton

    import lc.ops.triton as package
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name == "aot":
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [v for v in vars(module).values()
                  if isinstance(v, triton.runtime.JITFunction) and v.fn.__module__ == module.__name__]
    return found


@contextmanager
def compile_only(target: AotTarget | str = "h100") -> Iterator[list[CompiledVariant]]:
    """Within: the region ops compile their Triton kernels for `target` on CPU tensors, launch nothing
    and leave their outputs unwritten; yields the list of compiled variants (filled as they compile).

    Needs a real Triton JIT (not TRITON_INTERPRET=1) with its NVIDIA backend (else AotUnavailable,
    a ValueError: one line on the command line). Stage plans and tables keep the Triton tiles of the
    target they were first built under (tiles depend on the SM count): use a fresh network, or
    `lc.models.plan_cache.invalidate_plans()` and fresh ActiveSets, per target. Everything it
    changes (the active driver, the kernels' per-device caches, Triton's compile hooks, the ops'
    CPU backend, the tile choice's SM count) is restored on exit.
    """
    if isinstance(target, str):
        if target not in AOT_TARGETS:
            raise ValueError(f"unknown AOT target {target!r}; one of {sorted(AOT_TARGETS)}")
        target = AOT_TARGETS[target]
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # read as lc.ops.triton reads it
        raise AotUnavailable("compiling for a GPU needs Triton's compiler, not its interpreter: unset "
                             "TRITON_INTERPRET before importing lc")
    knobs, triton_driver, kernels = _triton_runtime()
    from lc.ops import library
    from lc.ops.triton import region_gemm
    with log_compiles() as compiles:
        aot = _AotDriver(target, compiles)
        saved_caches = [k.device_caches for k in kernels]
        cpu = torch.device("cpu")
        saved = (triton_driver._active, knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook,
                 library._cpu_backend, region_gemm._sm_count.get(cpu))
        try:
            triton_driver.set_active(aot)
            for k in kernels:  # fresh per-device caches, filled for this target only
                k.device_caches = defaultdict(k.create_binder)
            knobs.runtime.jit_cache_hook = aot.before_compile
            knobs.runtime.jit_post_compile_hook = aot.after_compile
            library._cpu_backend = "aot"
            region_gemm._sm_count[cpu] = target.sm_count
            yield aot.variants
        finally:
            triton_driver._active = saved[0]
            knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved[1], saved[2]
            library._cpu_backend = saved[3]
            if saved[4] is None:
                region_gemm._sm_count.pop(cpu, None)
            else:
                region_gemm._sm_count[cpu] = saved[4]
            for k, caches in zip(kernels, saved_caches, strict=True):
                k.device_caches = caches
            aot._tmp.cleanup()

