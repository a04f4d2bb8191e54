"""Register-blocked dot-product kernels for faery's scans, written as LLVM IR inside numba (`numba.extending.intrinsic`).

numba's auto-vectoriser does not keep a tile of accumulators in registers, so the two inner kernels every scan uses
are emitted directly:

- `tile(x, rows, r0, qt, out)`: a query tile x a few corpus rows (the batch path, a GEMM micro-kernel). Queries sit
  in the vector lanes and each corpus row is broadcast, so the corpus is read in its ordinary row-major layout (any
  list of rows: tombstones and filters cost nothing extra). For the int8 tier it multiplies int8 rows by int8
  queries with AVX-512 VNNI `vpdpbusd` (64 multiply-adds per instruction, exact int32 sums); for the fp16 and fp32
  tiers it uses fp32 fused multiply-adds.
- `rowdot8(x, rows, r0, qhi, qlo, out)`: eight int8 rows against one 16-bit query held as two int8 halves (the
  single-query path, where memory, not arithmetic, sets the pace, so the query keeps 16 bits): columns in the lanes,
  the eight rows' lanes summed by one transposed reduction, exact sums.

`vpdpbusd` multiplies unsigned by signed bytes, so rows are flipped to unsigned on the fly (x ^ 0x80 = x + 128) and
every sum carries + 128 * sum(q), which the caller subtracts exactly in integers (`int8_offset`). Without VNNI the same
IR computes the same exact sums from widened integer products (slower, still exact): the kernels run on any x86-64
or other LLVM target. Sums are exact while dim * 255 * 128 < 2^31 (dim <= 65,536; `MAX_INT8_DIM`)."""

from __future__ import annotations

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
V16I32 = ir.VectorType(I32, 16)
V64I8 = ir.VectorType(I8, 64)
V16F32 = ir.VectorType(F32, 16)
RT = 6  # corpus rows per tile call: RT x (lanes / 16) accumulators + lanes / 16 query vectors fit 32 registers
LANES = (16, 32, 48, 64)  # query-tile widths the tile kernel is compiled for
MAX_INT8_DIM = 65_536
FLIP = 0x80808080 - (1 << 32)  # xor with this turns 4 signed bytes into unsigned (+128 each)


def _host_has_vnni() -> bool:
    feats = llvm_binding.get_host_cpu_features()
    return bool(feats.get("avx512vnni") and feats.get("avx512bw") and feats.get("avx512f"))


def _vnni_operand_type() -> ir.Type | None:
    """The operand type this LLVM declares vpdpbusd with (<64 x i8> since LLVM 21, <16 x i32> before), or None."""
    for ty in ("<64 x i8>", "<16 x i32>"):
        text = (f"declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, {ty}, {ty})\n"
                f"define <16 x i32> @f(<16 x i32> %a, {ty} %b, {ty} %c) {{\n"
                f"  %r = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %a, {ty} %b, {ty} %c)\n"
                f"  ret <16 x i32> %r\n}}\n")
        try:
            llvm_binding.parse_assembly(text).verify()
        except RuntimeError:
            continue
        return V64I8 if ty == "<64 x i8>" else V16I32
    return None


VNNI_OPERAND = _vnni_operand_type() if _host_has_vnni() else None
HAS_VNNI = VNNI_OPERAND is not None


def _declare(builder: ir.IRBuilder, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = builder.module.globals.get(name)
    return fn if fn is not None else ir.Function(builder.module, fnty, name)


def _dpbusd(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value, vnni: bool) -> ir.Value:
    """acc[i] + sum_t unsigned(a.byte[4i+t]) * signed(b.byte[4i+t]) for 16 int32 lanes (vpdpbusd semantics)."""
    if vnni:
        fn = _declare(builder, "llvm.x86.avx512.vpdpbusd.512", ir.FunctionType(V16I32, [V16I32, VNNI_OPERAND,
                                                                                          VNNI_OPERAND]))
        return builder.call(fn, [acc, builder.bitcast(a, VNNI_OPERAND), builder.bitcast(b, VNNI_OPERAND)])
    wide = ir.VectorType(I32, 64)
    prod = builder.mul(builder.zext(builder.bitcast(a, V64I8), wide), builder.sext(builder.bitcast(b, V64I8), wide))
    out = acc
    for t in range(4):
        out = builder.add(out, builder.shuffle_vector(prod, prod, ir.Constant(V16I32, [4 * i + t for i in range(16)])))
    return out


def _broadcast(builder: ir.IRBuilder, value: ir.Value, vty: ir.VectorType) -> ir.Value:
    vec = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))


