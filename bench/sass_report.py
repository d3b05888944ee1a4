"""What the fused convolution kernel compiles to on a Hopper GPU, without one: SASS instruction
counts, loop bodies, matrix-multiply instructions, registers, spills and shared memory.

Triton compiles for any target on a CPU (its wheel carries ptxas, nvdisasm and cuobjdump), so
a kernel change can be judged by the instructions it executes before any GPU time is spent:
compile-time channel counts took the 64x64 32-channel launch from 2,376 to 1,168 instructions per
program (docs/performance.md), and the 2-warp row tiles' 236 registers were found this way.

    python -m bench.sass_report                     # every case below, sm_90
    python -m bench.sass_report --case rows-64 --arch 90 --sass out.sass

The cases are launches of the reference network (batch-independent: the counts are per program).
Counts are static: a loop body's instructions run once per iteration, the rest once per program.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from diffusion_core.fused import conv as fc

BATCH = 256  # the reference network's benchmark batch: default_tiles looks at the batch's pixels


@dataclass(frozen=True)
class Launch:
    """A launch kind of the reference network: map size, output and input channels (3x3 ``x``,
    3x3 ``skip``, two 1x1 shortcuts; 0 where absent), epilogue, and tiles (None: ``default_tiles``,
    what fused_conv runs)."""
    image: tuple[int, int]
    c_out: int
    channels: tuple[int, int, int, int]
    table: bool = True
    silu: bool = True
    residual: bool = False
    tiles: fc.Tiles | None = None


CASES = {
    "flat-16x16-96": Launch((16, 16), 96, (96, 0, 0, 0)),
    "flat-8x8-128-residual": Launch((8, 8), 128, (128, 0, 0, 0), table=False, silu=False, residual=True),
    "rows-64": Launch((64, 64), 32, (32, 0, 0, 0)),
    "rows-64-up": Launch((64, 64), 32, (64, 32, 0, 0)),
    "rows-32-shortcut": Launch((32, 32), 64, (64, 0, 96, 64), table=False, silu=False),
    # the flat tiles that the 64-wide launches took before the row tiles
    "flat-64": Launch((64, 64), 32, (32, 0, 0, 0), tiles=fc.Tiles(128, 32, 32, 4, 3)),
}


def _tool(name: str) -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise SystemExit(f"Triton's wheel has no {name} ({path}); this report needs the NVIDIA backend's tools")
    return str(path)


def compile_case(case: str, arch: int = 90):
    """The compiled kernel of ``case`` for sm_``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if fc.interpreting():
        raise SystemExit("Triton's interpreter is on (TRITON_INTERPRET=1): unset it to compile kernels")
    launch = CASES[case]
    h, w = launch.image
    tiles = launch.tiles or fc.default_tiles(launch.c_out, launch.channels[:2], BATCH * h * w, launch.image)
    constexprs = fc.kernel_constants(launch.c_out, launch.channels, tiles, w, table=launch.table, per_image=False,
                                     silu=launch.silu, residual=launch.residual)
    fn = fc._fused_conv_rows_kernel if tiles.rows else fc._fused_conv_kernel
    names = fn.arg_names
    signature = {}
    for n in names:
        signature[n] = ("constexpr" if n in constexprs else "*fp32" if n == "bias_ptr" else "*bf16"
                        if n.endswith("_ptr") else "i32")
    # pointers and sizes divisible by 16, as Triton specialises them at a real launch
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if n not in constexprs and n not in ("H",)}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": tiles.num_warps, "num_stages": tiles.num_stages})


def report(kernel) -> dict:
    """Counts of a compiled kernel's SASS: total, per loop body (a block a backward branch returns
    to), matrix-multiply instructions (HGMMA: Hopper's warpgroup MMA; HMMA: mma.sync), registers,
    spill stack, local memory and shared memory."""
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_tool("nvdisasm"), "-c", cubin], check=True, capture_output=True, text=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], check=True, capture_output=True,
                               text=True).stdout
    offsets, labels, label = [], {}, None
    for line in sass.splitlines():
        m = re.match(r"\s*\.L_x_(\d+):", line)
        if m:
            label = m.group(1)
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*)", line)
        if m:
            off = int(m.group(1), 16)
            offsets.append((off, m.group(2)))
            if label is not None:
                labels[label], label = off, None
    loops = []
    for off, ins in offsets:
        m = re.search(r"\bBRA\b.*\.L_x_(\d+)", ins)
        if m and labels.get(m.group(1), off + 1) < off:
            body = [i for o, i in offsets if labels[m.group(1)] <= o <= off]
            loops.append({"instructions": len(body), "hgmma": sum("HGMMA" in i for i in body),
                          "hmma": sum(re.search(r"\bHMMA\b", i) is not None for i in body)})
    resources = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {"instructions": len(offsets), "hgmma": sum("HGMMA" in i for _, i in offsets),
            "hmma": sum(re.search(r"\bHMMA\b", i) is not None for _, i in offsets), "loops": loops,
            "registers": int(resources.get("REG", 0)), "spill_stack_bytes": int(resources.get("STACK", 0)),
            "local_bytes": int(resources.get("LOCAL", 0)), "shared_bytes": kernel.metadata.shared,
            "sass": sass}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    p.add_argument("--sass", help="write the (last) case's SASS to this file")
    p.add_argument("--json", action="store_true", help="print the counts as JSON (without the SASS)")
    args = p.parse_args()
    if args.json:
        print(json.dumps({case: {k: v for k, v in report(compile_case(case, args.arch)).items() if k != "sass"}
                          for case in args.case}))
        return
    print(f"{'case':<24} {'instr':>6} {'MMA':>9} {'regs':>5} {'spill':>6} {'shared':>7}  loops (instructions/MMA)")
    for case in args.case:
        r = report(compile_case(case, args.arch))
        mma = f"{r['hgmma']} HGMMA" if r["hgmma"] else f"{r['hmma']} HMMA"
        loops = ", ".join(f"{lp['instructions']}/{lp['hgmma'] or lp['hmma']}" for lp in r["loops"]) or "unrolled"
        print(f"{case:<24} {r['instructions']:>6} {mma:>9} {r['registers']:>5} {r['spill_stack_bytes']:>6} "
              f"{r['shared_bytes']:>7}  {loops}")
        if args.sass:
            Path(args.sass).write_text(r["sass"])


if __name__ == "__main__":
    main()
