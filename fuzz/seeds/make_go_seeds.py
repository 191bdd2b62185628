#!/usr/bin/env python3
"""Writes the synthetic seeds of the go_binary fuzz target (fuzz/seeds/go_binary/): small
ELF files shaped like a Go 1.20+ amd64 binary (build info, .gopclntab, optional .symtab, code
with Go's stack-check prologue and morestack jump back), so the fuzzer starts from inputs that
reach every stage of the analysis. Real fixtures are added by `cargo xtask fuzz` when built.
Usage: fuzz/seeds/make_go_seeds.py"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = 0x400000
FUNCS = ["net/http.serverHandler.ServeHTTP", "net/http.(*response).WriteHeader",
         "net/http.(*conn).serve", "runtime.gopanic"]
FSIZE = 0x20


def code():
    # cmp rsp,[r14+0x10]; jbe +3; ret; int3 x2; call +0; jmp entry; int3 padding
    f = bytes.fromhex("493b6610") + bytes.fromhex("7603") + b"\xc3\xcc\xcc" \
        + bytes.fromhex("e800000000") + bytes.fromhex("ebf0")
    return f.ljust(FSIZE, b"\xcc")


def buildinfo():
    b = b"\xff Go buildinf:" + bytes([8, 2])
    b = b.ljust(32, b"\0")
    v = b"go1.24.3"
    mod = b"0123456789abcdef" + b"path\texample.invalid/x\nmod\texample.invalid/x\t(devel)\t\n" + b"0123456789abcdef"
    return b + bytes([len(v)]) + v + bytes([len(mod)]) + mod


def pclntab(text):
    names = b""
    name_offs = []
    for n in FUNCS:
        name_offs.append(len(names))
        names += n.encode() + b"\0"
    nfunc = len(FUNCS)
    names_off, functab_off = 0x80, 0x200
    hdr = struct.pack("<IBBBB", 0xfffffff1, 0, 0, 1, 8)
    hdr += struct.pack("<QQQQQQQQ", nfunc, 0, text, names_off, 0, 0, 0, functab_off)
    t = bytearray(hdr.ljust(0x300, b"\0"))
    t[names_off:names_off + len(names)] = names
    rec0 = (nfunc + 1) * 8
    for i in range(nfunc):
        struct.pack_into("<II", t, functab_off + 8 * i, i * FSIZE, rec0 + 8 * i)
        struct.pack_into("<Ii", t, functab_off + rec0 + 8 * i, i * FSIZE, name_offs[i])
    struct.pack_into("<II", t, functab_off + 8 * nfunc, nfunc * FSIZE, 0)
    return bytes(t)


def uleb(v):
    out = b""
    while True:
        byte = v & 0x7F
        v >>= 7
        out += bytes([byte | (0x80 if v else 0)])
        if not v:
            return out


def dwarf():
    """(.debug_info, .debug_abbrev, .debug_str): DWARF 4 with the two structs the collector
    reads (net/http.Request, net/url.URL) and every form its reader takes: inline and .debug_str
    names, constant and DW_OP_plus_uconst member locations, unit and section type references."""
    DW_FORM_string, DW_FORM_strp, DW_FORM_udata, DW_FORM_ref4, DW_FORM_ref_addr, \
        DW_FORM_exprloc = 0x08, 0x0E, 0x0F, 0x13, 0x10, 0x18
    NAME, BYTE_SIZE, LOCATION, TYPE = 0x03, 0x0B, 0x38, 0x49
    abbrevs = [  # code, tag, children, attributes
        (1, 0x11, 1, [(NAME, DW_FORM_string)]),                    # compile_unit
        (2, 0x24, 0, [(NAME, DW_FORM_string)]),                    # base_type
        (3, 0x13, 1, [(NAME, DW_FORM_string), (BYTE_SIZE, DW_FORM_udata)]),  # structure_type
        (4, 0x13, 1, [(NAME, DW_FORM_strp), (BYTE_SIZE, DW_FORM_udata)]),
        (5, 0x0D, 0, [(NAME, DW_FORM_string), (LOCATION, DW_FORM_udata), (TYPE, DW_FORM_ref4)]),
        (6, 0x0D, 0, [(NAME, DW_FORM_string), (LOCATION, DW_FORM_exprloc), (TYPE, DW_FORM_ref4)]),
        (7, 0x0D, 0, [(NAME, DW_FORM_string), (LOCATION, DW_FORM_udata),
                      (TYPE, DW_FORM_ref_addr)]),
    ]
    abbrev = b""
    for code, tag, children, attrs in abbrevs:
        abbrev += uleb(code) + uleb(tag) + bytes([children])
        for a, f in attrs:
            abbrev += uleb(a) + uleb(f)
        abbrev += b"\0\0"
    abbrev += b"\0"
    strs = b"net/url.URL\0"
    header_len = 11  # unit_length, version, abbrev offset, address size
    dies = bytearray()
    types = {}

    def cstr(t):
        return t.encode() + b"\0"

    dies += uleb(1) + cstr("net/http")
    for t in ["string", "int", "*net/url.URL", "*crypto/tls.ConnectionState"]:
        types[t] = header_len + len(dies)
        dies += uleb(2) + cstr(t)
    dies += uleb(3) + cstr("net/http.Request") + uleb(256)
    dies += uleb(5) + cstr("Method") + uleb(0) + struct.pack("<I", types["string"])
    loc = bytes([0x23]) + uleb(16)  # DW_OP_plus_uconst 16
    dies += uleb(6) + cstr("URL") + uleb(len(loc)) + loc + struct.pack("<I", types["*net/url.URL"])
    dies += uleb(5) + cstr("ProtoMajor") + uleb(40) + struct.pack("<I", types["int"])
    dies += uleb(5) + cstr("TLS") + uleb(200) + struct.pack("<I", types["*crypto/tls.ConnectionState"])
    # ref_addr: an offset in .debug_info, from the start of the section (one unit: the same).
    dies += uleb(7) + cstr("Pattern") + uleb(208) + struct.pack("<I", types["string"])
    dies += b"\0"
    dies += uleb(4) + struct.pack("<I", 0) + uleb(144)
    dies += uleb(5) + cstr("Path") + uleb(56) + struct.pack("<I", types["string"])
    dies += b"\0"
    dies += b"\0"
    body = struct.pack("<HIB", 4, 0, 8) + bytes(dies)
    info = struct.pack("<I", len(body)) + body
    return info, abbrev, strs


def compress(data, how):
    """A DWARF section compressed as ELF (SHF_COMPRESSED, Elf64_Chdr) or GNU (.zdebug_*) does."""
    if how == "shf":
        return struct.pack("<IIQQ", 1, 0, len(data), 1) + zlib.compress(data)
    if how == "zdebug":
        return b"ZLIB" + struct.pack(">Q", len(data)) + zlib.compress(data)
    return data


def elf(with_symtab, debug=None):
    size = 0x8000 if debug is None else 0x9000
    b = bytearray(size)
    text_off, pcln_off, bi_off, sym_off, str_off, shstr_off, sh_off = \
        0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000 if debug is None else 0x8000
    text = b"".join(code() for _ in FUNCS)
    b[text_off:text_off + len(text)] = text
    p = pclntab(BASE + text_off)
    b[pcln_off:pcln_off + len(p)] = p
    bi = buildinfo()
    b[bi_off:bi_off + len(bi)] = bi
    strs = b"\0"
    syms = b"\0" * 24
    for i, n in enumerate(FUNCS + ["runtime.text"]):
        off = len(strs)
        strs += n.encode() + b"\0"
        is_func = i < len(FUNCS)
        syms += struct.pack("<IBBHQQ", off, 0x12 if is_func else 0x10, 0, 1,
                            BASE + text_off + i * FSIZE if is_func else BASE + text_off,
                            0x10 if is_func else 0)
    b[sym_off:sym_off + len(syms)] = syms
    b[str_off:str_off + len(strs)] = strs
    sections = [(".text", 1, 6, text_off, len(text), 0, 0),
                (".gopclntab", 1, 2, pcln_off, len(p), 0, 0),
                (".go.buildinfo", 1, 3, bi_off, len(bi), 0, 0)]
    if with_symtab:
        n = len(sections) + 1  # index of .symtab; .strtab follows it
        sections += [(".symtab", 2, 0, sym_off, len(syms), n + 1, 24),
                     (".strtab", 3, 0, str_off, len(strs), 0, 0)]
    if debug is not None:
        off = 0x7000
        for name, data in zip(["info", "abbrev", "str"], dwarf()):
            data = compress(data, debug)
            prefix = ".zdebug_" if debug == "zdebug" else ".debug_"
            flags = 0x800 if debug == "shf" else 0  # SHF_COMPRESSED
            b[off:off + len(data)] = data
            sections.append((prefix + name, 1, flags, off, len(data), 0, 0))
            off += (len(data) + 15) // 16 * 16
    shstr = b"\0"
    named = []
    for s in sections + [(".shstrtab", 3, 0, shstr_off, 0, 0, 0)]:
        named.append((len(shstr),) + s)
        shstr += s[0].encode() + b"\0"
    b[shstr_off:shstr_off + len(shstr)] = shstr
    shdrs = b"\0" * 64
    for (name_off, name, typ, flags, off, sz, link, ent) in named:
        if name == ".shstrtab":
            sz = len(shstr)
        addr = BASE + off if flags else 0
        shdrs += struct.pack("<IIQQQQIIQQ", name_off, typ, flags, addr, off, sz, link, 0, 1, ent)
    b[sh_off:sh_off + len(shdrs)] = shdrs
    shnum = len(named) + 1
    ident = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")
    hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, BASE + text_off, 64, sh_off, 0,
                              64, 56, 1, 64, shnum, shnum - 1)
    b[0:64] = hdr
    b[64:64 + 56] = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    return bytes(b)


def main():
    out = os.path.join(HERE, "go_binary")
    os.makedirs(out, exist_ok=True)
    for name, data in [("synthetic-go", elf(True)), ("synthetic-go-stripped", elf(False)),
                       ("not-elf", b"#!/bin/sh\necho hi\n"), ("elf-header-only", elf(False)[:64]),
                       ("synthetic-go-dwarf", elf(False, "plain")),
                       ("synthetic-go-dwarf-zlib", elf(False, "shf")),
                       ("synthetic-go-zdebug", elf(False, "zdebug"))]:
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