def _addr(builder: ir.IRBuilder, base: ir.Value, offset: ir.Value | int, ty: ir.Type) -> ir.Value:
    off = ir.Constant(I64, offset) if isinstance(offset, int) else offset
    return builder.inttoptr(builder.add(base, off), ty.as_pointer())


def _base(context, builder, aryty, value) -> tuple[ir.Value, ir.Value, ir.Value]:  # noqa: ANN001
    """(data address as i64, shape tuple, strides tuple) of an array argument."""
    arr = context.make_array(aryty)(context, builder, value)
    return builder.ptrtoint(arr.data, I64), arr.shape, arr.strides


def _counted_loop(builder: ir.IRBuilder, count: ir.Value, init: list[ir.Value], body):  # noqa: ANN001, ANN202
    """for j in range(count) with loop-carried values (phi nodes); body(j, values) -> new values. Returns the final
    values (count >= 1 is required)."""
    pre = builder.block
    loop = builder.append_basic_block("faery.loop")
    done = builder.append_basic_block("faery.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    j = builder.phi(I64)
    j.add_incoming(ir.Constant(I64, 0), pre)
    phis = []
    for v in init:
        p = builder.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    new = body(j, phis)
    j1 = builder.add(j, ir.Constant(I64, 1))
    tail = builder.block
    j.add_incoming(j1, tail)
    for p, v in zip(phis, new, strict=True):
        p.add_incoming(v, tail)
    builder.cbranch(builder.icmp_signed("<", j1, count), loop, done)
    builder.position_at_end(done)
    return new


def _make_tile(lanes: int, vnni: bool, epilogue: bool = False):  # noqa: ANN202
    nz = lanes // 16

    def typed(x_t, rows_t, r0_t, qt_t, out_t, *extra):  # noqa: ANN001, ANN202
        """out[t, :lanes] = qt-tile . x[rows[r0 + t]] for t < RT (see module docstring for the layouts); with the
        epilogue also hits[t] = the bit mask of the tile's queries whose upper bound on row t's score reaches their
        threshold (`_hits_epilogue`)."""
        arrays = (x_t, rows_t, qt_t, out_t, *extra)
        if not all(isinstance(a, types.Array) for a in arrays):
            return None
        sig = types.void(x_t, rows_t, types.intp, qt_t, out_t, *extra)
        kind = str(x_t.dtype)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            x, rows, r0, qt, out = args[:5]
            xbase, _, xstrides = _base(context, builder, x_t, x)
            rbase, _, _ = _base(context, builder, rows_t, rows)
            qbase, qshape, _ = _base(context, builder, qt_t, qt)
            obase, _, _ = _base(context, builder, out_t, out)
            xstride = builder.extract_value(xstrides, 0)
            steps = builder.extract_value(qshape, 0)
            rowptr, rowidx = [], []
            for t in range(RT):
                r = builder.load(_addr(builder, rbase, builder.mul(builder.add(r0, ir.Constant(I64, t)),
                                                                   ir.Constant(I64, 8)), I64))
                rowidx.append(r)
                rowptr.append(builder.add(xbase, builder.mul(r, xstride)))
            if kind == "int8":
                acc_ty, elem_bytes, qstep = V16I32, 4, lanes * 4
            else:
                acc_ty, elem_bytes, qstep = V16F32, 2 if kind == "uint16" else 4, lanes * 4
            zero = ir.Constant(acc_ty, None)

            def body(j, accs):  # noqa: ANN001, ANN202
                qrow = builder.add(qbase, builder.mul(j, ir.Constant(I64, qstep)))
                qv = [builder.load(_addr(builder, qrow, 64 * z, acc_ty), align=4) for z in range(nz)]
                off = builder.mul(j, ir.Constant(I64, elem_bytes))
                new = []
                for t in range(RT):
                    if kind == "int8":
                        w = builder.xor(builder.load(_addr(builder, rowptr[t], off, I32), align=1),
                                        ir.Constant(I32, FLIP))
                        bc = _broadcast(builder, w, V16I32)
                        new.extend(_dpbusd(builder, accs[t * nz + z], bc, qv[z], vnni) for z in range(nz))
                    else:
                        if kind == "uint16":
                            h = builder.load(_addr(builder, rowptr[t], off, I16), align=2)
                            e = builder.fpext(builder.bitcast(h, ir.HalfType()), F32)
                        else:
                            e = builder.load(_addr(builder, rowptr[t], off, F32), align=4)
                        bc = _broadcast(builder, e, V16F32)
                        fma = _declare(builder, "llvm.fmuladd.v16f32", ir.FunctionType(V16F32, [V16F32] * 3))
                        new.extend(builder.call(fma, [bc, qv[z], accs[t * nz + z]]) for z in range(nz))
                return new

            final = _counted_loop(builder, steps, [zero] * (RT * nz), body)

            def store(t: int) -> None:
                for z in range(nz):
                    builder.store(final[t * nz + z], _addr(builder, obase, (t * lanes + z * 16) * 4, acc_ty), align=4)

            if epilogue:  # a row's sums are stored only when one of its queries passes (rarely, once warm)
                _hits_epilogue(context, builder, signature.args[5:], args[5:], kind, final, rowidx, lanes, store)
            else:
                for t in range(RT):
                    store(t)
            return context.get_dummy_value()

        return sig, codegen

    if epilogue:
        def typer(typingctx, x_t, rows_t, r0_t, qt_t, out_t, ds_t, rn_t, b_t, qv_t, corr_t, th_t, hits_t):  # noqa: ANN001, ANN202
            return typed(x_t, rows_t, r0_t, qt_t, out_t, ds_t, rn_t, b_t, qv_t, corr_t, th_t, hits_t)
    else:
        def typer(typingctx, x_t, rows_t, r0_t, qt_t, out_t):  # noqa: ANN001, ANN202
            return typed(x_t, rows_t, r0_t, qt_t, out_t)
    typer.__name__ = typer.__qualname__ = f"tile{'_hits' if epilogue else ''}{lanes}{'' if vnni else '_generic'}"
    typer.__doc__ = typed.__doc__
    return intrinsic(typer)


def _hits_epilogue(context, builder, tys, vals, kind: str, final: list, rowidx: list, lanes: int,  # noqa: ANN001
                   store) -> None:  # noqa: ANN001
    """The batch filter's first pass, on the accumulators while they are still in registers: per row t of the tile
    and query lane, ub = ds*(u*(acc - corr)) + b + ds*ca + rn*cb + cc + 4 eps (|approx| + |b|) + 1e-30 (kernels'
    `_bounds`, the same formula in vector form: any float evaluation of it bounds the exact score), and hits[t] =
    the bit mask of the lanes where ub >= theta; store(t) writes row t's sums, only when it has a hit. Rows without
    a hit are never looked at again."""
    ds_t, rn_t, b_t, qv_t, corr_t, th_t, hits_t = tys
    ds, rn, b, qv, corr, th, hits = vals
    base = {name: _base(context, builder, ty, v)[0] for name, ty, v in
            (("ds", ds_t, ds), ("rn", rn_t, rn), ("b", b_t, b), ("qv", qv_t, qv), ("corr", corr_t, corr),
             ("th", th_t, th), ("hits", hits_t, hits))}
    nz = lanes // 16
    fabs = _declare(builder, "llvm.fabs.v16f32", ir.FunctionType(V16F32, [V16F32]))

    def qvec(row: int, z: int) -> ir.Value:  # qv is (4, lanes) float32: u, ca, cb, cc
        return builder.load(_addr(builder, base["qv"], (row * lanes + 16 * z) * 4, V16F32), align=4)

    def scalar(name: str, r: ir.Value) -> ir.Value:
        return builder.load(_addr(builder, base[name], builder.mul(r, ir.Constant(I64, 4)), F32), align=4)

    e4 = _broadcast(builder, ir.Constant(F32, 4 * 2.0 ** -23), V16F32)
    tiny = _broadcast(builder, ir.Constant(F32, 1e-30), V16F32)
    for t in range(RT):
        r = rowidx[t]
        dsr = scalar("ds", r) if kind == "int8" else ir.Constant(F32, 1.0)
        br = scalar("b", r)
        dsv, rnv, bv = (_broadcast(builder, v, V16F32) for v in (dsr, scalar("rn", r), br))
        abv = builder.call(fabs, [bv])
        mask = ir.Constant(I64, 0)
        for z in range(nz):
            acc = final[t * nz + z]
            if kind == "int8":
                c = builder.load(_addr(builder, base["corr"], 64 * z, V16I32), align=4)
                v = builder.sitofp(builder.sub(acc, c), V16F32)
            else:
                v = acc
            approx = builder.fadd(builder.fmul(dsv, builder.fmul(qvec(0, z), v)), bv)
            bound = builder.fadd(builder.fadd(builder.fmul(dsv, qvec(1, z)), builder.fmul(rnv, qvec(2, z))), qvec(3, z))
            bound = builder.fadd(builder.fadd(bound, builder.fmul(e4, builder.fadd(builder.call(fabs, [approx]), abv))),
                                 tiny)
            ub = builder.fadd(approx, bound)
            thv = builder.load(_addr(builder, base["th"], 64 * z, V16F32), align=4)
            bits = builder.zext(builder.bitcast(builder.fcmp_ordered(">=", ub, thv), I16), I64)
            mask = builder.or_(mask, builder.shl(bits, ir.Constant(I64, 16 * z)))
        builder.store(mask, _addr(builder, base["hits"], 8 * t, I64), align=8)
        with builder.if_then(builder.icmp_unsigned("!=", mask, ir.Constant(I64, 0)), likely=False):
            store(t)


def _sum8(builder: ir.IRBuilder, vs: list[ir.Value]) -> ir.Value:
    """<8 x i32> whose lane i is the sum of the 16 lanes of vs[i] (eight <16 x i32>): a transposed reduction,
    three shuffle-and-add rounds that halve the vectors and one that halves the lanes (~3 operations per row, against
    ~9 for a reduction of its own)."""
    def pair(a: ir.Value, b: ir.Value, m1: list[int], m2: list[int]) -> ir.Value:
        return builder.add(builder.shuffle_vector(a, b, ir.Constant(V16I32, m1)),
                           builder.shuffle_vector(a, b, ir.Constant(V16I32, m2)))

    # rows (a, b) -> lanes 0-7 a's partial sums, 8-15 b's
    s = [pair(vs[2 * i], vs[2 * i + 1], [*range(8), *range(16, 24)], [*range(8, 16), *range(24, 32)])
         for i in range(4)]
    # -> four lanes per row, rows in the order 0 2 1 3 (and 4 6 5 7)
    t = [pair(s[2 * i], s[2 * i + 1], [*range(4), *range(16, 20), *range(8, 12), *range(24, 28)],
              [*range(4, 8), *range(20, 24), *range(12, 16), *range(28, 32)]) for i in range(2)]
    # -> two lanes per row, rows 0 4 2 6 1 5 3 7
    z = pair(t[0], t[1], [j + o for j in range(0, 16, 4) for o in (0, 1, 16, 17)],
             [j + o for j in range(0, 16, 4) for o in (2, 3, 18, 19)])
    pos = [0, 4, 2, 6, 1, 5, 3, 7]  # lane pair of row i
    v8 = ir.VectorType(I32, 8)
    return builder.add(builder.shuffle_vector(z, z, ir.Constant(v8, [2 * pos[i] for i in range(8)])),
                       builder.shuffle_vector(z, z, ir.Constant(v8, [2 * pos[i] + 1 for i in range(8)])))


def _make_rowdot8(vnni: bool, bounds: bool = False):  # noqa: ANN202
    def typed(x_t, rows_t, qhi_t, qlo_t, outs, scalars):  # noqa: ANN001, ANN202
        """out[r0 + t] = sum_j (x[rows[r0 + t], j] + 128) * (256 qhi[j] + qlo[j]) for t < 8, over the first
        len(qhi) columns (a multiple of 64): eight int8 rows against a 16-bit query split into two int8 halves,
        exact (int32 partial sums, int64 out). The rows' sums are reduced together (`_sum8`), not one by one.
        With bounds (`rowdot8_bounds`) the sums go on, still in registers, to the single filter's first pass
        (`_bounds_epilogue`), which returns the bit mask of the rows that pass."""
        arrays = (x_t, rows_t, qhi_t, qlo_t, *outs)
        if not all(isinstance(a, types.Array) and a.layout == "C" for a in arrays):
            return None
        sig = (types.int64 if bounds else types.void)(x_t, rows_t, types.intp, qhi_t, qlo_t, *outs[:3], *scalars,
                                                     *outs[3:])

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            x, rows, r0, qhi, qlo = args[:5]
            xbase, _, xstrides = _base(context, builder, x_t, x)
            rbase, _, _ = _base(context, builder, rows_t, rows)
            hbase, hshape, _ = _base(context, builder, qhi_t, qhi)
            lbase, _, _ = _base(context, builder, qlo_t, qlo)
            xstride = builder.extract_value(xstrides, 0)
            rowptr = []
            for t in range(8):
                r = builder.load(_addr(builder, rbase, builder.mul(builder.add(r0, ir.Constant(I64, t)),
                                                                   ir.Constant(I64, 8)), I64))
                rowptr.append(builder.add(xbase, builder.mul(r, xstride)))
            chunks = builder.udiv(builder.extract_value(hshape, 0), ir.Constant(I64, 64))
            flip = ir.Constant(V16I32, [FLIP] * 16)

            def body(c, accs):  # noqa: ANN001, ANN202
                off = builder.mul(c, ir.Constant(I64, 64))
                hv = builder.load(_addr(builder, hbase, off, V16I32), align=1)
                lv = builder.load(_addr(builder, lbase, off, V16I32), align=1)
                new = []
                for t in range(8):
                    xv = builder.xor(builder.load(_addr(builder, rowptr[t], off, V16I32), align=1), flip)
                    new += [_dpbusd(builder, accs[2 * t], xv, hv, vnni), _dpbusd(builder, accs[2 * t + 1], xv, lv, vnni)]
                return new

            zero = ir.Constant(V16I32, None)
            accs = _counted_loop(builder, chunks, [zero] * 16, body)
            v8i64 = ir.VectorType(I64, 8)
            hi = builder.sext(_sum8(builder, accs[0::2]), v8i64)  # exact: |a row's sum| < 2^31 (MAX_INT8_DIM)
            lo = builder.sext(_sum8(builder, accs[1::2]), v8i64)
            res = builder.add(builder.shl(hi, ir.Constant(v8i64, [8] * 8)), lo)
            if bounds:
                return _bounds_epilogue(context, builder, signature.args[5:], args[5:], r0, res)
            else:
                obase = _base(context, builder, outs[0], args[5])[0]
                builder.store(res, _addr(builder, obase, builder.mul(r0, ir.Constant(I64, 8)), v8i64), align=8)
            return context.get_dummy_value()

        return sig, codegen

    if bounds:
        def typer(typingctx, x_t, rows_t, r0_t, qhi_t, qlo_t, ds_t, rn_t, b_t, off_t, corr_t, u_t, ca_t, cb_t,  # noqa: ANN001, ANN202
                  cc_t, th_t, m_t, npass_t, vals_t, prow_t):
            return typed(x_t, rows_t, qhi_t, qlo_t, (ds_t, rn_t, b_t, vals_t, prow_t),
                         (types.intp, types.int64, *[types.float32] * 5, types.intp, types.intp))
    else:
        def typer(typingctx, x_t, rows_t, r0_t, qhi_t, qlo_t, out_t):  # noqa: ANN001, ANN202
            return typed(x_t, rows_t, qhi_t, qlo_t, (out_t,), ())
    typer.__name__ = typer.__qualname__ = f"rowdot8{'_bounds' if bounds else ''}{'' if vnni else '_generic'}"
    typer.__doc__ = typed.__doc__
    return intrinsic(typer)


def _bounds_epilogue(context, builder, tys, vals, r0: ir.Value, res: ir.Value) -> ir.Value:  # noqa: ANN001
    """`rowdot8_bounds`' epilogue, on the eight rows' int64 sums res while in registers: with the row terms
    ds[off + r0 + t], rn[..], bias[..] (eight consecutive entries each), vals[r0 + t] = float32(sum - corr), and
    the bit mask (int64) of the rows whose upper bound, kernels' `_bounds` in the same float32 operations in the
    same order (bit for bit), reaches th."""
    ds_t, rn_t, b_t, _, _, _, _, _, _, _, _, _, vals_t, prow_t = tys
    ds, rn, b, off, corr, u, ca, cb, cc, th, m, npass, vals, prow = vals
    v8f32 = ir.VectorType(F32, 8)
    v8i64 = ir.VectorType(I64, 8)
    at = builder.mul(builder.add(off, r0), ir.Constant(I64, 4))

    def row_terms(ty, arr) -> ir.Value:  # noqa: ANN001
        return builder.load(_addr(builder, _base(context, builder, ty, arr)[0], at, v8f32), align=4)

    def bc(value: ir.Value) -> ir.Value:
        return _broadcast(builder, value, v8f32)

    dsv, rnv, bv = row_terms(ds_t, ds), row_terms(rn_t, rn), row_terms(b_t, b)
    v = builder.sitofp(builder.sub(res, _broadcast(builder, corr, v8i64)), v8f32)
    fabs = _declare(builder, "llvm.fabs.v8f32", ir.FunctionType(v8f32, [v8f32]))
    approx = builder.fadd(builder.fmul(dsv, builder.fmul(bc(u), v)), bv)
    bound = builder.fadd(builder.fadd(builder.fmul(dsv, bc(ca)), builder.fmul(rnv, bc(cb))), bc(cc))
    bound = builder.fadd(builder.fadd(bound, builder.fmul(bc(ir.Constant(F32, 4 * 2.0 ** -23)), builder.fadd(
        builder.call(fabs, [approx]), builder.call(fabs, [bv])))), bc(ir.Constant(F32, 1e-30)))
    out = builder.mul(r0, ir.Constant(I64, 4))
    builder.store(v, _addr(builder, _base(context, builder, vals_t, vals)[0], out, v8f32), align=4)
    passed = builder.fcmp_ordered(">=", builder.fadd(approx, bound), bc(th))
    lanes = ir.Constant(v8i64, list(range(8)))
    passed = builder.and_(passed, builder.icmp_signed("<", lanes, _broadcast(builder, builder.sub(m, r0), v8i64)))
    pos = builder.add(lanes, _broadcast(builder, r0, v8i64))
    store = _declare(builder, "llvm.masked.compressstore.v8i64",
                     ir.FunctionType(ir.VoidType(), [v8i64, I64.as_pointer(), ir.VectorType(ir.IntType(1), 8)]))
    builder.call(store, [pos, _addr(builder, _base(context, builder, prow_t, prow)[0],
                                    builder.mul(npass, ir.Constant(I64, 8)), I64), passed])
    popcnt = _declare(builder, "llvm.ctpop.i8", ir.FunctionType(ir.IntType(8), [ir.IntType(8)]))
    return builder.add(npass, builder.zext(builder.call(popcnt, [builder.bitcast(passed, ir.IntType(8))]), I64))


TILES = {lanes: _make_tile(lanes, HAS_VNNI) for lanes in LANES}
tile16, tile32, tile48, tile64 = (TILES[w] for w in LANES)
# the same micro-kernels followed by the batch filter's first pass (`_hits_epilogue`)
HIT_TILES = {lanes: _make_tile(lanes, HAS_VNNI, epilogue=True) for lanes in LANES}
tile_hits16, tile_hits32, tile_hits48, tile_hits64 = (HIT_TILES[w] for w in LANES)
rowdot8 = _make_rowdot8(HAS_VNNI)
rowdot8_bounds = _make_rowdot8(HAS_VNNI, bounds=True)  # with the single filter's upper bounds (`_bounds_epilogue`)
# the same kernels without VNNI instructions: what a CPU without AVX-512 VNNI runs (tests compare the two)
generic_tile16, generic_tile64 = _make_tile(16, False), _make_tile(64, False)
generic_rowdot8 = _make_rowdot8(False)
generic_rowdot8_bounds = _make_rowdot8(False, bounds=True)


@intrinsic
def prefetch_row(typingctx, x_t, row_t):  # noqa: ANN001, ANN202
    """Ask the CPU to start loading row `row` of a 2-D array (every cache line of it) without waiting: the exact
    re-rank reads rows at random, and issuing their loads a few rows ahead overlaps the memory latencies."""
    if not isinstance(x_t, types.Array):
        return None
    sig = types.void(x_t, types.intp)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        x, row = args
        xbase, xshape, xstrides = _base(context, builder, x_t, x)
        nbytes = builder.mul(builder.extract_value(xshape, 1), ir.Constant(I64, x_t.dtype.bitwidth // 8))
        rp = builder.add(xbase, builder.mul(row, builder.extract_value(xstrides, 0)))
        lines = builder.udiv(builder.add(nbytes, ir.Constant(I64, 63)), ir.Constant(I64, 64))
        name = "llvm.prefetch.p0" if llvm_binding.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"
        fn = _declare(builder, name, ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]))

        def body(j, _):  # noqa: ANN001, ANN202
            ptr = builder.inttoptr(builder.add(rp, builder.mul(j, ir.Constant(I64, 64))), I8.as_pointer())
            builder.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
            return []

        _counted_loop(builder, lines, [], body)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def ctz(typingctx, x_t):  # noqa: ANN001, ANN202
    """Index of the lowest set bit of a non-zero int64 (count of trailing zeros): walking a hit mask's set bits."""
    if not isinstance(x_t, types.Integer):
        return None
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        (x,) = args
        x = context.cast(builder, x, x_t, types.int64)
        fn = _declare(builder, "llvm.cttz.i64", ir.FunctionType(I64, [I64, ir.IntType(1)]))
        return builder.call(fn, [x, ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


def _make_lanes8(l2: bool):  # noqa: ANN202
    @intrinsic
    def lanes8(typingctx, q_t, qi_t, x_t, row_t):  # noqa: ANN001, ANN202
        """Eight float64 partial sums of one float32 row of x (2-D) against row qi of q (2-D float64) over the first 8 * (dim // 8) columns: lane l sums the terms of columns j = l mod 8
        in column order (rows contiguous in memory), term = q[j] * x[j] (or (q[j] - x[j])^2 for l2), every product and sum rounded as IEEE
        float64 (no fused multiply-add, no reassociation): exactly the scalar loop with eight interleaved sums, eight
        lanes at a time. dim >= 8 is required."""
        if not (isinstance(q_t, types.Array) and isinstance(x_t, types.Array) and q_t.dtype == types.float64
                and x_t.dtype == types.float32 and x_t.ndim == 2 and q_t.ndim == 2):
            return None
        sig = types.UniTuple(types.float64, 8)(q_t, types.intp, x_t, types.intp)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            q, qi, x, row = args
            qbase, _, qstrides = _base(context, builder, q_t, q)
            xbase, xshape, xstrides = _base(context, builder, x_t, x)
            qbase = builder.add(qbase, builder.mul(qi, builder.extract_value(qstrides, 0)))
            rp = builder.add(xbase, builder.mul(row, builder.extract_value(xstrides, 0)))
            chunks = builder.udiv(builder.extract_value(xshape, 1), ir.Constant(I64, 8))
            v8f32, v8f64 = ir.VectorType(F32, 8), ir.VectorType(F64, 8)

            def body(c, accs):  # noqa: ANN001, ANN202
                xv = builder.fpext(builder.load(_addr(builder, rp, builder.mul(c, ir.Constant(I64, 32)), v8f32),
                                                align=4), v8f64)
                qv = builder.load(_addr(builder, qbase, builder.mul(c, ir.Constant(I64, 64)), v8f64), align=8)
                if l2:
                    d = builder.fsub(qv, xv)
                    return [builder.fadd(accs[0], builder.fmul(d, d))]
                return [builder.fadd(accs[0], builder.fmul(qv, xv))]

            (acc,) = _counted_loop(builder, chunks, [ir.Constant(v8f64, None)], body)
            out = context.get_constant_undef(signature.return_type)
            for lane in range(8):
                out = builder.insert_value(out, builder.extract_element(acc, ir.Constant(I32, lane)), lane)
            return out

        return sig, codegen

    return lanes8


def _make_lanes8_rows(l2: bool):  # noqa: ANN202
    @intrinsic
    def lanes8_rows(typingctx, q_t, qi_t, x_t, rows_t, part_t):  # noqa: ANN001, ANN202
        """part[t, :] = `dot_lanes8` (or `sqdiff_lanes8` for l2) of row rows[t] of x against row qi of q, for
        t < ROWS_IN_FLIGHT (rows and part hold that many): the rows share one loop, so their eight-lane dependency
        chains overlap instead of running one after the other; each row's sums keep exactly the one-row order
        (bit-identical). dim >= 8 is required."""
        if not (isinstance(q_t, types.Array) and isinstance(x_t, types.Array) and isinstance(rows_t, types.Array)
                and isinstance(part_t, types.Array) and q_t.dtype == types.float64 and x_t.dtype == types.float32
                and x_t.ndim == 2 and q_t.ndim == 2 and part_t.dtype == types.float64 and part_t.ndim == 2):
            return None
        sig = types.void(q_t, types.intp, x_t, rows_t, part_t)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            q, qi, x, rows, part = args
            qbase, _, qstrides = _base(context, builder, q_t, q)
            xbase, xshape, xstrides = _base(context, builder, x_t, x)
            rbase, _, _ = _base(context, builder, rows_t, rows)
            pbase, _, pstrides = _base(context, builder, part_t, part)
            qbase = builder.add(qbase, builder.mul(qi, builder.extract_value(qstrides, 0)))
            xstride = builder.extract_value(xstrides, 0)
            rp = [builder.add(xbase, builder.mul(builder.load(_addr(builder, rbase, 8 * t, I64)), xstride))
                  for t in range(ROWS_IN_FLIGHT)]
            chunks = builder.udiv(builder.extract_value(xshape, 1), ir.Constant(I64, 8))
            v8f32, v8f64 = ir.VectorType(F32, 8), ir.VectorType(F64, 8)

            def body(c, accs):  # noqa: ANN001, ANN202
                qv = builder.load(_addr(builder, qbase, builder.mul(c, ir.Constant(I64, 64)), v8f64), align=8)
                off = builder.mul(c, ir.Constant(I64, 32))
                new = []
                for t in range(ROWS_IN_FLIGHT):
                    xv = builder.fpext(builder.load(_addr(builder, rp[t], off, v8f32), align=4), v8f64)
                    if l2:
                        d = builder.fsub(qv, xv)
                        new.append(builder.fadd(accs[t], builder.fmul(d, d)))
                    else:
                        new.append(builder.fadd(accs[t], builder.fmul(qv, xv)))
                return new

            accs = _counted_loop(builder, chunks, [ir.Constant(v8f64, None)] * ROWS_IN_FLIGHT, body)
            pstride = builder.extract_value(pstrides, 0)
            for t in range(ROWS_IN_FLIGHT):
                builder.store(accs[t], _addr(builder, pbase, builder.mul(ir.Constant(I64, t), pstride), v8f64),
                              align=8)
            return context.get_dummy_value()

        return sig, codegen

    return lanes8_rows


F64 = ir.DoubleType()
ROWS_IN_FLIGHT = 4  # rows `dot_lanes8_rows` scores in one loop
dot_lanes8, sqdiff_lanes8 = _make_lanes8(False), _make_lanes8(True)
dot_lanes8_rows, sqdiff_lanes8_rows = _make_lanes8_rows(False), _make_lanes8_rows(True)
