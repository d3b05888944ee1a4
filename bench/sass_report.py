"""What the fused convolution kernel compiles to on a Hopper GPU, without one: SASS instruction
counts, loop bodies, matrix-multiply instructions, registers, spills and shared memory.

Triton compiles for any target on a CPU (its wheel carries ptxas, nvdisasm and cuobjdump), so
a kernel change can be judged by the instructions it executes before any GPU time is spent:
the address and border arithmetic of the 3x3 loop (2,376 -> 1,168 instructions per program,
docs/performance.md, eighth session) and the 2-warp row tiles' 236 registers were found this way.

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
from pathlib import Path

from diffusion_core import fused_conv as fc

# name -> (kernel, constexprs, num_warps, num_stages): the reference network's launch kinds, with
# the tiles default_tiles gives them
_FLAGS = dict(HAS_B=False, HAS_SA=False, HAS_SB=False, BIAS_TABLE=True, BIAS_PER_IMAGE=False, SILU=True,
              RESIDUAL=False, BLOCK_K=32, BLOCK_K1=32, FAST_MATH=True, EVEN_N=True, CB=0, SA=0, SB=0)
CASES = {
    "flat-16x16-96": ("flat", dict(_FLAGS, CA=96, BLOCK_M=128, BLOCK_N=128), 4, 3),
    "flat-8x8-128-residual": ("flat", dict(_FLAGS, CA=128, BLOCK_M=64, BLOCK_N=128, BIAS_TABLE=False,
                                           SILU=False, RESIDUAL=True), 8, 3),
    "rows-64": ("rows", dict(_FLAGS, CA=32, BLOCK_N=32, W=64), 2, 3),
    "rows-64-up": ("rows", dict(_FLAGS, CA=64, CB=32, HAS_B=True, BLOCK_N=32, W=64), 2, 3),
    "rows-32-shortcut": ("rows", dict(_FLAGS, CA=64, SA=96, SB=64, HAS_SA=True, HAS_SB=True, BIAS_TABLE=False,
                                      SILU=False, BLOCK_N=64, W=32), 2, 3),
    # the flat tiles that the 64-wide launches took before the row tiles
    "flat-64": ("flat", dict(_FLAGS, CA=32, BLOCK_M=128, BLOCK_N=32), 4, 3),
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
    kind, constexprs, warps, stages = CASES[case]
    fn = fc._fused_conv_rows_kernel if kind == "rows" else fc._fused_conv_kernel
    names = fn.arg_names
    unknown = set(constexprs) - set(names)
    if unknown:
        raise ValueError(f"case {case}: the kernel has no arguments {sorted(unknown)}")
    signature = {}
    for n in names:
        signature[n] = ("constexpr" if n in constexprs else "*fp32" if n == "bias_ptr" else "*bf16"
                        if n.endswith("_ptr") else "i32")
    # pointers and sizes divisible by 16, as Triton specialises them at a real launch
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if n not in constexprs and n not in ("H",)}
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


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
