"""Build the optional C fast paths: every ``csrc/<name>.c`` becomes ``lmforge.tokenizer.<name>``.

They are optional: if no C compiler is available the install still succeeds and lmforge uses its
pure-Python reference implementations (same results, slower). See ``lmforge/tokenizer/native.py``.
"""

from pathlib import Path

from setuptools import Extension, setup

extensions = [
    Extension(
        f"lmforge.tokenizer.{src.stem}",
        sources=[str(src)],
        depends=[str(h) for h in Path("csrc").glob("*.h")],
        extra_compile_args=["-O3", "-std=c11"],
        optional=True,
    )
    for src in sorted(Path("csrc").glob("*.c"))
]

setup(ext_modules=extensions)
