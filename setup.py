"""The C fast paths of the flow text codec (optional: without a compiler the pure-Python codec, which they
must match byte for byte, does all the work)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(f"dpif.netlink.{name}", [f"dpif/netlink/{name}.c"], depends=["dpif/netlink/_buf.h"],
                  optional=True,
                  extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])
        for name in ("_dump", "_flowload")
    ]
)
