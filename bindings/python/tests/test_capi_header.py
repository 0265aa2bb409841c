"""_capi mirrors include/mlorc.h: every function (arity, argument and return types), every struct
(field order and types), every constant. Parses the header; needs no library for most checks."""

import ctypes
import re
from pathlib import Path

import pytest

from mlorc import _capi

HEADER = Path(__file__).resolve().parents[3] / "include" / "mlorc.h"

pytestmark = pytest.mark.skipif(not HEADER.is_file(), reason="include/mlorc.h not found")

SCALARS = {
    "size_t": ctypes.c_size_t,
    "uint32_t": ctypes.c_uint32,
    "int32_t": ctypes.c_int32,
    "uint64_t": ctypes.c_uint64,
    "double": ctypes.c_double,
    "float": ctypes.c_float,
    "MlorcStatus": ctypes.c_uint32,
    "MlorcAlgorithm": ctypes.c_uint32,
    "MlorcLayout": ctypes.c_uint32,
    "MlorcDtype": ctypes.c_uint32,
    "MlorcDevice": ctypes.c_uint32,
    # The callback typedef: compared as a whole by test_callback_typedef_matches_header.
    "MlorcAllReduceFn": _capi.MlorcAllReduceFn,
}


def _text(keep_preprocessor=False):
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    if not keep_preprocessor:
        text = re.sub(r"(?m)^\s*#.*$", " ", text)
    return text


def _ctype(decl: str):
    """ctypes type of a C type such as 'const struct MlorcConfig *' or 'float *const *'."""
    decl = decl.replace("const", " ").replace("struct", " ")
    stars = decl.count("*")
    base = decl.replace("*", " ").split()
    assert len(base) == 1, decl
    base = base[0]
    if base == "void":
        if stars == 0:
            return None
        t, stars = ctypes.c_void_p, stars - 1
    elif base == "char" and stars >= 1:
        t, stars = ctypes.c_char_p, stars - 1
    elif base == "MlorcState":
        assert stars >= 1, "MlorcState is opaque"
        t, stars = ctypes.c_void_p, stars - 1  # opaque handle
    elif base in _capi.STRUCTS:
        t = _capi.STRUCTS[base]
    else:
        t = SCALARS[base]
    for _ in range(stars):
        t = ctypes.POINTER(t)
    return t


def _split_decl(decl: str):
    """'const struct MlorcConfig *config' -> ('const struct MlorcConfig *', 'config')."""
    m = re.match(r"^(.*?[\s\*])(\w+)$", decl.strip())
    assert m, decl
    return m.group(1), m.group(2)


def header_functions():
    out = {}
    for m in re.finditer(r"([\w\s\*]+?)\b(mlorc_\w+)\s*\(([^;{]*?)\)\s*;", _text()):
        ret, name, args = m.group(1), m.group(2), m.group(3).strip()
        if args in ("void", ""):
            argtypes = []
        else:
            argtypes = [_ctype(_split_decl(a)[0]) for a in args.split(",")]
        out[name] = (_ctype(ret.strip()), argtypes)
    return out


def header_structs():
    out = {}
    for m in re.finditer(r"typedef struct (\w+) \{(.*?)\}\s*\w+;", _text(), flags=re.S):
        fields = []
        for decl in m.group(2).split(";"):
            if decl.strip():
                ctype, name = _split_decl(decl)
                fields.append((name, _ctype(ctype)))
        out[m.group(1)] = fields
    return out


def _same(a, b):
    if a is b:
        return True
    if a is None or b is None:
        return False
    # ctypes aliases (c_size_t is c_uint64 on LP64) and POINTER types are cached: compare
    # sizes/kinds structurally.
    if hasattr(a, "_type_") and hasattr(b, "_type_") and issubclass(a, ctypes._Pointer) and issubclass(b, ctypes._Pointer):
        return _same(a._type_, b._type_)
    return a == b or (
        not issubclass(a, (ctypes._Pointer, ctypes.Structure))
        and not issubclass(b, (ctypes._Pointer, ctypes.Structure))
        and getattr(a, "_type_", None) == getattr(b, "_type_", None)
        and ctypes.sizeof(a) == ctypes.sizeof(b)
    )


