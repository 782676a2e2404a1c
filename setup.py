"""Maps the top-level folders onto one namespaced distribution.

``shared/`` installs as ``radflow.shared``, ``adapter/`` as ``radflow.adapter`` and so on, so
nothing called ``shared`` or ``adapter`` ever lands at the top of site-packages. The mapping is
computed here because setuptools' declarative ``packages.find`` cannot follow a ``package-dir``
that points outside the parent package's folder.
"""

from setuptools import find_packages, setup

ROOTS = {
    "radflow": "radflow",
    "radflow.shared": "shared",
    "radflow.adapter": "adapter",
    "radflow.functions": "functions",
    "radflow.engine": "engine",
    "radflow.demo": "demo",
}

packages = []
for package, folder in ROOTS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS)