def test_header_parses_to_many_functions():
    funcs = header_functions()
    assert len(funcs) >= 25
    assert "mlorc_step" in funcs and "mlorc_state_create_with_buffers" in funcs


def test_every_header_function_is_declared_and_vice_versa():
    funcs = header_functions()
    assert set(funcs) == set(_capi.PROTOTYPES), (
        f"in header only: {sorted(set(funcs) - set(_capi.PROTOTYPES))}; "
        f"in _capi only: {sorted(set(_capi.PROTOTYPES) - set(funcs))}"
    )
    for name, (ret, args) in funcs.items():
        my_ret, my_args = _capi.PROTOTYPES[name]
        assert len(my_args) == len(args), f"{name}: {len(my_args)} args declared, header has {len(args)}"
        assert _same(my_ret, ret), f"{name}: restype {my_ret} vs header {ret}"
        for i, (mine, theirs) in enumerate(zip(my_args, args)):
            assert _same(mine, theirs), f"{name}: argument {i}: {mine} vs header {theirs}"


def test_structs_match_header():
    structs = header_structs()
    assert set(structs) == set(_capi.STRUCTS)
    for name, fields in structs.items():
        mine = _capi.STRUCTS[name]._fields_
        assert [f for f, _ in mine] == [f for f, _ in fields], name
        for (fname, mt), (_, ht) in zip(mine, fields):
            assert _same(mt, ht), f"{name}.{fname}: {mt} vs header {ht}"


def header_callback_typedefs():
    """name -> (restype, [argtypes]) of every `typedef R (*Name)(args);` in the header."""
    out = {}
    for m in re.finditer(r"typedef\s+([\w\s\*]+?)\s*\(\s*\*\s*(\w+)\s*\)\s*\(([^;]*?)\)\s*;", _text()):
        ret, name, args = m.group(1), m.group(2), m.group(3).strip()
        argtypes = [] if args in ("void", "") else [_ctype(_split_decl(a)[0]) for a in args.split(",")]
        out[name] = (_ctype(ret.strip()), argtypes)
    return out


def test_callback_typedef_matches_header():
    typedefs = header_callback_typedefs()
    assert set(typedefs) == {"MlorcAllReduceFn"}, sorted(typedefs)
    ret, args = typedefs["MlorcAllReduceFn"]
    fn = _capi.MlorcAllReduceFn
    assert _same(fn._restype_, ret), f"MlorcAllReduceFn returns {fn._restype_}, header {ret}"
    assert len(fn._argtypes_) == len(args)
    for i, (mine, theirs) in enumerate(zip(fn._argtypes_, args)):
        assert _same(mine, theirs), f"MlorcAllReduceFn argument {i}: {mine} vs header {theirs}"


def test_constants_match_header():
    text = _text(keep_preprocessor=True)
    defines = dict(re.findall(r"#define (MLORC_\w+) (\d+)", text))
    assert defines["MLORC_ABI_VERSION"] == str(_capi.ABI_VERSION)
    for name, value in defines.items():
        if name.startswith(("MLORC_VERSION_", "MLORC_ABI_")):
            continue
        assert getattr(_capi, name) == int(value), name


def test_loaded_library_uses_declared_prototypes():
    lib = _capi.lib()
    for name, (ret, args) in _capi.PROTOTYPES.items():
        fn = getattr(lib, name)
        assert fn.restype is ret and list(fn.argtypes) == list(args), name
    assert _capi.abi_version() == _capi.ABI_VERSION
    assert _capi.config_init(_capi.MLORC_ADAMW).struct_size == ctypes.sizeof(_capi.MlorcConfig)
    for status, name in _capi.STATUS_NAMES.items():
        assert _capi.status_string(status) == name
